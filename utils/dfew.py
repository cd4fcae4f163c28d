"""The DFEW layout (DESIGN.md section 6): clips, frames, sound and the 5-fold split files.

Found by walking ROOT, so the nesting of a copy does not matter:
  Clip/clip_224x224/<00001>/<n>.jpg       every frame of a clip (variable length)
  Clip/clip_224x224_16f/<00001>/<n>.jpg   the 16-frame release (used when asked, or alone)
  Clip/original/<00001>.mp4               the clip as cut from the film, with its sound
  EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv   header video_name,label
     (also spelled single_labeled)
Frames are ordered by the number in their file name (2.jpg before 10.jpg). Clip ids are
5-digit strings everywhere: '1' and '00001' in a split file are clip '00001'.

Labels: 1..7 = Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear (utils.classes.DFEW_CLASSES
lists them 0..6). Some copies write 0..6. The base is decided once, in scan(), from all split
files together, and scan() is the only place that converts: every table holds ids 0..6.

index() returns three tables (prepare_dfew writes them as parquet, with audio columns added):
  clips   clip, n_frames, frame_dir, video_path ('' if none), label (-1: in no split file)
  folds   clip, fold (1..5), split ('train' | 'test'), label
  frames  one row per frame file: clip, frame (0-based position in numeric order, what
          sample_indices returns), number (from the file name), path, eval_sample (one of the
          16 frames sample_indices(train=False) picks), so a feature generator can compute
          either every frame (needed for train-time jitter) or only the eval frames.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from utils.affwild2 import DataError
from utils.classes import DFEW_CLASSES, NUM_DFEW_CLASSES
from utils.console import WarningCounter, log, table, track
from utils.media import decode_audio, probe_video
from utils.metrics import per_class_f1, uar_war
from utils.runs import read_json, save_npy, save_parquet, write_json

FRAME_KINDS = ("clip_224x224", "clip_224x224_16f")   # the first is preferred
SPLIT_FOLDER = re.compile(r"^(train|test)\(single[-_]labeled\)$", re.IGNORECASE)
SPLIT_FILE = re.compile(r"^set_(\d+)\.csv$", re.IGNORECASE)
FRAME_FILE = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
VIDEO_EXTENSIONS = (".mp4", ".avi")
HEADER = "video_name,label"
N_FOLDS = 5
SPLITS = ("train", "test")


def clip_id(text: str) -> str | None:
    """'1' and '00001' name the same clip, '00001'; None if the text is not a number."""
    text = text.strip()
    return f"{int(text):05d}" if re.fullmatch(r"[0-9]+", text) else None


@dataclass
class DfewLayout:
    root: Path
    frames_kind: str                                   # the frame folder in use
    frame_dirs: dict[str, Path]                        # clip -> its frame folder
    videos: dict[str, Path]                            # clip -> Clip/original/<clip>.mp4
    split_files: dict[tuple[int, str], Path]           # (fold, split) -> set_<k>.csv
    splits: pd.DataFrame                               # every split row, labels 0-based
    label_base: int                                    # 1: files say 1..7, 0: files say 0..6
    kinds_found: dict[str, int] = field(default_factory=dict)   # frame kind -> clips
    ignored: list[Path] = field(default_factory=list)  # frame folders not named by a number


def scan(root: str | os.PathLike, frames: str = "auto", label_base: int | None = None) -> DfewLayout:
    """One walk over root; reads the split files (small) and decides the label base.

    frames: 'auto' (clip_224x224 if present, else clip_224x224_16f) or one of FRAME_KINDS.
    label_base: None detects it from the split files; 0 or 1 forces it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    if frames != "auto" and frames not in FRAME_KINDS:
        raise ValueError(f"frames must be 'auto' or one of {FRAME_KINDS}, got {frames!r}")
    if label_base not in (None, 0, 1):
        raise ValueError(f"label_base must be None (detect), 0 or 1, got {label_base!r}")
    found = {kind: {} for kind in FRAME_KINDS}
    videos, split_files, ignored = {}, {}, []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        dirnames.sort()
        if here.name in FRAME_KINDS:
            for name in dirnames:
                clip = clip_id(name)
                if clip is not None:
                    found[here.name].setdefault(clip, here / name)
                elif name not in FRAME_KINDS:
                    ignored.append(here / name)
            # Clip folders are listed later, one by one; a zip may nest clip_224x224 twice.
            dirnames[:] = [d for d in dirnames if d in FRAME_KINDS]
            continue
        split = SPLIT_FOLDER.match(here.name)
        for name in sorted(filenames):
            m = SPLIT_FILE.match(name) if split else None
            if m:
                key = (int(m.group(1)), split.group(1).lower())
                if key in split_files:
                    raise DataError(f"{here / name}: fold {key[0]} {key[1]} split also given by "
                                    f"{split_files[key]}")
                split_files[key] = here / name
            elif name.lower().endswith(VIDEO_EXTENSIONS) and clip_id(Path(name).stem):
                videos.setdefault(clip_id(Path(name).stem), here / name)
    kind = frames if frames != "auto" else next((k for k in FRAME_KINDS if found[k]), FRAME_KINDS[0])
    if not found[kind]:
        raise DataError(f"{root}: no Clip/{kind}/<clip number>/ frame folders found")
    if not split_files:
        raise DataError(f"{root}: no EmoLabel_DataSplit/{{train,test}}(single-labeled)/set_<k>.csv "
                        "split files found")
    for fold, split in split_files:
        other = "test" if split == "train" else "train"
        if (fold, other) not in split_files:
            raise DataError(f"{split_files[fold, split]}: fold {fold} has no {other} split file")
    splits, base = read_splits(split_files, label_base)
    return DfewLayout(root=root, frames_kind=kind, frame_dirs=found[kind], videos=videos,
                      split_files=split_files, splits=splits, label_base=base,
                      kinds_found={k: len(v) for k, v in found.items()}, ignored=ignored)


