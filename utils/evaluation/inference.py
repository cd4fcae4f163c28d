"""Prediction of the three Aff-Wild2 models over whole splits, shared by the train scripts (and any
script that runs a trained model on new data).

Each function runs one model in eval mode without gradients, splits the rows over the DDP ranks
(utils.training.engine.shard) and gathers them back in row order, so every rank returns the whole
result. Frames are rows of the frame table (DESIGN.md section 3: txtid, frame, label, has_crop).
Each shows its progress under `progress` (a description, e.g. "predict val"; rank 0 only): a bar
on a terminal, done/total, rate and ETA lines in a log (utils.training.engine.Rows).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from utils.classes import EXPR_CLASSES
from utils.console import warn
from utils.models.backbones import features_and_logits
from utils.models.fusion import HEADS, ensemble_logits
from utils.readers.audio import WindowDataset
from utils.training.data import CropDataset, keep_batch, nearest_index, seed_worker
from utils.training.engine import Rows, autocast, gather, shard


@torch.no_grad()
def infer_crops(model, frames: pd.DataFrame, pipe, d, precision: str, *, crop_size: int, batch_size: int,
                workers: int = 0, tta: bool = False, progress: str = "image crops") -> tuple[np.ndarray, np.ndarray]:
    """Logits (N x classes, float32) and pooled features (N x D, float16) of every row of `frames`,
    all of which must have a crop. `tta` averages with the horizontally flipped crop."""
    part = frames.iloc[shard(len(frames), d)]
    loader = DataLoader(CropDataset(part, crop_size=crop_size), batch_size=batch_size, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker)
    model.eval()
    out = Rows(len(part), progress if d.main else None, "crops", features=np.float16)
    for images, _, _ in loader:
        x = pipe(images)
        with autocast(d.device, precision):
            f, l = features_and_logits(model, x)
            if tta:
                f2, l2 = features_and_logits(model, torch.flip(x, dims=[3]))
                f, l = (f + f2) / 2, (l + l2) / 2
        out.add(logits=l, features=f)
    return gather(out.get("logits", model.num_classes), d), gather(out.get("features", model.num_features), d)


def predict_crops(model, frames: pd.DataFrame, pipe, d, precision: str, **infer_args) -> dict:
    """The image branch's outputs for every frame of `frames` (the preds schema, DESIGN.md section 4):
    a frame without a crop takes its txtid's nearest crop's output (has_crop stays False); a txtid
    without any crop gets zero logits and features, with a warning. `infer_args` go to infer_crops."""
    has_crop = frames["has_crop"].to_numpy()
    logits_c, feats_c = infer_crops(model, frames[has_crop], pipe, d, precision, **infer_args)
    crop_pos = np.cumsum(has_crop) - 1
    source = np.full(len(frames), -1)
    for idx in frames.groupby("txtid", sort=False).indices.values():
        near = nearest_index(has_crop[idx])
        source[idx] = np.where(near >= 0, idx[np.maximum(near, 0)], -1)
    logits = np.zeros((len(frames), logits_c.shape[1]), np.float32)
    feats = np.zeros((len(frames), feats_c.shape[1]), np.float16)
    ok = source >= 0
    logits[ok], feats[ok] = logits_c[crop_pos[source[ok]]], feats_c[crop_pos[source[ok]]]
    if (~ok).any() and d.main:
        warn(f"{frames.loc[~ok, 'txtid'].nunique()} txtids have no crop at all; their "
             f"{(~ok).sum()} frames get zero logits")
    return dict(txtid=frames["txtid"].to_numpy(), frame=frames["frame"].to_numpy(),
                label=frames["label"].to_numpy(), has_crop=has_crop, logits=logits, features=feats)


@torch.no_grad()
def predict_windows(model, frames: pd.DataFrame, windows, pipe, d, precision: str, *, batch_size: int,
                    stride: int = 1, workers: int = 0, progress: str = "audio windows") -> tuple[np.ndarray, np.ndarray]:
    """The audio branch's logits (N x 8, float32: the mean over the frame's windows) and per-window
    features (N x n_lengths x D, float16) for every row of `frames`.

    `windows` is (bank, offset, n_columns, video, start, width) as train_audio.py builds it from
    utils.readers.audio.frame_windows. Windows depend only on (video, frame), so _left/_right
    txtids share them, and only every `stride`-th frame of a video (and its last) is computed;
    the rest take the nearest computed frame's outputs."""
    bank, offset, n_columns, video, start, width = windows
    keys = np.unique(np.stack([video, frames["frame"].to_numpy()], 1), axis=0)   # by video, then frame
    row_key = np.searchsorted(keys[:, 0] * (1 << 32) + keys[:, 1], video * (1 << 32) + frames["frame"].to_numpy())
    last = np.r_[keys[1:, 0] != keys[:-1, 0], True]
    computed = ((keys[:, 1] - 1) % stride == 0) | last
    source = np.empty(len(keys), np.int64)
    for idx in np.split(np.arange(len(keys)), np.flatnonzero(last)[:-1] + 1):   # one video at a time
        source[idx] = idx[nearest_index(computed[idx])]
    todo = np.flatnonzero(computed)
    first_row = np.full(len(keys), -1)
    first_row[row_key[::-1]] = np.arange(len(frames))[::-1]   # any row of a key gives its windows
    rows = first_row[todo]
    n_len = start.shape[1]
    flat = WindowDataset(bank, offset, n_columns, np.repeat(video[rows], n_len), start[rows].reshape(-1),
                         width[rows].reshape(-1), np.zeros(len(rows) * n_len))
    part = shard(len(flat), d)
    loader = DataLoader(Subset(flat, part), batch_size=batch_size, num_workers=workers, collate_fn=keep_batch,
                        pin_memory=torch.cuda.is_available())
    model.eval()
    out = Rows(len(part), progress if d.main else None, "windows", features=np.float16)
    for spec, widths, _ in loader:
        with autocast(d.device, precision):
            f, l = features_and_logits(model, pipe(spec, widths))
        out.add(logits=l, features=f)
    logits = gather(out.get("logits", len(EXPR_CLASSES)), d).reshape(len(todo), n_len, len(EXPR_CLASSES))
    feats = gather(out.get("features", model.num_features), d).reshape(len(todo), n_len, model.num_features)
    slot = np.full(len(keys), -1)
    slot[todo] = np.arange(len(todo))
    chosen = slot[source[row_key]]
    return logits[chosen].mean(1), feats[chosen]


