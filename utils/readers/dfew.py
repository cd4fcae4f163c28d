"""The DFEW layout (DESIGN.md section 6): clips, frames, sound and the 5-fold split files.

Found by walking ROOT (utils.files.walk: hidden files, AppleDouble `._*` and `__MACOSX/` are
never data), so the nesting of a copy does not matter:
  frame folders   <frame root>/<00001>/<frames>: a frame root is any folder whose subfolders are
                  named by clip numbers and hold numbered images (any common extension and
                  padding: 1.jpg, 00001_00001.jpg, 00001.png). The official release's roots are
                  Clip/clip_224x224/ (every frame) and Clip/clip_224x224_16f/ (16 frames); peers
                  make their own: MAE-DFER's Clip/jpg_256/, DFER-CLIP's DFEW_Frame_Face/. 'auto'
                  takes clip_224x224, else the full-length root with the most clips, else a
                  16-frame one; --dfew-frames NAME picks another by its folder name.
  sound           Clip/original/<00001>.mp4 (any common video extension): the clip with its sound
  split files     EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv, header
                  video_name,label (also single_labeled; ',' ';' or tab separated, quotes allowed);
                  where none exist, the annotation lists of the public DFEW codebases for the same
                  folds: DFER-CLIP / Former-DFER `<clip dir> <n_frames> <label 0..6>`
                  (e.g. annotation/DFEW_set_1_train.txt) and MAE-DFER `<clip dir> <label 0..6>`
                  (split01/train.csv, test.csv), space separated, no header; export_annotations()
                  writes both for the folds in use, so results compare on identical splits.
Frames are ordered by the number in their file name (2.jpg before 10.jpg). Clip ids are
5-digit strings everywhere: '1' and '00001' in a split file are clip '00001'.

Labels: 1..7 = Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear (utils.classes.DFEW_CLASSES
lists them 0..6). Some copies write 0..6. The base is decided once, in scan(), from all split
files together (the peers' annotation lists are 0..6 by definition), and scan() is the only
place that converts: every table holds ids 0..6.

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

import numpy as np
import pandas as pd
from joblib import Parallel, delayed


from utils.classes import DFEW_CLASSES, NUM_DFEW_CLASSES
from utils.console import WarningCounter, log, table, track
from utils.files import DataError, frame_number, is_image, is_video, numbered_images, read_lines, walk, whole_number
from utils.readers.media import locate, prepare_media, report_media
from utils.evaluation.metrics import per_class_f1, uar_war
from utils.runs import read_json, save_parquet, write_json, write_text

FRAME_KINDS = ("clip_224x224", "clip_224x224_16f")   # the official release's frame roots, the first preferred
SPLIT_FOLDER = re.compile(r"^(train|test)\(single[-_]labeled\)$", re.IGNORECASE)
SPLIT_FILE = re.compile(r"^set_(\d+)\.csv$", re.IGNORECASE)
# The peers' annotation lists: DFER-CLIP's DFEW_set_1_train.txt (also set_1_train.txt), and
# MAE-DFER's split01/train.csv (its val.csv repeats test.csv and is not read).
PEER_LIST = re.compile(r"^(?:dfew_)?set_?(\d+)_(train|test)\.txt$", re.IGNORECASE)
PEER_FOLDER = re.compile(r"^split0*(\d+)$", re.IGNORECASE)
PEER_CSV = re.compile(r"^(train|test)\.csv$", re.IGNORECASE)
HEADER = "video_name,label"
N_FOLDS = 5
SPLITS = ("train", "test")


def clip_id(text: str) -> str | None:
    """'1', '00001' and '00001.mp4' name the same clip, '00001'; None if the text is not a number
    (with a video file's extension at most)."""
    text = text.strip()
    if is_video(text):
        text = text.rsplit(".", 1)[0]
    return f"{int(text):05d}" if re.fullmatch(r"[0-9]+", text) else None


@dataclass
class DfewLayout:
    root: Path
    frames_kind: str                                   # the name of the frame root in use
    frame_dirs: dict[str, Path]                        # clip -> its frame folder
    videos: dict[str, Path]                            # clip -> Clip/original/<clip>.mp4
    split_files: dict[tuple[int, str], Path]           # (fold, split) -> set_<k>.csv or a peer's list
    splits: pd.DataFrame                               # every split row, labels 0-based
    label_base: int                                    # 1: files say 1..7, 0: files say 0..6
    kinds_found: dict[str, int] = field(default_factory=dict)   # frame root name -> clips
    ignored: list[Path] = field(default_factory=list)  # folders of images beside clip folders, not named by a number
    split_format: str = "official"                     # official | dfer-clip | mae-dfer
    empty: list[Path] = field(default_factory=list)    # clip folders in the frame root without an image


@dataclass
class _Root:
    """A folder whose subfolders named by clip numbers hold numbered images."""
    path: Path
    clips: dict = field(default_factory=dict)          # clip -> folder
    longest: int = 0                                   # most images in one clip folder
    others: list = field(default_factory=list)         # image folders beside them not named by a number
    empty: list = field(default_factory=list)          # clip-number folders without an image


def _pick_root(roots: dict[Path, _Root], frames: str, root: Path) -> _Root:
    """--dfew-frames NAME, or 'auto': clip_224x224, else the full-length root with the most clips,
    else a 16-frame one (every clip folder holding at most 16 images)."""
    found = [r for r in roots.values() if r.clips]
    if frames != "auto":
        named = [r for r in found if r.path.name == frames]
        if not named:
            have = ", ".join(f"{r.path.name} ({len(r.clips)} clips)" for r in found) or "none"
            raise DataError(f"{root}: no frame folder named {frames}/ holding clip folders (found: {have})")
        return max(named, key=lambda r: len(r.clips))
    if not found:
        raise DataError(f"{root}: no frame folders found: expected a folder (Clip/clip_224x224/, jpg_256/, ...) "
                        "of clip folders named by number (00001/) holding numbered images")
    official = [r for r in found if r.path.name == FRAME_KINDS[0]]
    full = [r for r in found if r.longest > 16]
    return max(official or full or found, key=lambda r: len(r.clips))


def scan(root: str | os.PathLike, frames: str = "auto", label_base: int | None = None) -> DfewLayout:
    """One walk over root; reads the split files (small) and decides the label base.

    frames: 'auto' (see _pick_root) or the name of a frame root (clip_224x224_16f, jpg_256, ...).
    label_base: None detects it from the split files; 0 or 1 forces it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    if label_base not in (None, 0, 1):
        raise ValueError(f"label_base must be None (detect), 0 or 1, got {label_base!r}")
    roots: dict[Path, _Root] = {}
    videos, split_files, peer_lists = {}, {}, {"dfer-clip": {}, "mae-dfer": {}}
    for dirpath, dirnames, filenames in walk(root):
        here = Path(dirpath)
        count = sum(1 for name in filenames if is_image(name) and frame_number(name) is not None)
        if count:
            parent = roots.setdefault(here.parent, _Root(here.parent))
            clip = clip_id(here.name)
            if clip is None:
                parent.others.append(here)
            elif clip not in parent.clips:
                parent.clips[clip] = here
                parent.longest = max(parent.longest, count)
            continue   # a frame folder holds nothing else the kit reads
        if not dirnames and clip_id(here.name) is not None:
            roots.setdefault(here.parent, _Root(here.parent)).empty.append(here)
        split = SPLIT_FOLDER.match(here.name)
        peer_fold = PEER_FOLDER.match(here.name)
        for name in filenames:
            m = SPLIT_FILE.match(name) if split else None
            if m:
                key = (int(m.group(1)), split.group(1).lower())
                if key in split_files:
                    raise DataError(f"{here / name}: fold {key[0]} {key[1]} split also given by "
                                    f"{split_files[key]}")
                split_files[key] = here / name
            elif is_video(name) and clip_id(Path(name).stem):
                videos.setdefault(clip_id(Path(name).stem), here / name)
            elif PEER_LIST.match(name):
                m = PEER_LIST.match(name)
                peer_lists["dfer-clip"].setdefault((int(m.group(1)), m.group(2).lower()), here / name)
            elif peer_fold and PEER_CSV.match(name):
                key = (int(peer_fold.group(1)), PEER_CSV.match(name).group(1).lower())
                peer_lists["mae-dfer"].setdefault(key, here / name)
    chosen = _pick_root(roots, frames, root)
    split_format = "official"
    if not split_files:
        # The peers' lists are read only where the official files are absent, so one copy never mixes both.
        split_format, split_files = next(((f, files) for f, files in peer_lists.items() if files), ("official", {}))
        label_base = 0 if split_files else label_base   # the peers' lists are 0..6 by definition
    if not split_files:
        raise DataError(f"{root}: no EmoLabel_DataSplit/{{train,test}}(single-labeled)/set_<k>.csv split files "
                        "found (nor DFER-CLIP's DFEW_set_<k>_{train,test}.txt or MAE-DFER's split0<k>/{train,test}.csv)")
    for fold, split in split_files:
        other = "test" if split == "train" else "train"
        if (fold, other) not in split_files:
            raise DataError(f"{split_files[fold, split]}: fold {fold} has no {other} split file")
    splits, base = read_splits(split_files, label_base, split_format)
    return DfewLayout(root=root, frames_kind=chosen.path.name, frame_dirs=dict(sorted(chosen.clips.items())),
                      videos=videos, split_files=split_files, splits=splits, label_base=base,
                      kinds_found={str(r.path.relative_to(root)) if r.path != root else ".": len(r.clips)
                                   for r in roots.values() if r.clips},
                      ignored=sorted(chosen.others), split_format=split_format, empty=sorted(chosen.empty))


def read_split(path: Path) -> list[tuple[str, int, int]]:
    """(clip, label as written, line number) for each row of one official set_<k>.csv.

    The separator is the header's: ',' or, as spreadsheets save in some locales, ';' or a tab;
    quotes, spaces and blank lines are accepted. Anything else is a DataError naming the file and line."""
    lines = read_lines(path)
    first = lines[0].strip() if lines else ""
    separator = next((sep for sep in (",", ";", "\t")
                      if [f.strip().strip('"').lower() for f in first.split(sep)] == HEADER.split(",")), None)
    if separator is None:
        raise DataError(f"{path}: line 1 must be the header '{HEADER}', got '{first[:80] or 'an empty file'}'")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip().strip('"').strip() for f in line.strip().split(separator)]
        clip = clip_id(fields[0]) if len(fields) == 2 else None
        label = whole_number(fields[1]) if len(fields) == 2 else None
        if clip is None or label is None or not 0 <= label <= 7:
            raise DataError(f"{path}:{number}: expected '<clip number>{separator}<label 0..7>', "
                            f"got '{line.strip()[:80]}'")
        rows.append((clip, label, number))
    return rows


def read_peer_list(path: Path) -> list[tuple[str, int, int]]:
    """(clip, label 0..6, line number) of a DFER-CLIP (`<clip dir> <n_frames> <label>`) or MAE-DFER
    (`<clip dir> <label>`) annotation list: the clip is the last part of the folder path."""
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        clip = clip_id(fields[0].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]) if len(fields) in (2, 3) else None
        label = whole_number(fields[-1])
        if clip is None or label is None or not 0 <= label <= 7 or (len(fields) == 3 and whole_number(fields[1]) is None):
            raise DataError(f"{path}:{number}: expected '<clip folder> [<n_frames>] <label 0..6>', "
                            f"got '{line.strip()[:80]}'")
        rows.append((clip, label, number))
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


def read_splits(split_files: dict[tuple[int, str], Path], label_base: int | None = None,
                split_format: str = "official"):
    """All split rows with labels converted to 0..6 (the one place that shifts), and the base."""
    parts, labels_by_file = [], {}
    for (fold, split), path in sorted(split_files.items()):
        rows = read_split(path) if split_format == "official" else read_peer_list(path)
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


def list_frames(folder: Path, on_clash=None) -> tuple[np.ndarray, list[str]]:
    """A clip's frame numbers in numeric order ('2.jpg' before '10.jpg') and their file names
    (utils.files.numbered_images: any common image extension, debris ignored; a number given by
    two files keeps the first and is reported to on_clash(number, kept, dropped))."""
    found, clashes = numbered_images(folder)
    for clash in clashes if on_clash is not None else ():
        on_clash(*clash)
    numbers = np.array(sorted(found), dtype=np.int64)
    return numbers, [os.path.basename(found[n]) for n in numbers]


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
    return [locate(pd.read_parquet(path), data_dir) for path in paths]


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
    for path in layout.empty:
        warnings("empty clip", f"{path}: no frame images; clip {clip_id(path.name)} left out")

    def clash(number, kept, dropped):
        warnings("duplicate frame", f"{dropped}: a second image of frame {number} (first: {kept}); using the first")

    clip_rows, frame_parts = [], []
    for clip, folder in track(sorted(layout.frame_dirs.items()), description="listing frames", unit="clips"):
        numbers, names = list_frames(folder, clash)
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


def add_audio(clips: pd.DataFrame, root: Path, out: Path, jobs: int, sample_rate: int,
              force: bool, warnings) -> pd.DataFrame:
    """has_audio, audio_path, audio_samples and frame_times per clip (utils.readers.media.prepare_media);
    every clip left silent is counted. A clip video with a variable frame rate lends its frame
    timestamps to the clip's frame files when it has as many frames as there are files; otherwise
    the frames are spread evenly over the sound, and that is counted."""
    todo = clips[clips["video_path"] != ""]
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(prepare_media)(c, Path(p), out, sample_rate, force)
        for c, p in zip(todo["clip"], todo["video_path"]))
    infos, n_frames = {}, dict(zip(clips["clip"], clips["n_frames"]))
    for info in track(results, total=len(todo), description="decoding audio", unit="clips"):
        report_media(info, warnings)
        if info["frame_times"] and info["n_frames"] != n_frames[info["key"]]:
            warnings("vfr frames", f"{info['path']}: variable frame rate, but {info['n_frames']} frames against "
                     f"{n_frames[info['key']]} frame files; the files are spread evenly over the sound")
            info["frame_times"] = ""
        infos[info["key"]] = info
    silent = clips.loc[clips["video_path"] == "", "clip"]
    if len(silent):
        warnings("no video", f"{root}: no Clip/original/<clip>.mp4 for {len(silent)} clips "
                 f"(first: {silent.iloc[0]}); treated as silent", len(silent))

    def column(key, empty):
        return [infos.get(clip, {}).get(key, empty) for clip in clips["clip"]]

    return clips.assign(has_audio=np.array(column("has_audio", False), bool),
                        audio_path=column("audio_path", ""),
                        audio_samples=np.array(column("audio_samples", 0), np.int64),
                        frame_times=column("frame_times", ""))


def export_annotations(out_dir, clips: pd.DataFrame, folds: pd.DataFrame) -> list[Path]:
    """Write the folds in use in the two annotation formats of the public DFEW codebases, so a
    model of theirs and one of the kit's are compared on identical splits (labels 0..6, the
    frame folders as absolute paths, no header, space separated):
      dfer-clip/DFEW_set_<k>_{train,test}.txt   `<frame folder> <n_frames> <label>`  (DFER-CLIP, Former-DFER)
      mae-dfer/split0<k>/{train,test,val}.csv   `<frame folder> <label>`  (MAE-DFER; its val.csv repeats
                                                test.csv, as its own preprocessing writes it)
    Returns the files written."""
    out_dir, written = Path(out_dir), []
    info = clips.set_index("clip")
    for (fold, split), rows in folds.groupby(["fold", "split"], sort=True):
        where = info.loc[rows["clip"]]
        folders = [str(Path(f).resolve()) for f in where["frame_dir"]]
        clip_lines = [f"{d} {n} {label}" for d, n, label in zip(folders, where["n_frames"], rows["label"])]
        mae_lines = [f"{d} {label}" for d, label in zip(folders, rows["label"])]
        targets = [(out_dir / "dfer-clip" / f"DFEW_set_{fold}_{split}.txt", clip_lines),
                   (out_dir / "mae-dfer" / f"split{fold:02d}" / f"{split}.csv", mae_lines)]
        if split == "test":
            targets.append((out_dir / "mae-dfer" / f"split{fold:02d}" / "val.csv", mae_lines))
        for path, lines in targets:
            write_text(path, "\n".join(lines) + "\n")
            written.append(path)
    return written


def fold_counts(clips: pd.DataFrame, folds: pd.DataFrame) -> dict:
    """Totals, and per fold and split the clips and clips per class (ids 0..6)."""
    out = {"clips": len(clips), "frames": int(clips["n_frames"].sum()),
           "labelled": int((clips["label"] >= 0).sum()), "unlabelled": int((clips["label"] < 0).sum()),
           "with_audio": int(clips["has_audio"].sum()),
           "vfr_clips": int((clips["frame_times"] != "").sum()) if "frame_times" in clips else 0, "folds": {}}
    for (fold, split), rows in folds.groupby(["fold", "split"]):
        out["folds"].setdefault(str(fold), {})[split] = dict(
            clips=len(rows), labels=np.bincount(rows["label"], minlength=NUM_DFEW_CLASSES).tolist())
    return out


def print_summary(layout: DfewLayout, counts: dict, warnings: dict) -> None:
    folds = sorted(counts["folds"], key=int)

    def per(split, key):
        return [counts["folds"][f].get(split, {}).get(key, 0) for f in folds]

    # a fold without test clips (a small labelled corpus) has no per-class counts
    test_labels = [labels or [0] * NUM_DFEW_CLASSES for labels in per("test", "labels")]
    table(f"DFEW folds ({layout.frames_kind}; {'the' if layout.split_format == 'official' else layout.split_format} "
          f"split files use labels {layout.label_base}.."
          f"{layout.label_base + 6})", ["", *[f"fold {f}" for f in folds]],
          [["train clips", *per("train", "clips")], ["test clips", *per("test", "clips")],
           *[[f"  test {name}", *[labels[i] for labels in test_labels]]
             for i, name in enumerate(DFEW_CLASSES)]])
    if warnings:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.items()])
    if len(layout.kinds_found) > 1:
        log("frame folders found: " + ", ".join(f"{name} ({n:,} clips)" for name, n in layout.kinds_found.items())
            + f"; using {layout.frames_kind} (--dfew-frames NAME picks another)")
    log(f"{counts['clips']:,} clips ({counts['unlabelled']:,} in no split file, "
        f"{counts['with_audio']:,} with audio, {counts['vfr_clips']:,} with a variable frame rate), "
        f"{counts['frames']:,} frames")


def prepare_dfew(root, out, jobs: int = 2, sample_rate: int = 16000, force: bool = False,
                 frames: str = "auto", label_base: int | None = None, export: str = "") -> dict:
    """Index a DFEW tree into out/ and decode each clip's sound once; returns meta.json's content.

    Writes clips.parquet (index()'s clips plus has_audio, audio_path, audio_samples, frame_times),
    folds.parquet, frames.parquet, audio/<clip>.npy (mono float32 at sample_rate, sample i at
    time i / sample_rate of the clip), times/<clip>.npy for variable-rate clip videos, and
    meta.json; with `export`, the folds in the peers' annotation formats (export_annotations).
    Raises DataError on unusable input.
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
                frame_folders=layout.kinds_found, split_format=layout.split_format,
                classes=list(DFEW_CLASSES), label_base=layout.label_base,
                label_base_detected=label_base is None and layout.split_format == "official", sample_rate=sample_rate,
                split_files={f"{k[0]}/{k[1]}": str(p) for k, p in sorted(layout.split_files.items())},
                counts=counts, warnings=warnings.summary())
    write_json(out / "meta.json", meta)
    print_summary(layout, counts, warnings.summary())
    log(f"wrote {out}/clips.parquet, folds.parquet, frames.parquet, audio/ and meta.json")
    if export:
        files = export_annotations(export, clips, folds)
        log(f"wrote {len(files)} annotation lists (DFER-CLIP and MAE-DFER formats) to {export}")
    return meta
