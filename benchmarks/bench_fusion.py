"""Speed of the fusion stage: one training epoch of the Modal Fusion Module at the real train-set scale.

Usage: python benchmarks/bench_fusion.py [--device auto|cpu|cuda] [--precision auto|bf16] [--frames N] [--quick]

Random float16 features of the real shapes (image (N, 768), audio (N, 3, 768)) laid out like
the real Aff-Wild2 train videos (shared/fixtures/affwild2_stats: every train txtid with its real
length, so the image context near video edges is realistic), labels from each video's real class
counts and -1 frames, cut into segments of 30-300 frames. Then, through train_fusion.py's own
code path (FusionConfig defaults, ClassBalancedSampler with the median-class cap, DataLoader with
keep_batch, the engine's Trainer):
  1. context rows (utils.models.fusion.context_rows) for every frame: seconds,
  2. one training epoch of the class-balanced draw: seconds and samples/s,
  3. utils.evaluation.inference.predict_tokens over every frame: samples/s,
and peak memory (process RSS on CPU, allocated GPU memory on CUDA).
Target: one epoch in under 5 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_fusion import FusionConfig  # noqa: E402
from utils.evaluation.inference import predict_tokens  # noqa: E402
from utils.classes import NUM_EXPR_CLASSES  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.training.data import ClassBalancedSampler, keep_batch  # noqa: E402
from utils.training.engine import Trainer, pick_precision, setup_distributed  # noqa: E402
from utils.models.fusion import ModalFusionModule, TokenDataset, context_offsets, context_rows  # noqa: E402
from utils.runs import seed_everything  # noqa: E402

C = NUM_EXPR_CLASSES
IMAGE_DIM, AUDIO_DIM, AUDIO_TOKENS = 768, 768, 3   # Swin-T features; the audio branch's three windows
TARGET_S = 300.0
QUICK_FRAMES = 20_000


def video_labels(row, rng) -> np.ndarray:
    """One train txtid: its real class counts and -1 count, cut into segments of 30-300 frames."""
    pieces = []
    for value, count in zip(range(-1, C), [row.invalid_frames] + [getattr(row, f"class_{c}") for c in range(C)]):
        cuts = np.cumsum(rng.integers(30, 301, count // 30 + 1))
        pieces += [np.full(len(p), value, np.int8) for p in np.split(np.arange(count), cuts[cuts < count])]
    return np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])


def build(stats: Path, frames: int, rng) -> dict:
    """A split like preds/train.npz: every frame of the train txtids, -1 frames included
    (they are context rows), truncated to `frames` rows by taking whole videos in random order."""
    videos = pd.read_csv(stats / "train_val_videos.csv")
    videos = videos[videos.source_dir == "Train_Set"].sample(frac=1, random_state=0)
    txtids, labels, total = [], [], 0
    for row in videos.itertuples():
        if total >= frames:
            break
        y = video_labels(row, rng)[: frames - total]
        txtids.append(row.txtid)
        labels.append(y)
        total += len(y)
    order = np.argsort(txtids)   # (txtid, frame) order, as sort_rows leaves the predictions
    txtid = np.repeat(np.array(txtids)[order], [len(labels[i]) for i in order])
    frame = np.concatenate([np.arange(1, len(labels[i]) + 1, dtype=np.int32) for i in order])
    label = np.concatenate([labels[i] for i in order]).astype(np.int64)
    # Filled chunk by chunk so the float32 draw never holds a full-size copy.
    image = np.empty((total, IMAGE_DIM), np.float16)
    audio = np.empty((total, AUDIO_TOKENS, AUDIO_DIM), np.float16)
    for start in range(0, total, 65_536):
        stop = min(start + 65_536, total)
        image[start:stop] = rng.standard_normal((stop - start, IMAGE_DIM), np.float32)
        audio[start:stop] = rng.standard_normal((stop - start, AUDIO_TOKENS, AUDIO_DIM), np.float32)
    return dict(txtid=txtid, frame=frame, label=label, image=image, audio=audio, videos=len(txtids))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--frames", type=int, default=0, help="rows of the feature arrays (0: every real train frame)")
    parser.add_argument("--quick", action="store_true", help=f"--frames {QUICK_FRAMES:,}: a check in under a minute")
    parser.add_argument("--stats", default=str(ROOT.parent / "shared" / "fixtures" / "affwild2_stats"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="as train_fusion.py's: auto is fp32 on a CPU; bf16 uses AVX512-BF16/AMX where the CPU has it")
    args = parser.parse_args(argv)
    frames = QUICK_FRAMES if args.quick else args.frames or 10**9
    cfg = replace(FusionConfig(), epochs=1, device=args.device, seed=args.seed, precision=args.precision)
    d = setup_distributed(cfg.device)
    precision = pick_precision(d.device, cfg.precision)
    seed_everything(cfg.seed)
    load_before = os.getloadavg()[0]

    split, t_build = timed(lambda: build(Path(args.stats), frames, np.random.default_rng(cfg.seed)))
    n, labelled = len(split["label"]), int((split["label"] >= 0).sum())
    feature_gb = (split["image"].nbytes + split["audio"].nbytes) / 1e9
    log(f"features: {n:,} frames of {split['videos']} train txtids ({labelled:,} labelled), "
        f"{feature_gb:.2f} GB float16, built in {t_build:.0f}s; {d.device}, {precision}, "
        f"{torch.get_num_threads()} threads")

    offsets = context_offsets(cfg.image_context, cfg.image_stride)
    context, t_context = timed(lambda: context_rows(split["txtid"], split["frame"], offsets))
    # As train_fusion.main builds it: the labelled rows, the median-class cap, keep_batch.
    rows = np.flatnonzero(split["label"] >= 0)
    sampler = ClassBalancedSampler(split["label"][rows], cfg.max_per_class, cfg.seed, d.rank, d.world_size)
    loader = DataLoader(TokenDataset(split["image"], split["audio"], context, split["label"], rows),
                        batch_size=cfg.batch_size, sampler=sampler, collate_fn=keep_batch)
    model = ModalFusionModule(IMAGE_DIM, AUDIO_DIM, C, len(offsets), AUDIO_TOKENS, cfg.width, cfg.heads,
                              cfg.layers, dropout=cfg.dropout)

    def step(net, batch):   # train_fusion.main's step
        image, mask, audio, labels = (t.to(d.device, non_blocking=True) for t in batch)
        y = net(image, mask, audio)
        return [y[h] for h in ("fusion", "image", "audio")], labels, len(labels), 0

    def no_evaluation(model):   # validation is not what is timed here
        return dict(macro_f1=0.0, per_class_f1=[0.0] * C)

    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    with tempfile.TemporaryDirectory(prefix="bench_fusion_") as run:
        Trainer(model, cfg, Path(run), d, precision, step, no_evaluation).fit(loader, sampler)
        record = json.loads((Path(run) / "log.jsonl").read_text().splitlines()[-1])
    epoch_s, train_rate = record["seconds"], record["images_per_s"]

    everything = TokenDataset(split["image"], split["audio"], context, split["label"])
    _, t_infer = timed(lambda: predict_tokens(model, everything, d, precision, batch_size=cfg.batch_size * 4))
    if d.device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated(d.device) / 2**30:.2f} GiB GPU (allocated)"
    else:   # ru_maxrss is in KiB on Linux; it includes the feature arrays themselves
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS ({feature_gb:.2f} GB features)"
    met = epoch_s < TARGET_S
    table(f"bench_fusion: one epoch of the Modal Fusion Module (width {cfg.width}, {cfg.heads} heads, "
          f"{cfg.layers} layers, {len(offsets)}+{AUDIO_TOKENS} tokens, batch {cfg.batch_size})",
          ["what", "figure"], [
              ["device", f"{d.device} ({precision}, {torch.get_num_threads()} threads, torch {torch.__version__})"],
              ["frames (labelled)", f"{n:,} ({labelled:,}) over {split['videos']} txtids"],
              ["drawn per epoch (cap)", f"{len(sampler):,} ({sampler.max_per_class:,}) = {len(loader):,} steps"],
              ["context rows build", f"{t_context:.2f} s"],
              ["epoch (Trainer.fit, training steps)", f"{epoch_s:.1f} s"],
              ["train samples/s", f"{train_rate:,.0f}"],
              ["inference (predict_tokens, every frame)", f"{t_infer:.1f} s = {n / t_infer:,.0f} samples/s"],
              ["peak memory", memory],
              ["target: epoch < 5 min", f"{'met' if met else 'MISSED'} ({epoch_s / 60:.1f} min)"],
              ["load average (1 min) before / after", f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"],
          ])
    return dict(epoch_s=epoch_s, train_rate=train_rate, infer_rate=n / t_infer, context_s=t_context, met=met)


if __name__ == "__main__":
    main()
