"""Index a dataset tree into the tables every stage reads, and decode each video's audio once.

Usage: python prepare_data.py --dataset affwild2 --root /data/affwild2 --out data/affwild2 [--jobs 8]
       python prepare_data.py --dataset dfew --root /data/DFEW --out data/dfew   (see utils/readers/dfew.py)
       python prepare_data.py --dataset clips --root CLIPS --labels ravdess|cremad|labels.csv --crops ROOT
              (labelled clip folders, crops from crop_faces.py --out ROOT: see utils/readers/clips.py)

Writes (DESIGN.md section 4):
  frames.parquet   one row per frame to train on or predict: split, txtid, videoid, frame
                   (1-based), label (-1..7), has_crop, crop_path, template_row
  videos.parquet   videoid, path, fps, n_frames, duration, has_audio, audio_path, ...
  audio/<videoid>.npy   mono float32 at --sample-rate, sample i at time i/rate of the video
  spec/nfft<n>_hop<h>_mels<m>/<videoid>.npy   its log-mel spectrogram, float16 (mels, columns) in dB;
                   column j is centred at j*hop/rate seconds (spec.json says so)
  meta.json        root, template, release list, counts per split, warnings
Train/val frames come from the label files, test frames from the organisers' template, or
(without one) the container's frame count + 1. A re-run reuses decoded audio and spectrograms; --force redoes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from utils.readers import affwild2

from utils.readers.audio import ensure_spectrograms
from utils.readers.clips import prepare_clips
from utils.readers.dfew import prepare_dfew
from utils.classes import EXPR_CLASSES
from utils.config import parse_config
from utils.console import WarningCounter, cli, log, table, track
from utils.files import DataError, IMAGE_EXTENSIONS
from utils.readers.media import prepare_media, report_media
from utils.runs import save_parquet, write_json


@dataclass
class PrepareConfig:
    root: str = field(default="", metadata={"help": "the dataset as distributed (walked recursively)"})
    out: str = field(default="data/affwild2", metadata={"help": "folder for the tables and audio"})
    dataset: str = field(default="affwild2", metadata={"choices": ["affwild2", "dfew", "clips"]})
    labels: str = field(default="", metadata={"help": "clips: ravdess, cremad (labels from the file names) or a CSV "
                                                      "of file,label[,speaker]"})
    crops: str = field(default="", metadata={"help": "clips: crop_faces.py's --out (default: --root)"})
    folds: int = field(default=5, metadata={"help": "clips: speaker-disjoint folds (at most one per speaker)"})
    val_fold: int = field(default=1, metadata={"help": "clips: the fold whose clips are the val split"})
    dfew_frames: str = field(default="auto", metadata={"help": "DFEW frame folder: auto, or its name (clip_224x224, "
                                                                 "clip_224x224_16f, jpg_256, ...)"})
    export_annotations: str = field(default="", metadata={"help": "DFEW: also write the folds as DFER-CLIP and "
                                                                  "MAE-DFER annotation lists into this folder"})
    sample_rate: int = field(default=16000, metadata={"help": "rate of the decoded audio, Hz"})
    n_fft: int = field(default=2048, metadata={"help": "log-mel spectrogram window, samples"})
    hop: int = field(default=1024, metadata={"help": "log-mel spectrogram hop, samples"})
    n_mels: int = field(default=128, metadata={"help": "log-mel spectrogram bands"})
    jobs: int = field(default=2, metadata={"help": "videos decoded in parallel"})
    force: bool = field(default=False, metadata={"help": "decode audio again even if cached"})


def test_frames(layout, release: list[str], template: pd.DataFrame | None, videos: dict,
                warnings) -> pd.DataFrame:
    """The test frames to predict: the template's rows, or container frame count + 1 per txtid."""
    if template is not None:
        missing = sorted(set(release) - set(template.txtid))
        if missing:
            warnings("release", f"{layout.release_list}: {len(missing)} listed txtids are not in "
                     f"the template {layout.template.name} (first: {missing[0]})", len(missing))
        return template
    if not release:
        warnings("no test", f"{layout.root}: no *_test_set_release.txt found; the test split is empty")
        return pd.DataFrame({"txtid": [], "frame": [], "template_row": []})
    parts = []
    for txtid in release:
        video = videos.get(affwild2.videoid_of(txtid))
        if video is None or not video.get("n_frames"):
            raise DataError(f"{layout.release_list}: test txtid {txtid} has no readable video "
                            "and there is no template to tell its frame count")
        n = video["n_frames"] + 1   # the organisers' convention
        parts.append(pd.DataFrame({"txtid": txtid, "frame": np.arange(1, n + 1), "template_row": -1}))
    return pd.concat(parts, ignore_index=True)