def read_split(path: Path) -> list[tuple[str, int, int]]:
    """(clip, label as written, line number) for each row of one set_<k>.csv."""
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].replace(" ", "").lower() != HEADER:
        got = lines[0].strip()[:80] if lines else "an empty file"
        raise DataError(f"{path}: line 1 must be the header '{HEADER}', got '{got}'")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        clip = clip_id(fields[0]) if len(fields) == 2 else None
        label = fields[1].strip() if len(fields) == 2 else ""
        if clip is None or not re.fullmatch(r"[0-7]", label):
            raise DataError(f"{path}:{number}: expected '<clip number>,<label 0..7>', "
                            f"got '{line.strip()[:80]}'")
        rows.append((clip, int(label), number))
    return rows


def detect_label_base(labels_by_file: dict[Path, set[int]]) -> int:
    """1 if some file says 7 and none says 0, 0 if the reverse; anything else is ambiguous."""
    zero = [p for p, labels in labels_by_file.items() if 0 in labels]
    seven = [p for p, labels in labels_by_file.items() if 7 in labels]
    if seven and not zero:
        return 1
    if zero and not seven:
        return 0
    why = (f"{zero[0]} uses label 0 but {seven[0]} uses label 7" if zero else
           f"none of the {len(labels_by_file)} split files (e.g. {next(iter(labels_by_file))}) "
           "uses label 0 or 7")
    raise DataError(f"{why}: cannot tell 1..7 from 0..6 labels; set the label base by hand")


def read_splits(split_files: dict[tuple[int, str], Path], label_base: int | None = None):
    """All split rows with labels converted to 0..6 (the one place that shifts), and the base."""
    parts, labels_by_file = [], {}
    for (fold, split), path in sorted(split_files.items()):
        rows = read_split(path)
        labels_by_file[path] = {label for _, label, _ in rows}
        parts.append(pd.DataFrame({"clip": [r[0] for r in rows], "fold": fold, "split": split,
                                   "raw": [r[1] for r in rows], "file": str(path),
                                   "line": [r[2] for r in rows]}))
    base = detect_label_base(labels_by_file) if label_base is None else label_base
    table = pd.concat(parts, ignore_index=True)
    table["label"] = table["raw"] - base
    outside = table[(table.label < 0) | (table.label >= NUM_DFEW_CLASSES)]
    if len(outside):
        row = outside.iloc[0]
        raise DataError(f"{row.file}:{row.line}: label {row.raw} is outside {base}..{base + 6}")
    _check_consistent(table)
    table["fold"] = table["fold"].astype(np.int8)
    table["label"] = table["label"].astype(np.int8)
    return table, base


