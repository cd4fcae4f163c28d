"""DFEW clip model over the per-frame features of extract_features.py (DESIGN.md section 6).

Usage: python train_fusion.py --dataset dfew --data data/dfew --features runs/features/resnet18 \
           [runs/features/openpose runs/features/logmel ...] [--fold 1 | --folds all] [--ablation] --seed 0

Data. Each clip gives 16 frame positions (utils.readers.dfew.sample_indices: one random frame per
segment in training, redrawn every epoch from (seed, epoch); segment centres otherwise), and
every feature run its features of those frames with a mask. A run that lacks a frame (made
with --frames eval) gives the nearest frame it has; a masked frame stays masked.
Model. Per stream a LayerNorm + Linear to `width`, learned position (frame slot; started from
sine codes) and modality embeddings, and a learned 'missing' token for masked frames. The
first stream (the image run) is the primary one; as in the MFM, it attends to each other
stream and each other stream to it (cross-attention with a residual, so every token keeps its
own frame's content and slot), and its own tokens stay in the sequence. The attention outputs
start at zero, so training starts from the image-only model. A pre-norm transformer encoder
over all tokens, a masked mean pool and a 7-way fused head. With several streams, the same
encoder also reads each stream's tokens alone into that stream's own head, and a clip's score
is the mean log-probability of the fused head and the heads of the streams it has, as the MFM
ensembles its fusion, image and audio heads; training sums the heads' cross-entropies.
Missing streams. A stream a clip lacks (no OpenPose output, no sound) adds no token, leaves
the others' tokens as they are and has no say in the score: the clip is scored from the
streams it has. Training drops each stream of each clip whole with p = --modality-dropout
(ModDrop, Neverova et al. 2016), so the model learns to score every subset of its streams.
FrameAverage, a linear head on the mean primary feature, is the order-blind baseline.
Selection. Per fold, a stratified, seeded share of the training clips is the validation
split (utils.readers.dfew.fold_split); best.pt is chosen on its UAR (ties: lower cross-entropy), never
on the test fold.
Generators fine-tuned per fold. '{fold}' in a --features path stands for the test fold, e.g.
runs/features/image-dfew-resnet18-fold{fold}_seed0 (train_image.py --dataset dfew --fold k,
then extract_features.py --checkpoint). A run whose image model saw the fold's test clips is
an error; one that trained on its validation clips is warned about and counted.
Writes runs/temporal/<name>_seed<k>/: fold<k>/ (config.json, log.jsonl, best.pt, last.pt,
split.json with the train/val/test clip ids, preds/{val,test}.npz: one row per clip, frame 0
= the whole clip, and metrics.json) and metrics.json with the per-fold and mean UAR/WAR.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils.files import DataError
from utils.classes import NUM_DFEW_CLASSES
from utils.config import parse_config
from utils.console import log, table, warn
from utils.training.data import ClassBalancedSampler, keep_batch, nearest_index
from utils.readers.dfew import fold_split, read_tables, sample_indices, seen_clips
from utils.training.engine import Rows, Trainer, autocast, pick_precision, setup_distributed
from utils.training.plan import Plan
from utils.evaluation.metrics import per_class_f1, uar_war
from utils.models.backbones import load_weights
from utils.evaluation.preds import save_preds
from utils.runs import is_complete, read_json, run_dir, save_config, seed_everything, write_json

KINDS = ("image", "keypoints", "audio", "extra")   # the ablation adds them in this order


@dataclass
class TemporalConfig:
    dataset: str = field(default="dfew", metadata={"choices": ["dfew"]})
    data: str = field(default="data/dfew", metadata={"help": "output folder of prepare_data.py --dataset dfew"})
    features: list[str] = field(default_factory=list, metadata={"help": "feature runs (runs/features/...), image first; "
                                                                "'{fold}' in a path stands for the test fold"})
    modalities: list[str] = field(default_factory=list, metadata={"help": "use only these runs (names or kinds)"})
    runs: str = field(default="runs", metadata={"help": "root of the run folders"})
    name: str = "dfew"
    seed: int = 0
    fold: int = field(default=1, metadata={"help": "the test fold (1..5)"})
    folds: str = field(default="", metadata={"help": "'all' or a list like 1,3 (overrides --fold)"})
    model: str = field(default="temporal", metadata={"choices": ["temporal", "frame_average"]})
    ablation: bool = field(default=False, metadata={"help": "image only, +keypoints, +audio, +extra, in one table"})
    val_share: float = field(default=0.1, metadata={"help": "share of each class's training clips kept for selection"})
    n_frames: int = 16
    width: int = 128
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    modality_dropout: float = field(default=0.25, metadata={"help": "training: share of each clip's streams dropped whole "
                                                                   "(ModDrop), so a missing or empty stream cannot hurt"})
    epochs: int = 30
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    class_weighted: bool = field(default=False, metadata={"help": "weighted loss over all clips instead of class-balanced draws"})
    max_per_class: int = field(default=0, metadata={"help": "resampler cap per class and epoch (0: median class size)"})
    ema: bool = False
    ema_decay: float = 0.999
    patience: int = field(default=10, metadata={"help": "early stop after this many epochs without gain (0: never)"})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    device: str = "auto"
    overwrite: bool = field(default=False, metadata={"help": "train again even if a fold is complete"})


# A few hundred clips give a dozen steps an epoch: 40 epochs (the position embeddings start
# from sine codes; from noise, 40 left the model at chance on the synthetic twins).
PRESETS = {"demo": dict(width=64, heads=4, layers=1, epochs=40, batch_size=16, lr=2e-3, warmup_epochs=1.0,
                        val_share=0.2, patience=0)}


class Stream:
    """One feature run, indexed by clip slot: lookup[offset[clip] + position] is its row, or -1."""

    def __init__(self, run, clips: pd.DataFrame, name: str | None = None):
        run = Path(run)
        with np.load(run / "features.npz", allow_pickle=False) as f:
            txtid, frame, mask, feats = f["txtid"], f["frame"], f["mask"], f["features"]
        bad = mask & ~np.isfinite(feats.reshape(len(feats), -1)).all(axis=1)
        if bad.any():   # the readers zero and mask what they cannot read: this is a generator gone wrong
            first = np.flatnonzero(bad)[0]
            raise DataError(f"{run / 'features.npz'}: {int(bad.sum())} unmasked frames hold NaN or infinite features "
                            f"(first: clip {txtid[first]} frame {frame[first]}); extract them again "
                            "(--precision fp32 if the generator overflowed in half precision)")
        self.path, self.name, self.kind = run, name or run.name, read_json(run / "config.json")["config"]["modality"]
        # A zero row with mask False last: row -1 is 'nothing', without a branch.
        self.bank = torch.from_numpy(np.concatenate([feats, np.zeros((1, feats.shape[1]), feats.dtype)]))
        self.mask = torch.from_numpy(np.concatenate([mask, [False]]))
        offset = np.concatenate([[0], np.cumsum(clips["n_frames"])])
        index = pd.Series(np.arange(len(clips)), index=clips["clip"].to_numpy()).reindex(txtid).to_numpy()
        ok = ~np.isnan(index)
        clip_of, position = index[ok].astype(np.int64), frame[ok].astype(np.int64) - 1
        ok2 = position < clips["n_frames"].to_numpy()[clip_of]
        lookup = np.full(offset[-1], -1, np.int64)
        lookup[offset[clip_of[ok2]] + position[ok2]] = np.flatnonzero(ok)[ok2]
        for c in range(len(clips)):   # frames the run lacks take the nearest frame it has
            part = lookup[offset[c]:offset[c + 1]]
            near = nearest_index(part >= 0)
            part[:] = np.where(near >= 0, part[np.maximum(near, 0)], -1)
        self.lookup = torch.from_numpy(lookup)

    @property
    def dim(self) -> int:
        return self.bank.shape[1]


class ClipDataset(Dataset):
    """Clips `index` (rows of clips.parquet); a batch is (features list, masks list, labels)."""

    def __init__(self, streams, clips: pd.DataFrame, index, train: bool, seed: int = 0, n: int = 16):
        self.streams, self.train, self.seed, self.n = streams, train, seed, n
        self.index = np.asarray(index, np.int64)
        self.clip = clips["clip"].to_numpy()[self.index]
        self.n_frames = clips["n_frames"].to_numpy()[self.index]
        self.offset = np.concatenate([[0], np.cumsum(clips["n_frames"])])[self.index]
        self.labels = torch.as_tensor(clips["label"].to_numpy()[self.index].astype(np.int64))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.positions = torch.from_numpy(np.stack(
            [sample_indices(int(m), self.n, self.train, rng) for m in self.n_frames]) if len(self.index)
            else np.zeros((0, self.n), np.int64))

    def __len__(self):
        return len(self.index)

    def describe(self, indices) -> list[str]:
        """'clip <id> (frames ...)' of the given samples, for error messages: the 1-based frame
        positions sampled this epoch."""
        return [f"clip {self.clip[i]} (frames {(self.positions[i].numpy() + 1).tolist()})" for i in indices]

    def __getitems__(self, indices):
        indices = torch.as_tensor(indices)
        slots = torch.from_numpy(self.offset)[indices, None] + self.positions[indices]
        rows = [s.lookup[slots] for s in self.streams]
        return [s.bank[r] for s, r in zip(self.streams, rows)], [s.mask[r] for s, r in zip(self.streams, rows)], \
            self.labels[indices]


def _any_valid(mask: torch.Tensor) -> torch.Tensor:
    """A sample with no valid token attends to all of them (the 'missing' tokens), not to none (NaN)."""
    return mask | ~mask.any(1, keepdim=True)


class CrossAttention(nn.Module):
    """q + attention(q, kv): for a clip without any kv token (the stream is absent or dropped),
    exactly q, so an absent stream leaves the tokens as they were without it."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, q, kv, kv_valid):
        kv = self.norm_kv(kv)
        out = self.attn(self.norm_q(q), kv, kv, key_padding_mask=~_any_valid(kv_valid), need_weights=False)[0]
        return q + out * kv_valid.any(1)[:, None, None].to(out.dtype)


