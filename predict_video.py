"""Run a trained ensemble (or one run) on your own videos: per-frame expression probabilities and labels.

Usage: python predict_video.py VIDEO [VIDEO ...] --ensemble ensembles/<name> [--out predictions]
       python predict_video.py VIDEO --run runs/fusion/mfm_seed0 [--head logits_fusion] [--device cuda]

For each video: crops the faces (crop_faces.py's detector, tracker and alignment, same options),
decodes the sound, runs every member of the ensemble (image, audio and fusion runs, rebuilt from
their config.json and best.pt) on every frame and applies ensemble.json exactly as
make_submission.py does (seed average, weights, smoothing, class biases). Writes into --out:
  <videoid>.csv   frame, time (s), has_face, the 8 class probabilities (the ensemble's, after
                  smoothing, summing to 1; the label is argmax(log p + bias)), label, label_name
  per_video/<videoid>.txt   the ABAW per-video file (header, one label per frame)
  <videoid>.png   the timeline: face crops, probabilities over time, the label band
  crops/ and data/   the crops and tables the models read (reused on a re-run)
Frames without a face take the nearest face's image output (as in training); the sound is heard
on every frame. Aff-Wild2 runs only (8 classes); DFEW clip models predict clips, not frames.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from utils.classes import EXPR_CLASSES
from utils.config import parse_config
from utils.console import WarningCounter, cli, log, table
from utils.evaluation.ensemble import Member, apply_spec, combine, smooth, softmax
from utils.evaluation.submission import write_per_video
from utils.evaluation.timeline import plot_timeline
from utils.evaluation.video import Runner, member_probs, pick_device, sample_rate_of, video_tables
from utils.files import DataError
from utils.readers.audio import load_frame_times
from utils.readers.faces import CropOptions, crop_video
from utils.runs import read_json
from utils.training.engine import pick_precision, setup_distributed

STRIP = 10   # face crops in the timeline's strip


@dataclass
class PredictConfig:
    videos: list[str] = field(default_factory=list, metadata={"help": "video files (also accepted first, "
                                                                       "without the flag)"})
    ensemble: str = field(default="", metadata={"help": "ensemble folder (or its ensemble.json)"})
    run: str = field(default="", metadata={"help": "or a single image, audio or fusion run"})
    head: str = field(default="logits", metadata={"help": "with --run: the output to use (a fusion run: logits "
                                                          "= its 3-head ensemble, logits_fusion, ...)"})
    out: str = field(default="predictions", metadata={"help": "folder for the CSV, txt and PNG files"})
    device: str = field(default="auto", metadata={"choices": ["auto", "cpu", "cuda"]})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "fp16", "bf16"]})
    batch_size: int = 64
    detect_size: int = field(default=640, metadata={"help": "see crop_faces.py"})
    min_score: float = field(default=0.9, metadata={"help": "see crop_faces.py"})
    sample_rate: int = field(default=0, metadata={"help": "rate to decode the sound at, Hz (default: the one the "
                                                          "audio runs' data folder meta.json names, else 16000); "
                                                          "a rate other than theirs is refused"})


def members_of(cfg: PredictConfig) -> tuple[list[Member], dict, str]:
    """The members, the spec apply_spec takes and a name, from --ensemble or --run."""
    if bool(cfg.ensemble) == bool(cfg.run):
        raise DataError("pass exactly one of --ensemble ensembles/<name> and --run RUN")
    if cfg.run:
        return [Member(Path(cfg.run).name, [cfg.run], cfg.head)], dict(weights=[1.0]), Path(cfg.run).name
    path = Path(cfg.ensemble)
    path = path if path.suffix == ".json" else path / "ensemble.json"
    if not path.is_file():
        raise DataError(f"{path}: ensemble.json not found (run ensemble.py first)")
    ens = read_json(path)
    return [Member(m["name"], m["runs"], m["head"]) for m in ens["members"]], ens, ens["name"]


def strip_of(frames: pd.DataFrame, time: np.ndarray) -> list:
    """(time, RGB crop or None) at STRIP evenly spaced frames, each the nearest frame with a face."""
    picks = np.linspace(0, len(frames) - 1, min(STRIP, len(frames))).round().astype(int)
    faces = np.flatnonzero(frames["has_crop"].to_numpy())
    out = []
    for i in picks:
        if len(faces) and abs(faces[np.abs(faces - i).argmin()] - i) <= max(2, len(frames) // (2 * STRIP)):
            j = faces[np.abs(faces - i).argmin()]
            out.append((float(time[j]), cv2.cvtColor(cv2.imread(frames["crop_path"].iloc[j]), cv2.COLOR_BGR2RGB)))
        else:
            out.append((float(time[i]), None))
    return out


def frame_times(video: pd.Series, n: int) -> np.ndarray:
    if video.get("frame_times"):
        times = load_frame_times(video["frame_times"])
        if len(times) >= n:
            return times[:n]
    fps = video["fps"] if np.isfinite(video["fps"]) and video["fps"] > 0 else 30.0
    return np.arange(n) / fps


def run(cfg: PredictConfig) -> list[Path]:
    if not cfg.videos:
        raise DataError("no video given: predict_video.py VIDEO [VIDEO ...] --ensemble ensembles/<name>")
    if cfg.sample_rate < 0:
        raise DataError(f"--sample-rate {cfg.sample_rate}: a rate in Hz, or 0 for the audio runs' own")
    members, spec, name = members_of(cfg)
    out = Path(cfg.out)
    warnings = WarningCounter()
    rate = sample_rate_of([r for m in members for r in m.runs], cfg.sample_rate, warnings)   # before the slow part
    device = pick_device(cfg.device)
    opt = CropOptions(device=device, detect_size=cfg.detect_size, min_score=cfg.min_score,
                      batch=64 if device == "cuda" else 16, progress=True)
    done, stems = [], {}
    for path in map(Path, cfg.videos):
        if stems.setdefault(path.stem, path) != path:
            raise DataError(f"{path}: same name as {stems[path.stem]}; outputs are named by the file name")
        info = crop_video(path.stem, path, out / "crops", opt)
        if info["error"]:
            warnings("unreadable", f"{path}: unreadable ({info['error']}); skipped")
        elif not info["frames_examined"]:   # "frames" counts the video's packets, decodable or not
            warnings("unreadable", f"{path}: no frame could be decoded; skipped")
        else:
            if not info["frames_with_face"]:
                warnings("no face", f"{path}: no face found; only the sound informs its predictions")
            done.append((path.stem, path, info["frames"]))
    if not done:
        raise DataError(f"none of the {len(cfg.videos)} videos could be read")
    frames, videos = video_tables(done, out / "crops", out / "data", rate, warnings)
    d = setup_distributed(device)
    runner = Runner(out / "data", frames, videos, d, pick_precision(d.device, cfg.precision), cfg.batch_size)
    probs = member_probs(runner, members, softmax)
    txtid = frames["txtid"].to_numpy()
    labels = apply_spec(probs, txtid, spec)   # exactly make_submission.py's labels
    p = combine(probs, spec["weights"])
    if spec.get("smoothing"):
        p = smooth(p, txtid, spec["smoothing"]["method"], int(spec["smoothing"]["window"]))
        p /= p.sum(axis=1, keepdims=True)   # a per-class median does not keep the sum; argmax(log p + b) unmoved
    write_per_video(out, txtid, frames["frame"].to_numpy(), labels)
    written, rows = [], []
    for videoid, idx in frames.groupby("txtid", sort=False).indices.items():
        part = frames.iloc[idx]
        time = frame_times(videos.set_index("videoid").loc[videoid], len(idx))
        csv = pd.DataFrame({"frame": part["frame"].to_numpy(), "time": time.round(4),
                            "has_face": part["has_crop"].to_numpy()}
                           | {c: p[idx, i].round(5) for i, c in enumerate(EXPR_CLASSES)}
                           | {"label": labels[idx], "label_name": np.asarray(EXPR_CLASSES)[labels[idx]]})
        tmp = out / f".{videoid}.csv.tmp"
        csv.to_csv(tmp, index=False)
        tmp.replace(out / f"{videoid}.csv")
        png = plot_timeline(out / f"{videoid}.png", f"{videoid}: {name}", time, p[idx], labels[idx],
                            part["has_crop"].to_numpy(), strip_of(part, time))
        written += [out / f"{videoid}.csv", png]
        counts = np.bincount(labels[idx], minlength=len(EXPR_CLASSES))
        rows.append([videoid, len(idx), f"{100 * part['has_crop'].mean():.1f}", EXPR_CLASSES[counts.argmax()],
                     *(f"{100 * c / len(idx):.0f}" for c in counts)])
    table(f"Predicted labels ({name}; % of frames)", ["video", "frames", "face %", "most", *EXPR_CLASSES], rows)
    if warnings.counts:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.summary().items()])
    for video in dict.fromkeys(frames["txtid"]):
        log(f"{video}: {out / (video + '.csv')}, {out / (video + '.png')}, {out / 'per_video' / (video + '.txt')}")
    return written


def main(argv=None) -> list[Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = 0
    while lead < len(argv) and not argv[lead].startswith("-"):
        lead += 1
    if lead:   # VIDEO [VIDEO ...] before the flags
        argv = ["--videos", *argv[:lead], *argv[lead:]]
    return run(parse_config(PredictConfig, argv, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    cli(main)
