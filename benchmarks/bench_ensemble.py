"""Benchmark ensemble.py and make_submission.py at the real Aff-Wild2 scale.

Usage: python benchmarks/bench_ensemble.py [--stats ../shared/fixtures/affwild2_stats] [--work bench_out/ensemble] [--keep]

Builds fixtures from the real per-video counts (shared/fixtures/affwild2_stats): the 70
validation videos with their real lengths, class counts and -1 frames (453,535 frames,
284,230 labelled) cut into label segments, the 228 test txtids with container frame count + 1
frames each (about one million) and an organisers' template; three members whose logits
mix the true label, noise that drifts slowly over time and frame noise. Then it times
  1. ensemble.py with weights, smoothing and biases (and the split-half honest figure),
  2. make_submission.py --format both: apply, write, validate, zip,
  3. make_submission.py --split val: write, read back, score.
Targets on a 2-core CPU: 1 under 60 s, 2 under 30 s.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ensemble  # noqa: E402
import make_submission  # noqa: E402
from utils.readers.affwild2 import videoid_of  # noqa: E402
from utils.classes import EXPR_TEMPLATE_HEADER, NUM_EXPR_CLASSES  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.evaluation.preds import save_preds  # noqa: E402
from utils.runs import read_json, write_json  # noqa: E402

C = NUM_EXPR_CLASSES
MEMBERS = (("image", "swin", 1.6), ("audio", "ast", 1.0), ("fusion", "mfm", 1.8))  # label strength


@dataclass
class BenchConfig:
    stats: str = field(default=str(ROOT.parent / "shared" / "fixtures" / "affwild2_stats"),
                       metadata={"help": "folder of the Aff-Wild2 count tables"})
    work: str = field(default=str(ROOT / "bench_out" / "ensemble"), metadata={"help": "scratch folder (emptied)"})
    seed: int = 0
    keep: bool = field(default=False, metadata={"help": "keep the scratch folder (about 1 GB)"})


def val_labels(videos: pd.DataFrame, rng) -> tuple[list[str], np.ndarray]:
    """Per video: its real class counts and -1 count, cut into segments of 30-300 frames."""
    txtids, labels = [], []
    for row in videos.itertuples():
        counts = [row.invalid_frames] + [getattr(row, f"class_{c}") for c in range(C)]
        pieces = []
        for value, count in zip(range(-1, C), counts):
            cuts = np.sort(rng.integers(0, count, max(count // 150, 0))) if count else []
            pieces += [np.full(len(p), value, np.int8) for p in np.split(np.arange(count), cuts) if len(p)]
        order = rng.permutation(len(pieces))
        labels.append(np.concatenate([pieces[i] for i in order]))
        txtids.append(row.txtid)
    return txtids, labels


def hidden_test_labels(counts: np.ndarray, mix: np.ndarray, rng) -> np.ndarray:
    """Hidden test labels: segments of 30-300 frames drawn from the val class mix."""
    total = int(counts.sum())
    lengths = rng.integers(30, 301, total // 30 + 1)
    return np.repeat(rng.choice(C, len(lengths), p=mix), lengths)[:total]


def member_logits(truth: np.ndarray, strength: float, rng) -> np.ndarray:
    """The true class lifted by `strength`, plus errors that persist for seconds (what
    smoothing cannot remove) and frame noise (what it can)."""
    onehot = np.zeros((len(truth), C), np.float32)
    onehot[np.arange(len(truth)), truth] = strength
    drift = ndimage.uniform_filter1d(rng.normal(0, 12, (len(truth), C)).astype(np.float32), 61, axis=0)
    return onehot + drift + rng.normal(0, 2.0, (len(truth), C)).astype(np.float32)


def build(stats: Path, work: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    tv = pd.read_csv(stats / "train_val_videos.csv")
    val = tv[tv.source_dir == "Validation_Set"].sort_values("txtid")
    test = pd.read_csv(stats / "test_videos.csv").merge(pd.read_csv(stats / "test_video_meta.csv"), on="videoid")
    data = work / "data"
    data.mkdir(parents=True)

    txtids, labels = val_labels(val, rng)
    val_frames = pd.DataFrame({"split": "val", "txtid": np.repeat(txtids, [len(y) for y in labels]),
                               "frame": np.concatenate([np.arange(1, len(y) + 1) for y in labels]),
                               "label": np.concatenate(labels), "template_row": -1})
    # The organisers' template, in their order (the csv's); frames 1..n_frames + 1 each.
    counts = (test.n_frames + 1).to_numpy()
    locations = [f"{t}/{f:05d}.jpg," for t, n in zip(test.txtid, counts) for f in range(1, n + 1)]
    (data / "EXPR_test_set_example.txt").write_text(EXPR_TEMPLATE_HEADER + "\n" + "\n".join(locations) + "\n")
    (data / "EXPR_test_set_release.txt").write_text("\n".join(test.txtid) + "\n")
    test_frames = pd.DataFrame({"split": "test", "txtid": np.repeat(test.txtid.to_numpy(), counts),
                                "frame": np.concatenate([np.arange(1, n + 1) for n in counts]), "label": -1,
                                "template_row": np.arange(counts.sum())})
    frames = pd.concat([test_frames, val_frames], ignore_index=True)
    frames["videoid"] = frames.txtid.map(videoid_of)
    frames["has_crop"] = rng.random(len(frames)) > 0.1
    frames["crop_path"] = ""
    frames = frames.astype({"frame": np.int32, "label": np.int8, "template_row": np.int64})
    frames = frames.sort_values(["split", "txtid", "frame"], kind="stable").reset_index(drop=True)
    frames.to_parquet(data / "frames.parquet", index=False)
    write_json(data / "meta.json", {"dataset": "affwild2", "root": str(work),
                                    "template": str(data / "EXPR_test_set_example.txt"),
                                    "release_list": str(data / "EXPR_test_set_release.txt")})

    mix = np.bincount(val_frames.label[val_frames.label >= 0], minlength=C) / (val_frames.label >= 0).sum()
    truth = {"val": None, "test": hidden_test_labels(counts, mix, rng)}
    for branch, name, strength in MEMBERS:
        run = work / "runs" / branch / f"{name}_seed0"
        for split in ("val", "test"):
            f = frames[frames.split == split]
            y = f.label.to_numpy()
            truth_of = truth[split] if split == "test" else np.where(y >= 0, y, rng.integers(0, C, len(y)))
            save_preds(run / "preds" / f"{split}.npz", txtid=f.txtid.to_numpy(), frame=f.frame.to_numpy(),
                       label=y, has_crop=f.has_crop.to_numpy(), logits=member_logits(truth_of, strength, rng))
        write_json(run / "config.json", {"config": {"data": str(data), "seed": 0}, "environment": {}})
        write_json(run / "metrics.json", {})
    log(f"fixtures: {len(val_frames):,} val frames ({int((val_frames.label >= 0).sum()):,} labelled) over "
        f"{val.txtid.nunique()} videos, {len(test_frames):,} test frames over {len(test)} txtids, "
        f"{len(MEMBERS)} members")
    return data


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    work = Path(cfg.work)
    if work.exists():
        shutil.rmtree(work)
    _, t_build = timed(lambda: build(Path(cfg.stats), work, cfg.seed))
    runs = str(work / "runs" / "*" / "*")
    ens, t_ens = timed(lambda: ensemble.main(["--runs", runs, "--name", "bench", "--out-dir", str(work / "ensembles")]))
    spec = read_json(ens / "ensemble.json")
    zip_path, t_sub = timed(lambda: make_submission.main(["--ensemble", str(ens), "--format", "both",
                                                          "--out", str(work / "submissions" / "bench.zip")]))
    _, t_val = timed(lambda: make_submission.main(["--ensemble", str(ens), "--split", "val",
                                                   "--out", str(work / "submissions" / "bench.zip")]))
    v = spec["val"]
    smoothing = spec["smoothing"]
    table("bench_ensemble (wall-clock seconds)", ["step", "seconds", "target", "result"], [
        ["build fixtures", f"{t_build:.1f}", "", ""],
        ["ensemble.py (3 members, all options)", f"{t_ens:.1f}", "< 60",
         f"val F1 {100 * v['macro_f1']:.2f} (honest {100 * v['honest']['macro_f1']:.2f}), weights "
         f"{[round(w, 2) for w in spec['weights']]}, smoothing "
         f"{smoothing['method'] + ' ' + str(smoothing['window']) if smoothing else 'none'}"],
        ["make_submission.py --format both", f"{t_sub:.1f}", "< 30",
         f"{zip_path.stat().st_size / 1e6:.1f} MB zip"],
        ["make_submission.py --split val", f"{t_val:.1f}", "", "score read back equal"],
    ])
    if not cfg.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