def sinusoids(n: int, width: int) -> torch.Tensor:
    """(n, width) sine/cosine position codes (Vaswani et al. 2017)."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-np.log(10000.0) / width))
    out = torch.zeros(n, width)
    out[:, 0::2], out[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    return out


class TemporalModel(nn.Module):
    """The clip model: see the module docstring. feats[i] (B, n, D_i) and masks[i] (B, n) bool
    for stream i (the first is the primary). Scoring (eval mode) returns (B, num_classes): the
    mean log-probability of the fused head and, with several streams, each stream's own head,
    as the MFM ensembles its fusion, image and audio heads. Training returns the heads' logits
    as a list (fused first), for the summed loss.

    A stream absent for a clip (all its frames masked) adds no token to the fused sequence,
    changes no other token, and its own head is left out of the score (and gives zero logits in
    training, so no gradient): the clip is scored as by the same model without that stream. modality_dropout: in training, each stream of each clip is
    dropped whole with this probability (clips keep at least one stream), so the model learns
    to score every subset of its streams (ModDrop: Neverova et al., TPAMI 2016)."""

    def __init__(self, dims, num_classes: int = NUM_DFEW_CLASSES, n_frames: int = 16, width: int = 128,
                 heads: int = 4, layers: int = 2, dropout: float = 0.1, modality_dropout: float = 0.0):
        super().__init__()
        self.modality_dropout = modality_dropout if len(dims) > 1 else 0.0
        self.proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, width)) for d in dims)
        # Learned, but started from sine codes: with a few hundred clips, embeddings grown from
        # noise (std 0.02) left the order unread (OpenPose alone, demo folds 1-2: 0.33 UAR, against
        # 0.64 from sines at 0.3; 0.51 at 1.0, where they drown the features).
        self.pos = nn.Parameter(0.3 * sinusoids(n_frames, width)[None])
        self.modality, self.missing = nn.Parameter(torch.zeros(len(dims), width)), nn.Parameter(torch.zeros(len(dims), width))
        for p in (self.modality, self.missing):
            nn.init.trunc_normal_(p, std=0.02)
        # Pair i: the primary stream attends to stream i + 1, and stream i + 1 to the primary;
        # the sequence is the primary's tokens, then the pairs' outputs.
        self.to_other = nn.ModuleList(CrossAttention(width, heads, dropout) for _ in dims[1:])
        self.from_other = nn.ModuleList(CrossAttention(width, heads, dropout) for _ in dims[1:])
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)
        # Each stream's own head reads the same encoder over that stream's tokens alone.
        self.stream_heads = nn.ModuleList(nn.Linear(width, num_classes) for _ in dims) if len(dims) > 1 else None

    def drop_modalities(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Training only: each stream of each clip masked whole with p = modality_dropout; a
        clip that would lose every stream it has keeps them all."""
        present = torch.stack([m.any(1) for m in masks], 1)
        drop = torch.rand(present.shape, device=present.device) < self.modality_dropout
        drop &= (present & ~drop).any(1, keepdim=True)
        return [m & ~drop[:, i, None] for i, m in enumerate(masks)]

    def encode(self, tokens, valid) -> torch.Tensor:
        """The encoder and a masked mean pool: (B, T, W) tokens, (B, T) valid -> (B, W)."""
        valid = _any_valid(valid)
        tokens = self.norm(self.encoder(tokens, src_key_padding_mask=~valid))
        weights = valid[..., None].to(tokens.dtype)
        return (tokens * weights).sum(1) / weights.sum(1)

    def forward(self, feats, masks):
        if self.training and self.modality_dropout > 0:
            masks = self.drop_modalities(masks)
        x = [torch.where(m[..., None], p(f.float()), self.missing[i]) + self.pos + self.modality[i]
             for i, (p, f, m) in enumerate(zip(self.proj, feats, masks))]
        tokens, valid = [x[0]], [masks[0]]
        if len(x) > 1:
            present = [m.any(1, keepdim=True) for m in masks]
            tokens += [a(x[0], x[i + 1], masks[i + 1]) for i, a in enumerate(self.to_other)]
            tokens += [b(x[i + 1], x[0], masks[0]) for i, b in enumerate(self.from_other)]
            valid += [masks[0] & present[i + 1] for i in range(len(self.to_other))] + list(masks[1:])
        logits = [self.head(self.encode(torch.cat(tokens, 1), torch.cat(valid, 1)))]
        if self.stream_heads is None:
            return logits[0]
        # Every stream's tokens alone, in one batch; an absent stream's head says nothing (0).
        own = self.encode(torch.cat(x), torch.cat(masks)).split(len(x[0]))
        present = [torch.ones_like(masks[0][:, :1])] + [m.any(1, keepdim=True) for m in masks]
        logits += [head(o) * p for head, o, p in zip(self.stream_heads, own, present[1:])]
        if self.training:
            return logits
        weights = torch.stack(present).float()   # the fused head and the streams the clip has
        return (torch.stack([F.log_softmax(z.float(), -1) for z in logits]) * weights).sum(0) / weights.sum(0)