def windows_to_predict(frames: pd.DataFrame, video: np.ndarray, stride: int, n_lengths: int) -> int:
    """How many windows predict_windows runs for `frames` (video: each row's video index): those of
    every `stride`-th frame of each video and of its last, `n_lengths` per frame."""
    keys = np.unique(np.stack([video, frames["frame"].to_numpy()], 1), axis=0)
    last = np.r_[keys[1:, 0] != keys[:-1, 0], True] if len(keys) else np.zeros(0, bool)
    return int((((keys[:, 1] - 1) % stride == 0) | last).sum()) * n_lengths


@torch.no_grad()
def predict_tokens(model, dataset, d, precision: str, *, batch_size: int, progress: str = "fusion") -> dict:
    """The fusion model's three heads (logits_image, logits_audio, logits_fusion), their ensemble and
    the pooled feature for every row of a utils.models.fusion.TokenDataset, as float32 arrays."""
    part = Subset(dataset, shard(len(dataset), d))
    model.eval()
    out = Rows(len(part), progress if d.main else None, "frames")
    for image, mask, audio, _ in DataLoader(part, batch_size=batch_size, collate_fn=keep_batch):
        with autocast(d.device, precision):
            y = model(image.to(d.device), mask.to(d.device), audio.to(d.device))
        y["ensemble"] = ensemble_logits(y)
        out.add(**y)
    return {k: gather(out.get(k, model.num_features if k == "features" else len(EXPR_CLASSES)), d)
            for k in (*HEADS, "ensemble", "features")}