def index_frames(layout, release, template, videos: dict, warnings) -> pd.DataFrame:
    def bad_line(path, number, text):
        warnings("label", f"{path}:{number}: label '{text}' is not an integer in -1..7; "
                 "using -1 (ignored)")

    def clash(number, kept, dropped):
        warnings("duplicate crop", f"{dropped}: a second image of frame {number} (first: {kept}); using the first")

    def seven_classes(path):
        warnings("7 classes", f"{path}: ABAW 2020-21 label file (7 classes, no Other): read with the same "
                 "ids; Other never occurs, and macro-F1 still averages the 8 classes")

    sources = []  # (split, txtid, frames, labels, template rows)
    for split in ("train", "val"):
        for txtid, path in sorted(layout.annotations[split].items()):
            labels = affwild2.read_labels(path, bad_line, seven_classes)
            sources.append((split, txtid, np.arange(1, len(labels) + 1), labels, None, path))
    tests = test_frames(layout, release, template, videos, warnings)
    for txtid, rows in tests.groupby("txtid", sort=True):
        rows = rows.sort_values("frame")
        sources.append(("test", txtid, rows.frame.to_numpy(), np.full(len(rows), -1),
                        rows.template_row.to_numpy(), layout.template or layout.release_list))
    parts = []
    for split, txtid, frame, labels, template_row, source in track(sources, description="indexing"):
        crop_frames, crop_paths = affwild2.list_crops(layout.crop_dirs.get(txtid, []), clash)
        has_video = affwild2.videoid_of(txtid) in videos
        if not len(crop_frames) and not has_video:
            if split == "test":
                raise DataError(f"{source}: test txtid {txtid} has no crops and no video")
            warnings("unusable", f"{source}: no crops and no video for {txtid}; left out")
            continue
        if not has_video:
            warnings("no video", f"{source}: no video {affwild2.videoid_of(txtid)}.<mp4, avi, mkv, ...> "
                     f"under the root for {txtid}; its audio is treated as silent")
        beyond = int((crop_frames > frame.max()).sum()) if len(frame) else 0
        if beyond > 2:   # one or two are normal: label lines and frames differ by -1..+2
            warnings("beyond", f"{source}: {beyond} crops of {txtid} lie past its last frame")
        columns = affwild2.txtid_frames(txtid, frame, labels, crop_frames, crop_paths)
        columns["split"] = split
        columns["template_row"] = template_row if template_row is not None else -1
        parts.append(pd.DataFrame(columns))
    if not parts:
        raise DataError(f"{layout.root}: none of the {len(sources)} txtids has crops or a video")
    order = ["split", "txtid", "videoid", "frame", "label", "has_crop", "crop_path", "template_row"]
    frames = pd.concat(parts, ignore_index=True)[order]
    if not frames["has_crop"].any():
        names = sorted(layout.crop_dirs)[:3]
        warnings("no crops", f"{layout.root}: NO FACE CROP FOUND. Searched {layout.folders_searched:,} folders for "
                 f"folders named like the txtids (e.g. {sources[0][1]}) holding numbered images "
                 f"({', '.join(IMAGE_EXTENSIONS)}, any case)"
                 + (f"; folders of numbered images found have other names (e.g. {', '.join(names)})" if names else
                    "; none holds numbered images") + ". The image branch cannot train; audio-only use stays possible")
    frames["split"] = pd.Categorical(frames["split"], ["train", "val", "test"])
    return frames.sort_values(["split", "txtid", "frame"], ignore_index=True)


def print_summary(counts: dict, warnings: dict) -> None:
    splits = list(counts)
    table("Frames per split", ["", *splits],
          [["txtids", *[counts[s]["txtids"] for s in splits]],
           ["videos", *[counts[s]["videos"] for s in splits]],
           ["frames", *[counts[s]["frames"] for s in splits]],
           *[[f"  {name}", *[counts[s]["labels"][i] for s in splits]] for i, name in enumerate(EXPR_CLASSES)],
           ["  -1 (ignored)", *[counts[s]["ignored"] for s in splits]],
           ["missing crops", *[counts[s]["missing_crops"] for s in splits]],
           ["videos without audio", *[counts[s]["videos_without_audio"] for s in splits]],
           ["variable frame rate videos", *[counts[s]["vfr_videos"] for s in splits]],
           ["txtids without a video", *[counts[s]["txtids_without_video"] for s in splits]]])
    if warnings:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.items()])