class FrameAverage(nn.Module):
    """The order-blind baseline: a linear head on the mean of the primary stream's valid frames."""

    def __init__(self, dims, num_classes: int = NUM_DFEW_CLASSES, **_):
        super().__init__()
        self.norm, self.head = nn.LayerNorm(dims[0]), nn.Linear(dims[0], num_classes)

    def forward(self, feats, masks):
        w = _any_valid(masks[0])[..., None].float()
        return self.head(self.norm((feats[0].float() * w).sum(1) / w.sum(1)))


@torch.no_grad()
def predict(model, dataset, cfg, d, precision, progress: str = "clips") -> np.ndarray:
    model.eval()
    out = Rows(len(dataset), progress if d.main else None, "clips")
    for feats, masks, _ in DataLoader(dataset, batch_size=cfg.batch_size * 4, collate_fn=keep_batch):
        with autocast(d.device, precision):
            out.add(logits=model([f.to(d.device) for f in feats], [m.to(d.device) for m in masks]))
    return out.get("logits", NUM_DFEW_CLASSES)


def train_fold(cfg, clips, split: dict, streams, fold: int, run: Path, d, seen_val: int = 0) -> dict:
    """Train on fold `fold`'s training clips (`split`: fold_split's rows), select on its
    validation clips, score its test clips."""
    if is_complete(run) and not cfg.overwrite:
        return read_json(run / "metrics.json")
    for stale in ("last.pt", "best.pt", "log.jsonl", "metrics.json") if cfg.overwrite and d.main else ():
        (run / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed * 100 + fold)
    train, val, test = split["train"], split["val"], split["test"]
    datasets = {s: ClipDataset(streams, clips, ix, s == "train", cfg.seed, cfg.n_frames)
                for s, ix in (("train", train), ("val", val), ("test", test))}
    build = TemporalModel if cfg.model == "temporal" else FrameAverage
    model = build([s.dim for s in streams], NUM_DFEW_CLASSES, n_frames=cfg.n_frames, width=cfg.width,
                  heads=cfg.heads, layers=cfg.layers, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout)
    precision = pick_precision(d.device, cfg.precision)
    labels = {s: ds.labels.numpy() for s, ds in datasets.items()}
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(run, asdict(cfg) | dict(fold=fold, streams=[s.name for s in streams], precision=precision))
        write_json(run / "split.json", {s: clips["clip"].to_numpy()[ix].tolist()
                                        for s, ix in (("train", train), ("val", val), ("test", test))})

    def evaluate(model):
        logits = predict(model, datasets["val"], cfg, d, precision, f"fold {fold} validation")
        uar, _ = uar_war(labels["val"], logits.argmax(1))
        nll = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels["val"])).item()
        # The Trainer selects on 'macro_f1' (logged as its `metric`): here val UAR, ties broken by
        # the lower cross-entropy.
        return dict(macro_f1=uar - 1e-4 * min(nll, 10.0),
                    per_class_f1=per_class_f1(labels["val"], logits.argmax(1), NUM_DFEW_CLASSES).tolist())

    def step(net, batch):
        feats, masks, y = batch
        return net([f.to(d.device) for f in feats], [m.to(d.device) for m in masks]), y.to(d.device), len(y), 0

    counts = np.bincount(labels["train"], minlength=NUM_DFEW_CLASSES)
    weights = None
    if cfg.class_weighted:   # every clip each epoch, the loss weighted by inverse class frequency
        weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / NUM_DFEW_CLASSES, dtype=torch.float32)
    cap = len(train) if cfg.class_weighted else cfg.max_per_class
    sampler = ClassBalancedSampler(labels["train"], cap, cfg.seed * 100 + fold, d.rank, d.world_size, NUM_DFEW_CLASSES)
    loader = DataLoader(datasets["train"], batch_size=cfg.batch_size, sampler=sampler, collate_fn=keep_batch)
    # The summed loss of the fused head and each stream's own head (TemporalModel in training).
    heads = SimpleNamespace(**asdict(cfg), loss_weights=[1.0] * (1 + len(streams)))
    plan = Plan("clips", len(sampler) * d.world_size, cfg.batch_size * d.world_size, cfg.epochs, len(val),
                dict(val=len(val), test=len(test)), note=f"fold {fold}")
    fit = Trainer(model, heads, run, d, precision, step, evaluate, weights, metric="UAR", plan=plan).fit(loader, sampler)
    load_weights(model, run / "best.pt")
    scores = dict(fold=fold, best_epoch=fit["best_epoch"], n_train=len(train), n_val=len(val), n_test=len(test),
                  val_clips_seen_by_generators=seen_val)
    for split in ("val", "test"):
        logits = predict(model.to(d.device), datasets[split], cfg, d, precision, f"fold {fold} predict {split}")
        uar, war = uar_war(labels[split], logits.argmax(1)) if len(logits) else (0.0, 0.0)
        scores |= {f"{split}_uar": uar, f"{split}_war": war}
        if d.main:
            ix = datasets[split].index
            save_preds(run / "preds" / f"{split}.npz", txtid=clips["clip"].to_numpy()[ix], frame=np.zeros(len(ix)),
                       label=labels[split], has_crop=np.ones(len(ix), bool), logits=logits)
    if d.main:
        write_json(run / "metrics.json", scores)
    return scores


