"""Image branch: fine-tune a timm backbone (Swin-Tiny) on face crops, write per-frame predictions.

Usage: python train_image.py --data data/affwild2 --seed 0 [--model swin_tiny_patch4_window7_224]
       torchrun --nproc_per_node=4 train_image.py --data data/affwild2 --seed 0
       python train_image.py --dataset dfew --data data/dfew --fold 1 --model resnet18 --seed 0

Writes runs/image/<name>_seed<k>/: config.json, log.jsonl, best.pt, last.pt (a killed run
resumes from it), preds/{train,val,test}.npz for every frame of every video (frames without a
crop take the nearest crop's output, has_crop=False) and metrics.json, written last.

--dataset dfew fine-tunes a DFEW feature generator for one test fold: each frame of the fold's
training clips carries its clip's label, a seeded share of them (utils.readers.dfew.fold_split, the
clip model's own split for the same --seed and --val-share) selects best.pt on clip UAR (the
mean logits of a clip's 16 evaluation frames), and the test fold is only predicted. The run is
runs/image/dfew-<model>-fold<k>_seed<s>/ with split.json and preds/{val,test}.npz of the 16
evaluation frames; extract_features.py --checkpoint turns it into a feature run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from utils.files import DataError
from utils.classes import DFEW_CLASSES, EXPR_CLASSES
from utils.config import parse_config
from utils.console import cli, log, table
from utils.training.data import (ClassBalancedSampler, CropDataset, image_augmentation, load_frames, need,
                        seed_worker)
from utils.readers.dfew import clip_score, fold_frames, seen_clips, weights_split
from utils.training.engine import InputPipe, Trainer, pick_precision, score, setup_distributed
from utils.training.plan import Plan
from utils.models.backbones import create_model, load_weights, normalisation
from utils.evaluation.inference import infer_crops, predict_crops
from utils.evaluation.preds import save_preds, skip_split
from utils.runs import is_complete, read_json, run_dir, save_config, seed_everything, write_json


@dataclass
class ImageConfig:
    dataset: str = field(default="affwild2", metadata={"choices": ["affwild2", "dfew"],
                                                       "help": "dfew: a per-fold feature generator (see above)"})
    data: str = field(default="data/affwild2", metadata={"help": "output folder of prepare_data.py"})
    fold: int = field(default=1, metadata={"help": "dfew: the test fold; trains on its training clips"})
    val_share: float = field(default=0.1, metadata={"help": "dfew: share of each class's training clips kept for selection"})
    runs: str = field(default="runs", metadata={"help": "root of the run folders"})
    name: str = field(default="", metadata={"help": "run name (default: the model name)"})
    seed: int = 0
    model: str = field(default="swin_tiny_patch4_window7_224", metadata={"help": "any timm model name"})
    pretrained: bool = field(default=True, metadata={"help": "ImageNet weights from the timm hub"})
    pretrained_path: str | None = field(default=None, metadata={"help": "weights file, for offline use"})
    img_size: int = field(default=224, metadata={"help": "model input; the 112 px crops are resized on the device"})
    crop_size: int = field(default=0, metadata={"help": "decode size (0: 112, Aff-Wild2's crops; img_size for DFEW frames)"})
    epochs: int = 10
    batch_size: int = 32
    accum_steps: int = field(default=2, metadata={"help": "effective batch = batch_size x accum_steps x GPUs"})
    lr: float = 5e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    class_weighted: bool = field(default=False, metadata={"help": "weight the loss by inverse drawn frequency"})
    max_per_class: int = field(default=0, metadata={"help": "resampler cap per class and epoch (0: median class size)"})
    augment: float = field(default=1.0, metadata={"help": "augmentation strength, 0 turns it off"})
    random_erase: float = field(default=0.25, metadata={"help": "probability of timm RandomErasing per image, on the device"})
    ema: bool = False
    ema_decay: float = 0.9998
    grad_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    device: str = "auto"
    workers: int = 4
    patience: int = field(default=4, metadata={"help": "early stop after this many epochs without gain (0: never)"})
    tta: bool = field(default=True, metadata={"help": "average with the horizontally flipped crop at prediction"})
    overwrite: bool = field(default=False, metadata={"help": "train again even if the run is complete"})
    predict_only: bool = field(default=False, metadata={"help": "rewrite the predictions from best.pt"})


# A tiny CPU configuration: make demo and the tests train it in about 80 s on 2 cores. DFEW's
# validation share is the clip model's demo one, so both hold out the same clips.
PRESETS = {"demo": dict(model="test_efficientnet", pretrained=False, img_size=64, epochs=10,
                        batch_size=64, accum_steps=1, lr=5e-3, weight_decay=0.01, drop_path=0.0,
                        warmup_epochs=0.2, max_per_class=500, workers=1, patience=0, ema=False,
                        val_share=0.2)}


def loader_for(dataset, cfg, sampler=None, batch_size=None):
    return DataLoader(dataset, batch_size=batch_size or cfg.batch_size, sampler=sampler,
                      num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=seed_worker, persistent_workers=False, drop_last=False)


def check_dfew_split(cfg, run: Path, split: dict) -> dict:
    """The fold's split, plus the clips that --pretrained-path weights fine-tuned on DFEW learnt
    from ('inherited'): weights that saw this fold's test clips would leak them. A run already
    trained on another split (other --seed or --val-share) is not silently re-described."""
    source = weights_split(cfg.pretrained_path) if cfg.pretrained_path else None
    if source is not None:
        leaked = seen_clips(source) & set(split["test"])
        if leaked:
            raise DataError(f"{cfg.pretrained_path}: learnt from {len(leaked)} of fold {cfg.fold}'s test clips "
                            f"(e.g. {min(leaked)}); start from weights that never saw them")
        split["inherited"] = sorted(seen_clips(source))
    saved = run / "split.json"
    if saved.is_file() and not cfg.overwrite and read_json(saved) != split:
        raise DataError(f"{saved}: this run was trained on another split; give its --seed, --val-share and "
                        "--pretrained-path again, or --overwrite")
    return split


def main(argv=None):
    cfg = parse_config(ImageConfig, argv, description=__doc__.split("\n")[0], presets=PRESETS)
    dfew = cfg.dataset == "dfew"
    cfg = replace(cfg, crop_size=cfg.crop_size or (cfg.img_size if dfew else 112))
    classes = DFEW_CLASSES if dfew else EXPR_CLASSES
    d = setup_distributed(cfg.device)
    name = cfg.name or (f"dfew-{cfg.model}" if dfew else cfg.model)
    run = run_dir(cfg.runs, "image", f"{name}-fold{cfg.fold}" if dfew else name, cfg.seed)
    if is_complete(run) and not (cfg.overwrite or cfg.predict_only):
        log(f"{run} is complete (metrics.json); --overwrite trains again, --predict-only re-predicts")
        return run
    if cfg.overwrite and d.main:
        for stale in ("last.pt", "best.pt", "log.jsonl", "metrics.json"):
            (run / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed)
    precision = pick_precision(d.device, cfg.precision)
    try:
        frames, split = fold_frames(cfg.data, cfg.fold, cfg.val_share, cfg.seed) if dfew else (load_frames(cfg.data), None)
        if dfew:
            split = check_dfew_split(cfg, run, split)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    # DFEW predicts and scores a clip on its 16 evaluation frames, as the clip model sees it.
    predicted = frames["eval_sample"] if dfew else True
    val = frames[(frames.split == "val") & frames.has_crop & (frames.label >= 0) & predicted]
    source = f"{cfg.data}/{'folds' if dfew else 'frames'}.parquet" + (f" (fold {cfg.fold})" if dfew else "")
    need(len(val), source, "no labelled val frame with a face crop; the val split selects best.pt")
    need(cfg.predict_only or ((frames.split == "train") & frames.has_crop & (frames.label >= 0)).any(), source,
         "no labelled train frame with a face crop (prepare_data.py's summary counts the crops it found)")
    model = create_model(cfg.model, len(classes), cfg.pretrained and not cfg.predict_only,
                         cfg.pretrained_path, cfg.img_size, drop_path=cfg.drop_path)
    pipe = InputPipe(*normalisation(model), cfg.img_size, d.device, cfg.random_erase * (cfg.augment > 0))
    infer_args = dict(crop_size=cfg.crop_size, batch_size=cfg.batch_size * 2, workers=cfg.workers)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(run, asdict(cfg) | dict(precision=precision, world_size=d.world_size))
        if dfew:   # the clips this generator learns from: the clip model checks its folds against them
            write_json(run / "split.json", split)
        log(f"{run}: {cfg.model} at {cfg.img_size}px, {precision}, {d.world_size} x {d.device}")

    def evaluate(model):
        logits, _ = infer_crops(model, val, pipe, d, precision, **infer_args, progress="validation")
        return clip_score(val["txtid"], val["label"], logits) if dfew else score(val["label"].to_numpy(), logits)

    def step(net, batch):
        images, labels, replaced = batch
        return net(pipe(images, train=True)), labels.to(d.device), len(labels), int(replaced.sum())

    if not cfg.predict_only:
        train = frames[(frames.split == "train") & frames.has_crop & (frames.label >= 0)].reset_index(drop=True)
        sampler = ClassBalancedSampler(train["label"].to_numpy(), cfg.max_per_class, cfg.seed, d.rank, d.world_size,
                                       len(classes))
        dataset = CropDataset(train, image_augmentation(cfg.augment, cfg.crop_size), cfg.seed, cfg.crop_size)
        drawn = torch.tensor(sampler.draw_counts, dtype=torch.float32)
        weights = (drawn.sum() / drawn.clamp(min=1)) / len(drawn) if cfg.class_weighted else None
        if d.main:
            log(f"train frames {len(train):,}; drawn per epoch (cap {sampler.max_per_class:,}): "
                + ", ".join(f"{n} {c}" for n, c in zip(sampler.draw_counts, classes)))
        crops = {s: int(((frames.split == s) & frames.has_crop & predicted).sum()) for s in ("train", "val", "test")}
        plan = Plan("images", len(sampler) * d.world_size, cfg.batch_size * d.world_size, cfg.epochs, len(val),
                    {s: n for s, n in crops.items() if n and not (dfew and s == "train")}, 2 if cfg.tta else 1, "crops")
        trainer = Trainer(model, cfg, run, d, precision, step, evaluate, weights, metric="UAR" if dfew else "macro-F1",
                          plan=plan)
        trainer.fit(loader_for(dataset, cfg, sampler), sampler)
    if not (run / "best.pt").exists():
        raise SystemExit(f"error: {run / 'best.pt'} not found: nothing to predict with")
    best = load_weights(model, run / "best.pt")
    model.to(d.device)
    results = {}
    for split in ("val", "test") if dfew else ("train", "val", "test"):
        part = frames[(frames.split == split) & predicted].reset_index(drop=True)
        if not len(part):
            if d.main:
                skip_split(run, split, source)
            continue
        preds = predict_crops(model, part, pipe, d, precision, **infer_args, tta=cfg.tta, progress=f"predict {split}")
        if d.main:
            save_preds(run / "preds" / f"{split}.npz", **preds)
        results[split] = preds
    if d.main and dfew:
        scored = {s: clip_score(r["txtid"], r["label"], r["logits"]) for s, r in results.items()}
        table(f"{run.name}: clip UAR / WAR (mean logits of 16 frames{', flip TTA' if cfg.tta else ''})",
              ["split", "clips", "UAR", "WAR"],
              [[s, v["clips"], v["uar"], v["war"]] for s, v in scored.items()])
        write_json(run / "metrics.json", {f"{s}_{k}": v[k] for s, v in scored.items() for k in ("uar", "war")}
                   | dict(fold=cfg.fold, best_epoch=best.get("epoch")))
    elif d.main:
        val_all = results["val"]
        scored = score(val_all["label"], val_all["logits"])
        metrics = dict(val_macro_f1=scored["macro_f1"], val_per_class_f1=dict(zip(EXPR_CLASSES, scored["per_class_f1"])),
                       val_macro_f1_crops_only=best.get("val_macro_f1"), best_epoch=best.get("epoch"))
        table(f"{run.name}: val F1, every frame", ["", *EXPR_CLASSES, "macro"],
              [["F1", *scored["per_class_f1"], scored["macro_f1"]]])
        write_json(run / "metrics.json", metrics)
        log(f"image branch val macro-F1 {scored['macro_f1']:.4f} -> {run}")
    return run


if __name__ == "__main__":
    cli(main)
