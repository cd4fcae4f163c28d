"""Speed of the DFEW system: feature extraction per worker, and the temporal model's training.

Usage: python benchmarks/bench_dfew.py [--quick] [--work /tmp/benchdfew] [--device auto|cpu|cuda]

1. Feature extraction (extract_features.py through its own main()) on a synthetic DFEW tree of
   224 x 224 frames, the real image size: the paper's frozen ResNet-18 (random weights here:
   the hub is not reachable, and weights do not change the cost) on the 16 evaluation frames of
   each clip and on every frame, one decoding worker and one torch thread (one core: "per
   worker"), then torch's default threads; OpenPose JSON and the log-mel of the sound on one core.
   Clips/s and frames/s from each run's metrics.json.
2. The temporal model (train_fusion.py --dataset dfew, TemporalConfig defaults: width 128,
   2 layers, batch 32) on random features of the real shapes at the real scale: 11,697 clips
   of 16 frames (clip_224x224_16f) in 5 folds with DFEW's class mix, three streams (ResNet-18
   512, OpenPose 285, log-mel 64). One epoch of fold 1: training samples/s (the engine's
   log.jsonl) and the wall time of the whole fold (validation and test prediction included).
3. Fine-tuning the image generator on a fold (train_image.py --dataset dfew --fold 1): ResNet-18
   at 224 px on the tree of part 1, one epoch of a capped class-balanced draw (64 frames a
   class), batch 32, one decoding worker, torch's default threads: training images/s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import extract_features  # noqa: E402
import train_image  # noqa: E402
from utils.models import temporal  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.readers.dfew import prepare_dfew  # noqa: E402
from utils.runs import save_config, save_npz, write_json  # noqa: E402
from utils.synthetic.dfew import make_dfew  # noqa: E402

# DFEW's single-labelled clips per class (Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear).
DFEW_CLASS_COUNTS = np.array([2895, 2056, 2786, 2041, 1404, 146, 369])
STREAMS = (("resnet18", "image", 512), ("openpose", "keypoints", 285), ("logmel", "audio", 64))


def extraction(work: Path, n_clips: int, default_threads: int) -> list[list]:
    raw, data, runs = work / "raw", work / "data", work / "runs"
    if not (raw / "dfew_manifest.json").exists():
        make_dfew(raw, seed=0, n_clips=n_clips, size=224, openpose=1.0, jobs=2)
    if not (data / "clips.parquet").exists():
        prepare_dfew(raw, data, jobs=2)
    base = ["--data", str(data), "--runs", str(runs), "--overwrite"]
    image = ["--modality", "image", "--model", "resnet18", "--no-pretrained", "--batch-size", "32"]
    settings = [("resnet18 224 px, 16 eval frames/clip, 1 worker, 1 thread", 1, [*image, "--frames", "eval", "--workers", "1"]),
                ("resnet18 224 px, every frame, 1 worker, 1 thread", 1, [*image, "--workers", "1"]),
                (f"resnet18 224 px, 16 eval frames/clip, 1 worker, {default_threads} threads", default_threads,
                 [*image, "--frames", "eval", "--workers", "1"]),
                ("OpenPose JSON, every frame, 1 core", 1, ["--modality", "keypoints", "--openpose", str(raw / "openpose")]),
                ("log-mel of the sound, every frame, 1 core", 1, ["--modality", "audio"])]
    rows = []
    for label, threads, argv in settings:
        torch.set_num_threads(threads)
        run = extract_features.main([*base, *argv, "--name", "bench"])
        m = json.loads((run / "metrics.json").read_text())
        rows.append([label, f"{m['clips_per_s']:,.1f}", f"{m['frames'] / m['seconds']:,.0f}",
                     f"{m['frames'] / m['clips']:.1f}", f"{m['seconds']:.1f}"])
    torch.set_num_threads(default_threads)
    return rows


def fake_dataset(folder: Path, rng) -> None:
    """clips.parquet, folds.parquet and one feature run per stream, at DFEW's size and class mix."""
    labels = rng.permutation(np.repeat(np.arange(7), DFEW_CLASS_COUNTS))
    clip = np.array([f"{i + 1:05d}" for i in range(len(labels))])
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(dict(clip=clip, n_frames=16, label=labels)).to_parquet(folder / "clips.parquet")
    fold_of = np.empty(len(labels), np.int64)
    for c in range(7):   # stratified, as DFEW's folds are
        members = rng.permutation(np.flatnonzero(labels == c))
        fold_of[members] = np.arange(len(members)) % 5 + 1
    folds = [pd.DataFrame(dict(clip=clip, fold=f, split=np.where(fold_of == f, "test", "train"), label=labels))
             for f in range(1, 6)]
    pd.concat(folds, ignore_index=True).to_parquet(folder / "folds.parquet")
    n = len(labels) * 16
    for name, kind, dim in STREAMS:
        run = folder / "features" / name
        save_config(run, dict(modality=kind, name=name))
        save_npz(run / "features.npz", txtid=np.repeat(clip, 16), frame=np.tile(np.arange(1, 17, dtype=np.int32), len(clip)),
                 number=np.tile(np.arange(1, 17, dtype=np.int32), len(clip)), label=np.repeat(labels, 16).astype(np.int8),
                 mask=np.ones(n, bool), features=rng.standard_normal((n, dim), np.float32).astype(np.float16))
        write_json(run / "metrics.json", dict(modality=kind))