def wanted_folds(cfg, folds: pd.DataFrame) -> list[int]:
    if cfg.folds == "all":
        return sorted(int(f) for f in folds["fold"].unique())
    return [int(f) for f in cfg.folds.split(",")] if cfg.folds else [cfg.fold]


def feature_paths(cfg, fold: int) -> list[tuple[str, str]]:
    """(as given, for `fold`) for each run of cfg.features that cfg.modalities selects (by the
    name as given or by kind): '{fold}' stands for the test fold (a generator fine-tuned per fold)."""
    out = []
    for template in cfg.features:
        path = template.replace("{fold}", str(fold))
        if not is_complete(path):
            raise SystemExit(f"error: {path}: not a complete feature run (no metrics.json); run extract_features.py")
        kind = read_json(Path(path) / "config.json")["config"]["modality"]
        if not cfg.modalities or Path(template).name in cfg.modalities or kind in cfg.modalities:
            out.append((template, path))
    if not out:
        raise SystemExit(f"error: --modalities {cfg.modalities} matches none of the feature runs")
    return out


def check_generators(cfg, clips, fold: int, split: dict, loud: bool = True) -> int:
    """A feature run from an image model fine-tuned on DFEW must not have learnt from this fold's
    test clips (the error behind a wrong '{fold}'), and should not have trained on its validation
    clips (selection then favours the features' own overfit: counted, and warned about when
    `loud`). Returns the most validation clips one generator trained on."""
    ids, seen_val = clips["clip"].to_numpy(), 0
    for _, path in feature_paths(cfg, fold):
        saved = Path(path) / "generator_split.json"
        if not saved.is_file():
            continue
        generator = read_json(saved)
        leaked = seen_clips(generator).intersection(ids[split["test"]])
        if leaked:
            raise SystemExit(f"error: fold {fold}: {path} comes from an image model that learnt from "
                             f"{len(leaked)} of this fold's {len(split['test'])} test clips (e.g. {min(leaked)}); "
                             "give each fold its own run with a '{fold}' in the --features path")
        trained = len((set(generator["train"]) | set(generator.get("inherited", []))).intersection(ids[split["val"]]))
        if trained and loud:
            warn(f"fold {fold}: {path}'s image model trained on {trained} of the {len(split['val'])} validation "
                 "clips; use the same --seed and --val-share as train_image.py --dataset dfew")
        seen_val = max(seen_val, trained)
    return seen_val