def _check_consistent(table: pd.DataFrame) -> None:
    """One label per clip over all files; no clip in both halves of a fold."""
    labels = table.groupby("clip")["label"].nunique()
    for clip in labels[labels > 1].index[:1]:
        rows = table[table["clip"] == clip]
        a, b = rows.iloc[0], rows[rows.label != rows.iloc[0].label].iloc[0]
        raise DataError(f"{b.file}:{b.line}: clip {clip} has label {b.raw} here but {a.raw} in "
                        f"{a.file}:{a.line}")
    halves = table.groupby(["fold", "clip"])["split"].nunique()
    for fold, clip in halves[halves > 1].index[:1]:
        raise DataError(f"{table[table.fold == fold].file.iloc[0]}: clip {clip} is in both the "
                        f"train and the test file of fold {fold}")


def list_frames(folder: Path) -> tuple[np.ndarray, list[str]]:
    """A clip's frame numbers in numeric order ('2.jpg' before '10.jpg') and their file names."""
    found: dict[int, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = FRAME_FILE.search(entry.name)
            if m:
                found.setdefault(int(m.group(1)), entry.name)
    numbers = np.array(sorted(found), dtype=np.int64)
    return numbers, [found[n] for n in numbers]


def sample_indices(n_frames: int, n: int = 16, train: bool = False, rng=None) -> np.ndarray:
    """n sorted frame positions in [0, n_frames) for one clip.

    n_frames >= n: the clip is cut into n equal segments [floor(i*L/n), floor((i+1)*L/n));
      eval takes floor((i + 0.5) * L / n) (segment centres, deterministic, strictly increasing),
      train one random frame of each segment.
    n_frames < n: every frame once, in order, with the n - L spare slots filled by repeating
      the first frame (left) and the last frame (right): eval puts (n - L) // 2 on the left,
      e.g. L=5 -> [0 0 0 0 0 0 1 2 3 4 4 4 4 4 4 4]; train draws the left count uniformly.
    """
    if n_frames <= 0:
        raise ValueError("a clip needs at least one frame")
    if n_frames >= n:
        if not train:
            return np.floor((np.arange(n) + 0.5) * n_frames / n).astype(np.int64)
        edges = np.floor(np.arange(n + 1) * n_frames / n).astype(np.int64)
        rng = rng if rng is not None else np.random.default_rng()
        return rng.integers(edges[:-1], edges[1:]).astype(np.int64)
    spare = n - n_frames
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        left = int(rng.integers(0, spare + 1))
    else:
        left = spare // 2
    return np.concatenate([np.zeros(left, np.int64), np.arange(n_frames),
                           np.full(spare - left, n_frames - 1, np.int64)])


def validation_split(labels: np.ndarray, share: float, seed) -> np.ndarray:
    """Stratified: round(share * n) clips of each class (a class of one clip keeps it in training)."""
    rng, val = np.random.default_rng(seed), np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val[members[:int(round(share * len(members))) if len(members) > 1 else 0]] = True
    return val


def fold_split(clips: pd.DataFrame, folds: pd.DataFrame, fold: int, val_share: float, seed: int) -> dict:
    """Rows of `clips` in fold `fold`'s train, val and test parts. val is a stratified share of
    the fold's training clips drawn from (seed, fold): the image model fine-tuned on a fold
    (train_image.py --dataset dfew) and the clip model hold out the same clips when they are
    given the same --seed and --val-share. Model selection uses val, never test."""
    position = pd.Series(np.arange(len(clips)), index=clips["clip"].to_numpy())
    part = folds[folds["fold"] == fold]
    if not len(part):
        raise DataError(f"fold {fold}: not in folds.parquet (folds {sorted(folds['fold'].unique().tolist())})")
    train_all = position[part.loc[part["split"] == "train", "clip"]].to_numpy()
    test = position[part.loc[part["split"] == "test", "clip"]].to_numpy()
    is_val = validation_split(clips["label"].to_numpy()[train_all], val_share, [seed, fold])
    if not is_val.any():   # best.pt is chosen on these clips; the test fold must never stand in for them
        raise DataError(f"fold {fold}: --val-share {val_share} leaves no validation clips "
                        f"(of {len(train_all)} training clips); model selection needs some")
    return dict(train=train_all[~is_val], val=train_all[is_val], test=test)


def read_tables(data_dir, *names: str) -> list[pd.DataFrame]:
    """<data_dir>/<name>.parquet of prepare_dfew for each name; a missing one is named."""
    paths = [Path(data_dir) / f"{name}.parquet" for name in names]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: not found; run prepare_data.py --dataset dfew first")
    return [pd.read_parquet(path) for path in paths]


def weights_split(weights) -> dict | None:
    """The split.json of the train_image.py --dataset dfew run a weights file comes from, with
    every clip it learnt from (its train and val clips, and those of the run it started from);
    None for weights that never saw DFEW labels."""
    run = Path(weights).parent
    config = run / "config.json"
    if not config.is_file() or read_json(config)["config"].get("dataset") != "dfew":
        return None
    if not (run / "split.json").is_file():
        raise DataError(f"{run / 'split.json'}: not found; the clips a DFEW-fine-tuned model learnt from must be known")
    return read_json(run / "split.json")


def seen_clips(split: dict) -> set:
    """Clips a fine-tuned generator learnt from or was selected on."""
    return set(split["train"]) | set(split["val"]) | set(split.get("inherited", []))


def fold_frames(data_dir, fold: int, val_share: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """The frames of fold `fold`'s labelled clips in the table train_image.py reads (txtid = clip,
    frame, crop_path, has_crop, label = the clip's label, split = train | val | test from
    fold_split, eval_sample), and the split's clip ids for split.json."""
    clips, folds, frames = read_tables(data_dir, "clips", "folds", "frames")
    parts = fold_split(clips, folds, fold, val_share, seed)
    ids = {name: clips["clip"].to_numpy()[ix].tolist() for name, ix in parts.items()}
    split_of = pd.Series({clip: name for name, members in ids.items() for clip in members}, dtype=object)
    split = frames["clip"].map(split_of)
    frames = frames[split.notna()]
    return pd.DataFrame({
        # frame 1-based, as in every preds and features file (frames.parquet counts from 0)
        "txtid": frames["clip"].to_numpy(), "frame": frames["frame"].to_numpy() + 1, "crop_path": frames["path"].to_numpy(),
        "has_crop": True, "label": frames["clip"].map(dict(zip(clips["clip"], clips["label"]))).to_numpy(np.int64),
        "split": split[split.notna()].to_numpy().astype(str), "eval_sample": frames["eval_sample"].to_numpy()}), ids


def clip_score(txtid: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> dict:
    """Clip-level UAR and WAR of frame logits, a clip's prediction being the mean of its frames'
    logits; 'macro_f1' carries the UAR for the Trainer's model selection."""
    mean = pd.DataFrame(logits).groupby(np.asarray(txtid)).mean()
    truth = pd.Series(np.asarray(labels)).groupby(np.asarray(txtid)).first().loc[mean.index].to_numpy()
    preds = mean.to_numpy().argmax(1)
    uar, war = uar_war(truth, preds)
    return dict(macro_f1=uar, uar=uar, war=war, clips=len(mean),
                per_class_f1=per_class_f1(truth, preds, NUM_DFEW_CLASSES).tolist())


def index(layout: DfewLayout, warnings=None, n: int = 16):
    """(clips, folds, frames) tables of a scanned tree; see the module docstring."""
    warnings = warnings if warnings is not None else WarningCounter()
    for path in layout.ignored:
        warnings("not a clip", f"{path}: folder name is not a clip number; ignored")
    clip_rows, frame_parts = [], []
    for clip, folder in track(sorted(layout.frame_dirs.items()), description="listing frames"):
        numbers, names = list_frames(folder)
        if not len(numbers):
            warnings("empty clip", f"{folder}: no frame images; clip {clip} left out")
            continue
        clip_rows.append((clip, len(numbers), str(folder), str(layout.videos.get(clip, ""))))
        eval_sample = np.zeros(len(numbers), bool)
        eval_sample[sample_indices(len(numbers), n, train=False)] = True
        frame_parts.append((clip, numbers, [os.path.join(folder, name) for name in names], eval_sample))
    clips = pd.DataFrame(clip_rows, columns=["clip", "n_frames", "frame_dir", "video_path"])
    clips["n_frames"] = clips["n_frames"].astype(np.int32)
    frames = pd.DataFrame({
        "clip": np.repeat([p[0] for p in frame_parts], [len(p[1]) for p in frame_parts]),
        "frame": np.concatenate([np.arange(len(p[1])) for p in frame_parts]).astype(np.int32),
        "number": np.concatenate([p[1] for p in frame_parts]).astype(np.int32),
        "path": [path for p in frame_parts for path in p[2]],
        "eval_sample": np.concatenate([p[3] for p in frame_parts])})
    folds = _usable_folds(layout, set(clips["clip"]), warnings)
    labels = folds.drop_duplicates("clip").set_index("clip")["label"]
    clips["label"] = clips["clip"].map(labels).fillna(-1).astype(np.int8)
    return clips, folds, frames


def _usable_folds(layout: DfewLayout, with_frames: set[str], warnings) -> pd.DataFrame:
    """Split rows whose clip has frames; every dropped or repeated row is counted."""
    table = layout.splits
    repeated = table.duplicated(["fold", "split", "clip"])
    for file, rows in table[repeated].groupby("file"):
        warnings("repeated", f"{file}: {len(rows)} clips listed twice (first: {rows['clip'].iloc[0]}, "
                 f"line {rows.line.iloc[0]}); counted once", len(rows))
    table = table[~repeated]
    missing = ~table["clip"].isin(with_frames)
    for file, rows in table[missing].groupby("file"):
        warnings("no frames", f"{file}: {len(rows)} clips have no frames under {layout.frames_kind} "
                 f"(first: {rows['clip'].iloc[0]}, line {rows.line.iloc[0]}); left out of the fold",
                 len(rows))
    table = table[~missing]
    tests = table[table.split == "test"].groupby("clip")["fold"].nunique()
    if (tests > 1).any():
        warnings("test twice", f"{layout.root}: {(tests > 1).sum()} clips are in the test split "
                 f"of several folds (first: {tests[tests > 1].index[0]})", int((tests > 1).sum()))
    order = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    table = table.assign(_order=order).sort_values(["fold", "_order", "clip"], ignore_index=True)
    return table[["clip", "fold", "split", "label"]]


def decode_clip_audio(clip: str, path: Path, out: Path, sample_rate: int, force: bool) -> dict:
    """Cache one clip's sound as audio/<clip>.npy. Runs in a worker process; never raises."""
    info_path = out / "audio" / f"{clip}.json"
    if info_path.exists() and not force:
        info = read_json(info_path)
        if (info.get("path") == str(path) and info.get("sample_rate") == sample_rate
                and (not info["has_audio"] or Path(info["audio_path"]).exists())):
            return info
    info = dict(clip=clip, path=str(path), sample_rate=sample_rate, has_audio=False, audio_path="",
                audio_samples=0, corrupt_packets=0, error="")
    try:
        meta = probe_video(path)
        if meta.has_audio:
            samples, corrupt = decode_audio(path, sample_rate, meta.audio_offset)
            audio_path = out / "audio" / f"{clip}.npy"
            save_npy(audio_path, samples)
            info.update(has_audio=len(samples) > 0, audio_path=str(audio_path),
                        audio_samples=len(samples), corrupt_packets=corrupt)
    except (av.FFmpegError, OSError, ValueError) as err:
        info["error"] = f"{type(err).__name__}: {err}"
        return info   # not cached: a fixed file is tried again on the next run
    write_json(info_path, info)
    return info


def add_audio(clips: pd.DataFrame, root: Path, out: Path, jobs: int, sample_rate: int,
              force: bool, warnings) -> pd.DataFrame:
    """has_audio, audio_path, audio_samples per clip; every clip left silent is counted."""
    todo = clips[clips["video_path"] != ""]
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(decode_clip_audio)(c, Path(p), out, sample_rate, force)
        for c, p in zip(todo["clip"], todo["video_path"]))
    infos = {}
    for info in track(results, total=len(todo), description="decoding audio"):
        if info["error"]:
            warnings("video", f"{info['path']}: unreadable ({info['error']}); treated as silent")
        elif not info["has_audio"]:
            warnings("no audio", f"{info['path']}: no audio stream; treated as silent")
        elif info["corrupt_packets"]:
            warnings("corrupt audio", f"{info['path']}: {info['corrupt_packets']} corrupt audio "
                     "packets skipped")
        infos[info["clip"]] = info
    silent = clips.loc[clips["video_path"] == "", "clip"]
    if len(silent):
        warnings("no video", f"{root}: no Clip/original/<clip>.mp4 for {len(silent)} clips "
                 f"(first: {silent.iloc[0]}); treated as silent", len(silent))

    def column(key, empty):
        return [infos.get(clip, {}).get(key, empty) for clip in clips["clip"]]

    return clips.assign(has_audio=np.array(column("has_audio", False), bool),
                        audio_path=column("audio_path", ""),
                        audio_samples=np.array(column("audio_samples", 0), np.int64))


def fold_counts(clips: pd.DataFrame, folds: pd.DataFrame) -> dict:
    """Totals, and per fold and split the clips and clips per class (ids 0..6)."""
    out = {"clips": len(clips), "frames": int(clips["n_frames"].sum()),
           "labelled": int((clips["label"] >= 0).sum()), "unlabelled": int((clips["label"] < 0).sum()),
           "with_audio": int(clips["has_audio"].sum()), "folds": {}}
    for (fold, split), rows in folds.groupby(["fold", "split"]):
        out["folds"].setdefault(str(fold), {})[split] = dict(
            clips=len(rows), labels=np.bincount(rows["label"], minlength=NUM_DFEW_CLASSES).tolist())
    return out


def print_summary(layout: DfewLayout, counts: dict, warnings: dict) -> None:
    folds = sorted(counts["folds"], key=int)

    def per(split, key):
        return [counts["folds"][f].get(split, {}).get(key, 0) for f in folds]

    test_labels = per("test", "labels")
    table(f"DFEW folds ({layout.frames_kind}; the files use labels {layout.label_base}.."
          f"{layout.label_base + 6})", ["", *[f"fold {f}" for f in folds]],
          [["train clips", *per("train", "clips")], ["test clips", *per("test", "clips")],
           *[[f"  test {name}", *[labels[i] for labels in test_labels]]
             for i, name in enumerate(DFEW_CLASSES)]])
    if warnings:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.items()])
    log(f"{counts['clips']:,} clips ({counts['unlabelled']:,} in no split file, "
        f"{counts['with_audio']:,} with audio), {counts['frames']:,} frames")