def temporal_training(work: Path, device: str, rng) -> list[list]:
    folder = work / "fake"
    if not (folder / "clips.parquet").exists():
        fake_dataset(folder, rng)
    clips, folds = pd.read_parquet(folder / "clips.parquet"), pd.read_parquet(folder / "folds.parquet")
    cfg = replace(temporal.TemporalConfig(), data=str(folder), runs=str(work / "runs"), epochs=1, fold=1,
                  device=device, overwrite=True, features=[str(folder / "features" / s[0]) for s in STREAMS])
    rows = []
    for label, setting in (("image only (1 stream)", replace(cfg, modalities=["image"])),
                           ("image + keypoints + audio (3 streams)", cfg)):
        start = time.perf_counter()
        metrics = temporal.train(replace(setting, name=f"bench-{len(setting.modalities) or 3}"), clips, folds)
        wall = time.perf_counter() - start
        fold = metrics["folds"][0]
        record = json.loads((work / "runs" / "temporal" / f"bench-{len(setting.modalities) or 3}_seed0" / "fold1"
                             / "log.jsonl").read_text().splitlines()[-1])
        rows.append([label, f"{fold['n_train']:,}", f"{record['images_per_s']:,.0f}", f"{record['seconds']:.1f}",
                     f"{wall:.1f}"])
    return rows


def fine_tuning(work: Path, device: str, quick: bool) -> list[list]:
    data = work / "extract" / "data"   # part 1's tree of 224 px frames
    run = train_image.main(["--dataset", "dfew", "--data", str(data), "--runs", str(work / "runs"), "--fold", "1",
                            "--model", "resnet18", "--no-pretrained", "--epochs", "1", "--max-per-class", "64",
                            "--batch-size", "32", "--accum-steps", "1", "--workers", "1", "--device", device,
                            # the quick tree has one or two clips a class: half of them for validation
                            "--val-share", "0.5" if quick else "0.2", "--name", "bench", "--overwrite"])
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    precision = json.loads((run / "config.json").read_text())["config"]["precision"]
    drawn = sum(record["drawn_per_class"])
    return [[f"resnet18 224 px, batch 32, {precision}", f"{drawn:,}", f"{record['images_per_s']:,.1f}",
             f"{record['seconds']:.1f}"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 clips for the extraction part")
    parser.add_argument("--work", default="/tmp/benchdfew")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    work = Path(args.work) / ("quick" if args.quick else "full")
    default_threads = torch.get_num_threads()
    log(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}")
    table("1. DFEW feature extraction (extract_features.py)",
          ["generator", "clips/s", "frames/s", "frames/clip", "seconds"],
          extraction(work / "extract", 12 if args.quick else 40, default_threads))
    table("2. Temporal model, one epoch of fold 1 (11,697 clips x 16 frames, random features)",
          ["streams", "train clips", "train samples/s", "epoch seconds", "fold wall seconds"],
          temporal_training(work, args.device, np.random.default_rng(0)))
    table("3. Fine-tuning the image generator on fold 1 (train_image.py --dataset dfew), one epoch",
          ["model", "images drawn", "train images/s", "epoch seconds"], fine_tuning(work, args.device, args.quick))
    log(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