def load_streams(cfg, clips, fold: int, cache: dict | None = None) -> list[Stream]:
    """The feature runs of cfg.features for `fold` that cfg.modalities selects. `cache` (path ->
    Stream), shared by the folds and the ablation's settings, reads each run once."""
    if not cfg.features:
        raise SystemExit("error: --features RUN [RUN ...] is required (folders written by extract_features.py)")
    cache = {} if cache is None else cache
    streams = []
    for template, path in feature_paths(cfg, fold):
        if path not in cache:
            cache[path] = Stream(path, clips, name=Path(template).name)
        streams.append(cache[path])
    # The image run leads (the primary stream); the others keep their order.
    return sorted(streams, key=lambda s: s.kind != "image")


def train(cfg, clips, folds, cache: dict | None = None) -> dict:
    """Every wanted fold; `cache` (the ablation's) keeps the runs read, else a fold's own runs
    are dropped once it is trained."""
    d, wanted, own_cache = setup_distributed(cfg.device), wanted_folds(cfg, folds), cache is None
    cache = {} if cache is None else cache
    if not cfg.features:
        raise SystemExit("error: --features RUN [RUN ...] is required (folders written by extract_features.py)")
    # Every fold's runs, splits and generators are checked before any fold trains (or is reused).
    try:
        splits = {f: fold_split(clips, folds, f, cfg.val_share, cfg.seed) for f in wanted}
    except DataError as err:
        raise SystemExit(f"error: {err}")
    seen_val = {f: check_generators(cfg, clips, f, splits[f], d.main) for f in wanted}
    first = load_streams(cfg, clips, wanted[0], cache)
    names, described = [s.name for s in first], ", ".join(f"{s.name} ({s.kind}, {s.dim})" for s in first)
    del first   # no reference may keep a fold's own runs alive once they leave the cache
    root = run_dir(cfg.runs, "temporal", cfg.name, cfg.seed)
    log(f"{root}: {cfg.model} on {described}, folds {wanted}")
    per_fold = []
    for f in wanted:
        per_fold.append(train_fold(cfg, clips, splits[f], load_streams(cfg, clips, f, cache), f, root / f"fold{f}", d,
                                   seen_val[f]))
        if own_cache:
            for template, path in feature_paths(cfg, f):
                if path != template:
                    cache.pop(path, None)
    metrics = dict(model=cfg.model, streams=names, folds=per_fold,
                   **{f"mean_{k}": float(np.mean([m[k] for m in per_fold])) for k in ("test_uar", "test_war", "val_uar")})
    table(f"DFEW {cfg.model} ({' + '.join(names)}): test fold UAR / WAR",
          ["fold", "UAR", "WAR", "val UAR", "best epoch"],
          [[m["fold"], m["test_uar"], m["test_war"], m["val_uar"], m["best_epoch"]] for m in per_fold]
          + [["mean", metrics["mean_test_uar"], metrics["mean_test_war"], metrics["mean_val_uar"], ""]])
    if d.main:
        write_json(root / "metrics.json", metrics)
    return metrics


