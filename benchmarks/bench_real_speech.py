"""The audio branch on real emotional speech: RAVDESS actors in the Aff-Wild2 layout (../shared/real/).

Usage: python benchmarks/bench_real_speech.py [--configs demo,strong] [--work /tmp/bench_real_speech]
       python benchmarks/bench_real_speech.py --val 'ravdess-actor0[1-4]' --work /tmp/rs_fold1   # other val speakers
       python benchmarks/bench_real_speech.py --configs speech --speech-backbone wavlm_base_plus --pretrained-path F

Prepares ../shared/real/ravdess_speech (prepare_data.py --dataset affwild2: no crops, no test
split), trains train_audio.py once per configuration with --seed and scores the speaker-disjoint
validation actors (13-16; --val PATTERN moves the label files whose names match it to the
validation split and every other one to train, in a tree of links under --work) from the run's
preds/val.npz:
  macro-F1 and per-class F1 over every labelled frame; utterance accuracy (an utterance is a run
  of one label between -1 gaps; its prediction is the majority vote of its frames' argmax);
  chance (uniform random guessing: class c's expected F1 is 2 p_c / 8 / (p_c + 1/8), p_c its
  val share; 1/8 of utterances) and the majority class of train (every frame predicted as it).
Configurations: demo (the --preset demo), strong (the stronger CPU configuration, STRONG below:
the demo's network, more epochs and windows, and --norm-per-video, each video's per-mel level
removed), strong-raw (strong without --norm-per-video: the before figure), demo-norm (the demo
with --norm-per-video),
speech (a speech encoder's cached states and the small head; --speech-backbone tiny_random, the
default, has random weights and shows the path runs, not that it learns).
Writes <work>/bench_real_speech.json.
"""
from __future__ import annotations

import argparse
import fnmatch
from dataclasses import asdict
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_audio  # noqa: E402
from utils.classes import EXPR_CLASSES  # noqa: E402
from utils.console import log, table  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.runs import read_json, write_json  # noqa: E402

# A bigger draw and more epochs of the demo's small network, each video's level removed (one
# RAVDESS video is one speaker): +0.016 to +0.036 val macro-F1 on all four speaker splits tried,
# while it cost the 5-epoch demo 0.004 to 0.065 (BENCHMARKS.md). About 5 CPU-minutes; 16 epochs
# overfit (best epoch 5, +0.005 on one split).
STRONG_RAW = ["--preset", "demo", "--epochs", "10", "--max-per-class", "1200", "--lr", "3e-3", "--predict-stride", "8"]
STRONG = STRONG_RAW + ["--norm-per-video"]
SPEECH = ["--epochs", "8", "--max-per-class", "1500", "--lr", "1e-3", "--weight-decay", "0.05", "--workers", "0",
          "--warmup-epochs", "0.5", "--patience", "0", "--predict-stride", "4"]


