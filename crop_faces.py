"""Detect, track and align the faces of raw videos into the Aff-Wild2 cropped_aligned layout.

Usage: python crop_faces.py --videos DIR|FILE|LIST.txt [...] --out ROOT [--size 112] [--jobs N]
                            [--device auto|cpu|cuda] [--two-people] [--every K] [--force]

Writes (utils/readers/faces.py says how):
  ROOT/cropped_aligned/<videoid>/<00001>.jpg   the main person's aligned face, frame numbers 1-based;
                   frames without that face have no file (as in Aff-Wild2). --two-people: the two
                   main tracks as <videoid>_left/ and <videoid>_right/
  ROOT/faces/<videoid>.parquet   every detection: frame, box, score, 5 landmarks, track, txtid
  ROOT/faces/<videoid>.json      the video's summary; a video that has one is skipped (resumable)
  ROOT/faces_summary.csv         per video: frames, frames with a face, tracks, crops, error
A video with no face, or one PyAV cannot read, is counted and named in the warnings; never a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed

from utils.config import parse_config
from utils.console import WarningCounter, cli, log, table, track
from utils.files import VIDEO_EXTENSIONS, DataError, is_video, read_lines, walk
from utils.readers.faces import CropOptions, crop_video


@dataclass
class CropConfig:
    videos: list[str] = field(default_factory=list, metadata={
        "help": "video files, folders (walked recursively) or .txt lists of video paths"})
    out: str = field(default="", metadata={"help": "root of the crop layout (cropped_aligned/, faces/)"})
    size: int = field(default=112, metadata={"help": "crop side, pixels (Aff-Wild2: 112)"})
    jobs: int = field(default=1, metadata={"help": "videos processed in parallel (CPU: one core each)"})
    device: str = field(default="auto", metadata={"choices": ["auto", "cpu", "cuda"],
                                                  "help": "auto: cuda when there is one"})
    batch: int = field(default=16, metadata={"help": "frames per detector call (64 on a GPU is typical)"})
    detect_size: int = field(default=640, metadata={"help": "frames are shrunk to this long side for detection "
                                                            "(0: full size); crops are cut at full size"})
    min_score: float = field(default=0.9, metadata={"help": "MTCNN face probability to keep a detection"})
    min_face: int = field(default=20, metadata={"help": "smallest face the detector looks for, pixels "
                                                        "of the shrunk frame"})
    max_gap: float = field(default=2.0, metadata={"help": "seconds a track survives without its face"})
    two_people: bool = field(default=False, metadata={"help": "write the two main tracks as _left and _right"})
    every: int = field(default=1, metadata={"help": "detect every k-th frame only (a quick look)"})
    force: bool = field(default=False, metadata={"help": "redo videos already done"})


def list_videos(sources: list[str]) -> list[tuple[str, Path]]:
    """(videoid, path) of every video named by sources: a file, a folder (walked) or a .txt list
    (one path per line, relative to the list's folder). Raises DataError on a missing source or
    two videos with the same videoid (file stem)."""
    paths: list[Path] = []
    for source in sources:
        p = Path(source)
        if p.is_dir():
            paths += [Path(d) / f for d, _, files in walk(p) for f in files if is_video(f)]
        elif p.suffix.lower() == ".txt" and p.is_file():
            paths += [p.parent / line.strip() for line in read_lines(p) if line.strip() and not line.startswith("#")]
        elif p.is_file() or p.suffix.lower() in VIDEO_EXTENSIONS:
            paths.append(p)   # a missing listed video is reported per video, not fatal for the rest
        else:
            raise DataError(f"{p}: no such video, folder or list")
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen and seen[p.stem] != p:
            raise DataError(f"{p}: same videoid '{p.stem}' as {seen[p.stem]}; crop folders are named by videoid")
        seen[p.stem] = p
    return sorted(seen.items())


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _job(videoid, path, root, opt, threads):
    import torch
    if threads:
        torch.set_num_threads(threads)
    return crop_video(videoid, path, root, opt)


def run(cfg: CropConfig) -> pd.DataFrame:
    if not cfg.videos or not cfg.out:
        raise DataError("pass --videos (files, folders or lists) and --out ROOT")
    videos = list_videos(cfg.videos)
    if not videos:
        raise DataError(f"{', '.join(cfg.videos)}: no video ({', '.join(VIDEO_EXTENSIONS)})")
    root = Path(cfg.out)
    opt = CropOptions(size=cfg.size, device=resolve_device(cfg.device), detect_size=cfg.detect_size,
                      min_score=cfg.min_score, min_face=cfg.min_face, max_gap_seconds=cfg.max_gap,
                      batch=cfg.batch, every=max(1, cfg.every), two_people=cfg.two_people, force=cfg.force)
    jobs = 1 if opt.device == "cuda" else max(1, cfg.jobs)   # one GPU: batches, not processes
    opt.progress = jobs == 1
    log(f"{len(videos)} videos -> {root}/cropped_aligned ({opt.size}x{opt.size}, MTCNN on {opt.device}, "
        f"{jobs} job(s))")
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(_job)(v, p, root, opt, 1 if jobs > 1 else 0) for v, p in videos)
    warnings, infos = WarningCounter(), []
    for info in track(results, total=len(videos), description="cropping faces", unit="videos"):
        infos.append(info)
        if info.get("corrupt_packets"):
            warnings("corrupt video", f"{info['path']}: {info['corrupt_packets']} corrupt video packets skipped")
        if info["error"]:
            warnings("unreadable", f"{info['path']}: unreadable ({info['error']}); no crops")
        elif not info["frames_with_face"]:
            warnings("no face", f"{info['path']}: no face in {info['frames_examined']} frames examined; no crops")
        elif cfg.two_people and len(info["txtids"]) < 2:
            warnings("one person", f"{info['path']}: --two-people but a single track; written as _left")
    summary = pd.DataFrame([{k: i.get(k, 0) for k in ("videoid", "frames", "frames_examined", "frames_with_face",
                                                       "tracks", "crops", "error")} for i in infos])
    summary = summary.sort_values("videoid", ignore_index=True)
    summary["face_share"] = summary.frames_with_face / summary.frames_examined.clip(lower=1)
    tmp = root / "faces_summary.csv.tmp"
    summary.to_csv(tmp, index=False)
    tmp.replace(root / "faces_summary.csv")
    rows = [[r.videoid, r.frames, r.frames_with_face, f"{100 * r.face_share:.1f}", r.tracks, r.crops,
             r.error or ""] for r in summary.itertuples()]
    table("Faces per video", ["video", "frames", "with a face", "%", "tracks", "crops", "error"], rows)
    if warnings.counts:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.summary().items()])
    skipped = sum(bool(i.get("skipped")) for i in infos)
    log(f"wrote {int(summary.crops.sum()):,} crops of {len(summary)} videos under {root}/cropped_aligned"
        + (f" ({skipped} done before, skipped)" if skipped else "") + f"; summary {root}/faces_summary.csv")
    return summary


def main(argv=None) -> pd.DataFrame:
    return run(parse_config(CropConfig, argv, description=__doc__.split("\n")[0]))


if __name__ == "__main__":
    cli(main)