def prepare_dfew(root, out, jobs: int = 2, sample_rate: int = 16000, force: bool = False,
                 frames: str = "auto", label_base: int | None = None) -> dict:
    """Index a DFEW tree into out/ and decode each clip's sound once; returns meta.json's content.

    Writes clips.parquet (index()'s clips plus has_audio, audio_path, audio_samples),
    folds.parquet, frames.parquet, audio/<clip>.npy (mono float32 at sample_rate, sample i at
    time i / sample_rate of the clip) and meta.json. Raises DataError on unusable input.
    """
    out, warnings = Path(out), WarningCounter()
    layout = scan(Path(root).resolve(), frames, label_base)
    clips, folds, frame_table = index(layout, warnings)
    clips = add_audio(clips, layout.root, out, jobs, sample_rate, force, warnings)
    found = sorted({fold for fold, _ in layout.split_files})
    if found != list(range(1, N_FOLDS + 1)):
        warnings("folds", f"{layout.root}: split files for folds {found}; DFEW has {N_FOLDS}")
    counts = fold_counts(clips, folds)
    save_parquet(out / "clips.parquet", clips)
    save_parquet(out / "folds.parquet", folds)
    save_parquet(out / "frames.parquet", frame_table)
    meta = dict(dataset="dfew", root=str(layout.root), frames_kind=layout.frames_kind,
                frame_folders=layout.kinds_found,
                classes=list(DFEW_CLASSES), label_base=layout.label_base,
                label_base_detected=label_base is None, sample_rate=sample_rate,
                split_files={f"{k[0]}/{k[1]}": str(p) for k, p in sorted(layout.split_files.items())},
                counts=counts, warnings=warnings.summary())
    write_json(out / "meta.json", meta)
    print_summary(layout, counts, warnings.summary())
    log(f"wrote {out}/clips.parquet, folds.parquet, frames.parquet, audio/ and meta.json")
    return meta