def utterances(txtid: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Utterance id (int, -1 for unlabelled frames) of each frame: a new utterance starts where the
    txtid or the label changes; frames labelled -1 belong to none. Rows in (txtid, frame) order."""
    start = np.r_[True, (txtid[1:] != txtid[:-1]) | (label[1:] != label[:-1])]
    ids = np.cumsum(start) - 1
    return np.where(label >= 0, ids, -1)


def utterance_accuracy(txtid, label, pred) -> tuple[float, int, np.ndarray]:
    """(accuracy of the majority vote per utterance, number of utterances, their labels)."""
    utt = utterances(np.asarray(txtid), np.asarray(label))
    ok = utt >= 0
    ids, inverse = np.unique(utt[ok], return_inverse=True)
    votes = np.zeros((len(ids), len(EXPR_CLASSES)), np.int64)
    np.add.at(votes, (inverse, pred[ok]), 1)
    truth = np.zeros(len(ids), np.int64)
    truth[inverse] = label[ok]
    return float((votes.argmax(1) == truth).mean()), len(ids), truth


def score_run(run: Path, train_majority: int) -> dict:
    p = np.load(run / "preds" / "val.npz", allow_pickle=False)
    ok = p["label"] >= 0
    label, pred = p["label"][ok].astype(np.int64), p["logits"][ok].argmax(1)
    classes = np.arange(len(EXPR_CLASSES))
    per_class = f1_score(label, pred, labels=classes, average=None, zero_division=0)
    acc, n_utt, truth = utterance_accuracy(p["txtid"], p["label"].astype(np.int64), p["logits"].argmax(1))
    share = np.bincount(label, minlength=len(classes)) / len(label)
    k = 1 / len(classes)
    chance = float(np.mean(np.where(share > 0, 2 * share * k / (share + k), 0)))
    majority = f1_score(label, np.full_like(label, train_majority), labels=classes, average="macro", zero_division=0)
    return dict(val_macro_f1=float(per_class.mean()), per_class_f1=dict(zip(EXPR_CLASSES, per_class.round(4).tolist())),
                utterance_accuracy=acc, utterances=n_utt, frames=int(ok.sum()), chance_macro_f1=chance,
                majority_macro_f1=float(majority), chance_utterance=k,
                majority_utterance=float((truth == train_majority).mean()))


def resplit(real: Path, pattern: str, out: Path) -> Path:
    """A tree of links to `real` whose Validation_Set holds the label files matching `pattern`
    (fnmatch on the name without .txt; several patterns separated by commas) and whose Train_Set
    holds the others; SystemExit if the patterns match none or all of them."""
    labels = sorted((real / "annotations" / "EXPR_Recognition_Challenge").glob("*_Set/*.txt"))
    val = [f for f in labels if any(fnmatch.fnmatch(f.stem, one) for one in pattern.split(","))]
    if not val or len(val) == len(labels):
        raise SystemExit(f"error: --val {pattern!r} matches {len(val)} of the {len(labels)} label files of {real}")
    for split in ("Train_Set", "Validation_Set"):
        folder = out / "annotations" / "EXPR_Recognition_Challenge" / split
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    for f in labels:
        split = "Validation_Set" if f in val else "Train_Set"
        (out / "annotations" / "EXPR_Recognition_Challenge" / split / f.name).symlink_to(f.resolve())
    for entry in real.iterdir():
        if entry.name != "annotations" and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry.resolve())
    return out


def stale(runs: Path, name: str, seed: int, argv: list[str]) -> bool:
    """Whether runs/audio/<name>_seed<k> exists with other settings than `argv` gives (an earlier
    version of the configuration): it is trained again rather than scored as if it were this one."""
    saved = runs / "audio" / f"{name}_seed{seed}" / "config.json"
    if not saved.exists():
        return False
    wanted = asdict(parse_config(train_audio.AudioConfig, argv, presets=train_audio.PRESETS))
    had = read_json(saved)["config"]
    # where the run lives, how it ran, and settings newer than the run (absent from it) do not count
    ignore = {"data", "runs", "overwrite", "predict_only", "precision", "device", "workers", "jobs"}
    return any(had[k] != v for k, v in wanted.items() if k in had and k not in ignore and
               not (k == "speech_layer" and wanted["backbone"] == "logmel"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "real" / "ravdess_speech"))
    ap.add_argument("--work", default="/tmp/bench_real_speech")
    ap.add_argument("--configs", default="demo,strong")
    ap.add_argument("--val", default="", help="fnmatch pattern(s), comma-separated, of the val videos "
                                              "(default: the tree's own split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speech-backbone", default="tiny_random")
    ap.add_argument("--pretrained-path", default="")
    args = ap.parse_args(argv)
    work, real = Path(args.work), Path(args.real)
    if not real.is_dir():
        raise SystemExit(f"error: {real} not found (the shared real-media tree; see ../shared/real/README.md)")
    if args.val:
        real = resplit(real, args.val, work / "tree")
    data = work / "data"
    if not (data / "frames.parquet").exists():
        subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "affwild2", "--root", str(real),
                        "--out", str(data), "--jobs", "2"], check=True)
    import pandas as pd
    frames = pd.read_parquet(data / "frames.parquet", columns=["videoid", "split", "label"])
    val_videos = sorted(frames.videoid[frames.split == "val"].unique())
    frames_val = pd.read_parquet(data / "frames.parquet", columns=["txtid", "split"]).query("split == 'val'")
    wanted = sorted(f.stem for f in (real / "annotations" / "EXPR_Recognition_Challenge" / "Validation_Set").glob("*.txt"))
    if sorted(frames_val.txtid.unique()) != wanted:
        raise SystemExit(f"error: {data} was prepared with another validation split ({', '.join(val_videos)}); "
                         f"give this split its own --work")
    train_labels = frames.label[(frames.split == "train") & (frames.label >= 0)].to_numpy()
    train_majority = int(np.bincount(train_labels, minlength=len(EXPR_CLASSES)).argmax())
    speech = ["--backbone", args.speech_backbone] + (["--pretrained-path", args.pretrained_path]
                                                      if args.pretrained_path else []) + SPEECH
    known = {"demo": ["--preset", "demo"], "strong": STRONG, "strong-raw": STRONG_RAW, "speech": speech,
             "demo-norm": ["--preset", "demo", "--norm-per-video"]}
    unknown = [name for name in args.configs.split(",") if name not in known]
    if unknown:
        raise SystemExit(f"error: --configs {','.join(unknown)}: unknown; one of {','.join(known)}")
    results = {}
    for name in args.configs.split(","):
        extra = known[name]
        argv = ["--data", str(data), "--runs", str(work / "runs"), "--name", name, "--seed", str(args.seed), *extra]
        start = time.perf_counter()
        run = train_audio.main(argv + (["--overwrite"] if stale(work / "runs", name, args.seed, argv) else []))
        seconds = time.perf_counter() - start
        # a run finished earlier is only scored: its time is not this one's
        seconds = round(seconds, 1) if seconds > 30 else None
        results[name] = dict(args=extra, seconds=seconds) | score_run(run, train_majority)
    rows = [[name, r["val_macro_f1"], *r["per_class_f1"].values(), r["utterance_accuracy"],
             r["seconds"] / 60 if r["seconds"] else "(earlier)"] for name, r in results.items()]
    r = next(iter(results.values()))
    rows += [["chance", r["chance_macro_f1"], *[""] * len(EXPR_CLASSES), r["chance_utterance"], ""],
             [f"majority ({EXPR_CLASSES[train_majority]})", r["majority_macro_f1"], *[""] * len(EXPR_CLASSES),
              r["majority_utterance"], ""]]
    table(f"real speech, val videos {', '.join(val_videos)} ({r['frames']:,} labelled frames, "
          f"{r['utterances']} utterances), seed {args.seed}",
          ["", "macro-F1", *EXPR_CLASSES, "utt. acc", "min"], rows)
    write_json(work / "bench_real_speech.json", dict(seed=args.seed, train_majority=EXPR_CLASSES[train_majority],
                                                     val_videos=val_videos, results=results))
    log(f"wrote {work / 'bench_real_speech.json'}")


if __name__ == "__main__":
    main()