def main(argv=None):
    cfg = parse_config(PrepareConfig, argv, description=__doc__.split("\n")[0])
    if not cfg.root:
        raise SystemExit("error: --root is required (the folder the dataset was unpacked to)")
    out = Path(cfg.out)
    if cfg.dataset == "dfew":   # DESIGN.md section 6: clips, folds, frames and clip audio
        try:
            prepare_dfew(cfg.root, out, cfg.jobs, cfg.sample_rate, cfg.force, cfg.dfew_frames,
                         export=cfg.export_annotations)
        except DataError as err:
            raise SystemExit(f"error: {err}")
        return
    if cfg.dataset == "clips":
        if not cfg.labels:
            raise SystemExit("error: --dataset clips needs --labels ravdess, cremad or a CSV file")
        prepare_clips(cfg.root, out, cfg.labels, cfg.crops, cfg.folds, cfg.val_fold, cfg.jobs, cfg.sample_rate,
                      cfg.force, (cfg.n_fft, cfg.hop, cfg.n_mels))
        return
    warnings = WarningCounter()
    try:
        layout = affwild2.scan(Path(cfg.root).resolve())
        for first, second in layout.duplicates:
            warnings("duplicate", f"{second}: same txtid as {first}; using the first")
        for first, second in layout.duplicate_videos:
            warnings("duplicate video", f"{second}: same videoid as {first}; using the first")
        release = affwild2.read_release_list(layout.release_list) if layout.release_list else []
        template = affwild2.read_template(layout.template) if layout.template else None
        txtids = {t for split in layout.annotations.values() for t in split} | set(release)
        if template is not None:
            txtids |= set(template.txtid.unique())
        needed = sorted({affwild2.videoid_of(t) for t in txtids})
        found = [(v, layout.videos[v]) for v in needed if v in layout.videos]
        results = Parallel(n_jobs=cfg.jobs, return_as="generator_unordered")(
            delayed(prepare_media)(v, p, out, cfg.sample_rate, cfg.force) for v, p in found)
        videos = {}
        for info in track(results, total=len(found), description="decoding audio", unit="videos"):
            report_media(info, warnings)
            videos[info["key"]] = info
        frames = index_frames(layout, release, template,
                              {v: i for v, i in videos.items() if not i["error"]}, warnings)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    video_table = pd.DataFrame(sorted(({"videoid": k} | i for k, i in videos.items()), key=lambda i: i["videoid"]),
                               columns=["videoid", "path", "fps", "n_frames", "duration", "has_audio",
                                        "audio_path", "audio_samples", "audio_offset", "sample_rate",
                                        "channels", "source_rate", "codec", "vfr", "frame_times",
                                        "corrupt_packets", "nonfinite_samples", "error"])
    for column in ("has_audio", "vfr"):
        video_table[column] = video_table[column].fillna(False).astype(bool)
    counts = affwild2.split_counts(frames, video_table)
    save_parquet(out / "frames.parquet", frames)
    save_parquet(out / "videos.parquet", video_table)
    meta = dict(dataset=cfg.dataset, root=str(layout.root), sample_rate=cfg.sample_rate,
                template=str(layout.template) if layout.template else None,
                release_list=str(layout.release_list) if layout.release_list else None,
                classes=list(EXPR_CLASSES), counts=counts, warnings=warnings.summary())
    write_json(out / "meta.json", meta)   # the spectrograms read its sample rate
    try:
        spec = ensure_spectrograms(out, cfg.n_fft, cfg.hop, cfg.n_mels, jobs=cfg.jobs, force=cfg.force,
                                   warnings=warnings)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    write_json(out / "meta.json", meta | dict(warnings=warnings.summary()))
    print_summary(counts, warnings.summary())
    log(f"wrote {out}/frames.parquet ({len(frames):,} frames), videos.parquet ({len(video_table)} videos), "
        f"audio/, {spec.relative_to(out)}/ (log-mel) and meta.json")


if __name__ == "__main__":
    cli(main)
