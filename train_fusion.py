"""Fusion: the Modal Fusion Module on the cached features of an image run and an audio run.

Usage: python train_fusion.py --image runs/image/swin_tiny_patch4_window7_224_seed0 \
                              --audio runs/audio/swin_tiny_patch4_window7_224_seed0 --seed 0
       python train_fusion.py --dataset dfew --data data/dfew --features runs/features/resnet18 ... --folds all

Reads only the two runs' preds/<split>.npz (rows matched by (txtid, frame), in any order), so a
rerun with another seed takes minutes. Writes runs/fusion/<name>_seed<k>/ like the branch
scripts; preds/<split>.npz holds logits_image, logits_audio, logits_fusion (the three heads),
logits (their ensemble) and the pooled fusion feature. Prints the paper's Table 2: val macro-F1
of each head and the ensemble next to the branch runs it was trained from.
With --dataset dfew it trains the DFEW clip model instead (utils/models/temporal.py, its own options:
`train_fusion.py --dataset dfew -h`).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from utils.models import temporal
from utils.files import DataError
from utils.classes import EXPR_CLASSES
from utils.config import parse_config, peek
from utils.console import cli, log, table
from utils.training.data import ClassBalancedSampler, keep_batch, load_frames, need
from utils.training.engine import Trainer, pick_precision, score, setup_distributed
from utils.training.plan import Plan
from utils.evaluation.inference import predict_tokens
from utils.models.fusion import HEADS, ModalFusionModule, TokenDataset, context_offsets, context_rows, sort_rows
from utils.models.backbones import load_weights
from utils.evaluation.preds import check_same_frames, load_preds, save_preds, skip_split
from utils.runs import is_complete, run_dir, save_config, seed_everything, write_json

# Kim, Kim, Won (ABAW5 2023), Table 2: Aff-Wild2 validation macro-F1 (%).
PAPER_TABLE_2 = {"image": 25.61, "audio": 14.12, "fusion": 25.09, "ensemble": 27.77}


@dataclass
class FusionConfig:
    dataset: str = field(default="affwild2", metadata={"choices": ["affwild2", "dfew"],
                                                       "help": "dfew: the DFEW clip model, with its own options"})
    image: str = field(default="", metadata={"help": "image-branch run folder (runs/image/...)"})
    audio: str = field(default="", metadata={"help": "audio-branch run folder (runs/audio/...)"})
    data: str = field(default="", metadata={"help": "optional: prepared data, to check the runs cover every frame"})
    runs: str = field(default="runs", metadata={"help": "root of the run folders"})
    name: str = field(default="mfm", metadata={"help": "run name"})
    seed: int = 0
    image_context: int = field(default=16, metadata={"help": "image tokens from t-C..t+C (0: frame t only)"})
    image_stride: int = field(default=4, metadata={"help": "frames between image tokens"})
    width: int = field(default=256, metadata={"help": "common token width"})
    heads: int = 4
    layers: int = field(default=2, metadata={"help": "transformer encoder layers after the co-attention"})
    dropout: float = 0.1
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0],
                                      metadata={"help": "cross-entropy weights of the fusion, image and audio heads"})
    epochs: int = 15
    batch_size: int = 256
    accum_steps: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    max_per_class: int = field(default=0, metadata={"help": "resampler cap per class and epoch (0: median class size)"})
    ema: bool = False
    ema_decay: float = 0.999
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    device: str = "auto"
    patience: int = field(default=5, metadata={"help": "early stop after this many epochs without gain (0: never)"})
    overwrite: bool = field(default=False, metadata={"help": "train again even if the run is complete"})
    predict_only: bool = field(default=False, metadata={"help": "rewrite the predictions from best.pt"})


PRESETS = {"demo": dict(epochs=8, batch_size=128, width=64, heads=2, lr=2e-3, max_per_class=600, warmup_epochs=0.5,
                        patience=0)}


def load_split(cfg, split: str) -> dict | None:
    """Both runs' predictions of one split, rows matched by (txtid, frame); None when neither run
    has the split (a dataset without it: the branch scripts skip an empty split)."""
    paths = {b: Path(getattr(cfg, b)) / "preds" / f"{split}.npz" for b in ("image", "audio")}
    if not any(p.is_file() for p in paths.values()):
        return None
    image = sort_rows(load_preds(paths["image"], keys=["features"]))
    audio = sort_rows(load_preds(paths["audio"], keys=["features", "has_audio"]))
    check_same_frames(image, audio, str(paths["image"]), str(paths["audio"]))
    if image.get("features", np.zeros(0)).ndim != 2:
        raise DataError(f"{paths['image']}: needs per-frame 'features' (N, D); is it an image-branch run?")
    if audio.get("features", np.zeros(0)).ndim != 3:
        raise DataError(f"{paths['audio']}: needs window 'features' (N, 3, D); is it an audio-branch run?")
    for branch, preds in (("image", image), ("audio", audio)):
        finite = np.isfinite(preds["features"].reshape(len(preds["features"]), -1)).all(axis=1)
        if not finite.all():
            first = np.flatnonzero(~finite)[0]
            raise DataError(f"{paths[branch]}: {int((~finite).sum())} rows of 'features' hold NaN or infinite values "
                            f"(first {preds['txtid'][first]}/{preds['frame'][first]:05d}); the {branch} run diverged "
                            "or overflowed in half precision: retrain it, or re-predict with --precision fp32")
    return dict(txtid=image["txtid"], frame=image["frame"], label=image["label"], has_crop=image["has_crop"],
                image=image["features"], audio=audio["features"], logits_image_run=image["logits"],
                logits_audio_run=audio["logits"])


def dataset_for(split: dict, offsets, rows=None) -> TokenDataset:
    context = context_rows(split["txtid"], split["frame"], offsets)
    return TokenDataset(split["image"], split["audio"], context, split["label"], rows, (split["txtid"], split["frame"]))


def table_2(val: dict, outputs: dict) -> dict:
    labels = val["label"]
    rows = {"image-branch run": val["logits_image_run"], "audio-branch run": val["logits_audio_run"],
            "image head": outputs["image"], "audio head": outputs["audio"], "fusion head (MFM)": outputs["fusion"],
            "ensemble of the three": outputs["ensemble"]}
    scores = {name: score(labels, logits)["macro_f1"] for name, logits in rows.items()}
    paper = {"image head": "image", "audio head": "audio", "fusion head (MFM)": "fusion",
             "ensemble of the three": "ensemble"}
    table("Table 2: val macro-F1 (every frame)", ["", "this run", "paper (Aff-Wild2)"],
          [[name, f"{100 * s:.2f}", f"{PAPER_TABLE_2[paper[name]]:.2f}" if name in paper else ""]
           for name, s in scores.items()])
    return scores


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if peek(argv, "dataset", "affwild2") == "dfew":
        return temporal.main(argv)
    cfg = parse_config(FusionConfig, argv, description=__doc__.split("\n")[0], presets=PRESETS)
    if not cfg.image or not cfg.audio:
        raise SystemExit("error: --image RUN and --audio RUN are required (folders of train_image/train_audio runs)")
    d = setup_distributed(cfg.device)
    run = run_dir(cfg.runs, "fusion", cfg.name, cfg.seed)
    if is_complete(run) and not (cfg.overwrite or cfg.predict_only):
        log(f"{run} is complete (metrics.json); --overwrite trains again, --predict-only re-predicts")
        return run
    if cfg.overwrite and d.main:
        for stale in ("last.pt", "best.pt", "log.jsonl", "metrics.json"):
            (run / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed)
    precision = pick_precision(d.device, cfg.precision)
    offsets = context_offsets(cfg.image_context, cfg.image_stride)
    try:
        splits = {s: load_split(cfg, s) for s in ("train", "val")}
        for s, split in splits.items():
            need(split is not None and (split["label"] >= 0).any(), f"{cfg.image}/preds/{s}.npz",
                 f"no labelled {s} frame; the fusion {'trains on' if s == 'train' else 'selects best.pt on'} it")
        if cfg.data:
            frames = load_frames(cfg.data, ("train", "val"))
            for s, split in splits.items():
                part = frames[frames.split == s]
                check_same_frames(dict(txtid=part.txtid.to_numpy().astype(str), frame=part.frame.to_numpy()),
                                  split, f"{cfg.data}/frames.parquet ({s})", f"{cfg.image}/preds/{s}.npz")
    except DataError as err:
        raise SystemExit(f"error: {err}")
    train, val = splits["train"], splits["val"]
    model = ModalFusionModule(train["image"].shape[1], train["audio"].shape[2], len(EXPR_CLASSES), len(offsets),
                              train["audio"].shape[1], cfg.width, cfg.heads, cfg.layers, dropout=cfg.dropout)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(run, asdict(cfg) | dict(precision=precision, world_size=d.world_size,
                                            image_offsets=offsets.tolist()))
        log(f"{run}: MFM width {cfg.width}, {len(offsets)} image + {train['audio'].shape[1]} audio tokens, "
            f"{precision}, {d.world_size} x {d.device}")
    val_rows = np.flatnonzero(val["label"] >= 0)
    val_data = dataset_for(val, offsets, val_rows)

    def evaluate(model):
        return score(val["label"][val_rows], predict_tokens(model, val_data, d, precision, batch_size=cfg.batch_size * 4,
                                                            progress="validation")["ensemble"])

    def step(net, batch):
        image, mask, audio, labels = (t.to(d.device, non_blocking=True) for t in batch)
        y = net(image, mask, audio)
        return [y[h] for h in HEADS], labels, len(labels), 0

    if not cfg.predict_only:
        rows = np.flatnonzero(train["label"] >= 0)
        sampler = ClassBalancedSampler(train["label"][rows], cfg.max_per_class, cfg.seed, d.rank, d.world_size)
        loader = DataLoader(dataset_for(train, offsets, rows), batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=keep_batch)
        if d.main:
            log(f"train frames {len(rows):,}; drawn per epoch (cap {sampler.max_per_class:,}): "
                + ", ".join(f"{n} {c}" for n, c in zip(sampler.draw_counts, EXPR_CLASSES)))
        plan = Plan("frames", len(sampler) * d.world_size, cfg.batch_size * d.world_size, cfg.epochs, len(val_rows),
                    {s: len(split["txtid"]) for s, split in splits.items()}, note="and the test split if the runs have it")
        Trainer(model, cfg, run, d, precision, step, evaluate, plan=plan).fit(loader, sampler)
    if not (run / "best.pt").exists():
        raise SystemExit(f"error: {run / 'best.pt'} not found: nothing to predict with")
    best = load_weights(model, run / "best.pt")
    model.to(d.device)
    try:
        splits["test"] = load_split(cfg, "test")
    except DataError as err:
        raise SystemExit(f"error: {err}")
    results = {}
    for name, split in splits.items():
        if split is None or not len(split["txtid"]):
            if d.main:
                skip_split(run, name, f"{cfg.image}/preds and {cfg.audio}/preds")
            continue
        outputs = predict_tokens(model, dataset_for(split, offsets), d, precision, batch_size=cfg.batch_size * 4,
                                 progress=f"predict {name}")
        if d.main:
            save_preds(run / "preds" / f"{name}.npz", txtid=split["txtid"], frame=split["frame"], label=split["label"],
                       has_crop=split["has_crop"], logits=outputs["ensemble"], features=outputs["features"],
                       **{f"logits_{h}": outputs[h] for h in HEADS})
        results[name] = outputs
    if d.main:
        scores = table_2(val, results["val"])
        metrics = dict(val_macro_f1=scores["ensemble of the three"], table_2=scores, best_epoch=best.get("epoch"),
                       image_run=cfg.image, audio_run=cfg.audio)
        write_json(run / "metrics.json", metrics)
        log(f"fusion val macro-F1 {metrics['val_macro_f1']:.4f} (ensemble of the three heads) -> {run}")
    return run


if __name__ == "__main__":
    cli(main)