def main(argv=None) -> dict:
    cfg = parse_config(TemporalConfig, argv, description=__doc__.split("\n")[0], presets=PRESETS)
    try:
        clips, folds = read_tables(cfg.data, "clips", "folds")
    except DataError as err:
        raise SystemExit(f"error: {err}")
    if not cfg.ablation:
        return train(cfg, clips, folds)
    cache = {}   # every setting reads the same runs: once
    kinds = [k for k in KINDS if k in {s.kind for s in load_streams(cfg, clips, wanted_folds(cfg, folds)[0], cache)}]
    settings = [("frame average", replace(cfg, model="frame_average", modalities=kinds[:1]))]
    settings += [(" + ".join(kinds[:i]), replace(cfg, model="temporal", modalities=kinds[:i]))
                 for i in range(1, len(kinds) + 1)]
    results = {label: train(replace(s, name=f"{cfg.name}-{label.replace(' + ', '+').replace(' ', '_')}"), clips, folds,
                            cache) for label, s in settings}
    table(f"DFEW ablation (seed {cfg.seed}): mean over folds {[m['fold'] for m in next(iter(results.values()))['folds']]}",
          ["setting", "UAR", "WAR", "val UAR"],
          [[k, m["mean_test_uar"], m["mean_test_war"], m["mean_val_uar"]] for k, m in results.items()])
    write_json(run_dir(cfg.runs, "temporal", f"{cfg.name}-ablation", cfg.seed) / "metrics.json", results)
    return results


if __name__ == "__main__":
    main()
