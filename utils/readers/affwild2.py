"""The Aff-Wild2 EXPR layout (DESIGN.md section 3): find the files, parse them.

Files are found by walking the root once (utils.files.walk: hidden files, AppleDouble `._*`,
`__MACOSX/` and the like are never data), so the nesting of the distribution does not matter:
  - label files: <txtid>.txt in {Train_Set, Validation_Set} under EXPR_Classification_Challenge
    (ABAW5) or EXPR_Recognition_Challenge (ABAW6+), or in {Training_Set, Validation_Set} under
    EXPR_Set (ABAW 2020-21, 7 classes without Other: same ids, read as they are);
  - crop folders are found by what they hold, not by their parent's name: any folder named like a
    txtid that holds numbered images (utils.files.numbered_images: .jpg, .png, .bmp ... in any
    case), so cropped_aligned/<txtid>/, cropped_aligned_new_50_vids/<txtid>/ and the layouts of
    public ABAW code (images/batch1/<txtid>/, cropped_aligned_images/batch2/<txtid>/) all work;
    a txtid's folders are merged, and a frame found twice is counted;
  - videos: <videoid> with any common video extension, in any case.
Everything is indexed by the label file (train/val) or the template (test), never by the number
of decoded frames: the two differ by -1..+2 in the real data.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.classes import EXPR_CLASSES, EXPR_HEADER, EXPR_TEMPLATE_HEADER, IGNORE_LABEL
from utils.files import DataError, frame_number, is_image, is_video, numbered_images, read_lines, walk, whole_number


SPLIT_FOLDERS = {"train_set": "train", "training_set": "train", "validation_set": "val"}
# ABAW 2020-21 named the folder EXPR_Set, ABAW5 EXPR_Classification_Challenge, ABAW6+ EXPR_Recognition_Challenge.
ANNOTATION_PARENT = re.compile(r"^EXPR(_\w*_Challenge|_Set)$", re.IGNORECASE)
CROP_NAME = re.compile(r"^(\d+)\.jpg$")   # the organisers' test template names crops so
TEMPLATE_NAME = re.compile(r".*expr.*test_set_(sample|example)\.txt$", re.IGNORECASE)
# ABAW 2020-21 label files: the 7 classes of today without Other, same ids.
EXPR_HEADER_7 = ",".join(EXPR_CLASSES[:7])


def videoid_of(txtid: str) -> str:
    """Two people in one video share its audio: '12-24-1920x1080_left' -> '12-24-1920x1080'."""
    for suffix in ("_left", "_right"):
        if txtid.endswith(suffix):
            return txtid[: -len(suffix)]
    return txtid


@dataclass
class Layout:
    root: Path
    annotations: dict[str, dict[str, Path]] = field(default_factory=lambda: {"train": {}, "val": {}})
    crop_dirs: dict[str, list[Path]] = field(default_factory=dict)   # folder name -> folders of numbered images
    videos: dict[str, Path] = field(default_factory=dict)            # videoid -> file
    release_lists: list[Path] = field(default_factory=list)
    templates: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    duplicate_videos: list[tuple[Path, Path]] = field(default_factory=list)
    folders_searched: int = 0

    @property
    def release_list(self) -> Path | None:
        return _pick_expr(self.release_lists)

    @property
    def template(self) -> Path | None:
        return _pick_expr(self.templates)


def _pick_expr(paths: list[Path]) -> Path | None:
    # The organisers ship release lists of all challenges side by side (VA, AU, EXPR).
    if len(paths) <= 1:
        return paths[0] if paths else None
    expr = [p for p in paths if "expr" in p.name.lower()]
    if len(expr) != 1:
        raise DataError(f"{paths[0].parent}: cannot tell which of {[p.name for p in paths]} "
                        "is the expression test list")
    return expr[0]


def scan(root: str | os.PathLike) -> Layout:
    """One walk over root that finds annotations, crop folders, videos and test lists."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    layout = Layout(root=root)
    for dirpath, dirnames, filenames in walk(root):
        here = Path(dirpath)
        layout.folders_searched += 1
        if any(is_image(name) and frame_number(name) is not None for name in filenames):
            # Possibly a txtid's crops: matched to the txtids by name once they are all known.
            # A crop folder holds nothing else the kit reads (and millions of files in all).
            layout.crop_dirs.setdefault(here.name, []).append(here)
            continue
        split = SPLIT_FOLDERS.get(here.name.lower())
        in_expr = split is not None and ANNOTATION_PARENT.match(here.parent.name)
        for name in filenames:
            lower = name.lower()
            if in_expr and lower.endswith(".txt"):
                txtid = name[:-4]
                seen = layout.annotations[split].get(txtid)
                if seen is not None:
                    layout.duplicates.append((seen, here / name))
                else:
                    layout.annotations[split][txtid] = here / name
            elif is_video(lower):
                seen = layout.videos.setdefault(Path(name).stem, here / name)
                if seen != here / name:
                    layout.duplicate_videos.append((seen, here / name))
            elif lower.endswith("_test_set_release.txt"):
                layout.release_lists.append(here / name)
            elif TEMPLATE_NAME.match(name):
                layout.templates.append(here / name)
    if not layout.annotations["train"] and not layout.annotations["val"]:
        raise DataError(f"{root}: no EXPR_*_Challenge/Train_Set or Validation_Set (or EXPR_Set/Training_Set) "
                        "annotation folder found under the dataset root")
    both = set(layout.annotations["train"]) & set(layout.annotations["val"])
    if both:
        txtid = sorted(both)[0]
        raise DataError(f"{layout.annotations['val'][txtid]}: txtid {txtid} is in both "
                        f"Train_Set and Validation_Set ({len(both)} such txtids)")
    return layout


def list_crops(folders: list[Path], on_clash=None) -> tuple[np.ndarray, list[str]]:
    """Frame numbers (sorted, 1-based) and their paths over all of a txtid's crop folders.

    A frame found twice (two extensions in one folder, or in two folders) keeps the first by
    path and is reported to on_clash(number, kept, dropped)."""
    found: dict[int, str] = {}
    for folder in sorted(folders):
        images, clashes = numbered_images(folder)
        for number, kept, dropped in clashes:
            if on_clash is not None:
                on_clash(number, kept, dropped)
        for number, path in images.items():
            if number in found:
                if on_clash is not None:
                    on_clash(number, found[number], path)
            else:
                found[number] = path
    frames = np.array(sorted(found), dtype=np.int64)
    return frames, [found[f] for f in frames]


def read_labels(path: Path, on_bad_line=None, on_seven_classes=None) -> np.ndarray:
    """Labels of frames 1..N from an annotation file (int8, -1 = ignore).

    A header other than the expected one is a DataError (the class ids would be wrong); the
    7-class header of ABAW 2020-21 (no Other) has the same ids and is read as it is (reported to
    on_seven_classes(path)). A line that
    is not an integer in -1..7 ("4.0" is 4) becomes -1 and is reported to on_bad_line(path,
    line number, text), so one bad line does not throw away a whole video.
    """
    lines = read_lines(path)
    header = lines[0].strip().replace(" ", "").rstrip(",").lower() if lines else ""
    if header not in (EXPR_HEADER.lower(), EXPR_HEADER_7.lower()):
        got = lines[0].strip()[:80] if lines else "an empty file"
        raise DataError(f"{path}: line 1 must be the header '{EXPR_HEADER}', got '{got}'")
    if header == EXPR_HEADER_7.lower() and on_seven_classes is not None:
        on_seven_classes(path)
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    labels = np.empty(len(body), dtype=np.int8)
    for i, text in enumerate(body):
        text = text.strip().rstrip(",")
        value = whole_number(text)
        if value is None or not IGNORE_LABEL <= value < len(EXPR_CLASSES):
            if on_bad_line is not None:
                on_bad_line(path, i + 2, text)
            value = IGNORE_LABEL
        labels[i] = value
    return labels


def read_release_list(path: Path) -> list[str]:
    ids = [line.strip() for line in read_lines(path) if line.strip()]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: a txtid is listed twice")
    return ids


def read_template(path: Path) -> pd.DataFrame:
    """Rows of the EXPR test template in file order: txtid, frame (1-based), template_row."""
    lines = read_lines(path)
    if not lines or lines[0].strip().rstrip(",") != EXPR_TEMPLATE_HEADER:
        got = lines[0].strip()[:80] if lines else "an empty file"
        raise DataError(f"{path}: line 1 must be '{EXPR_TEMPLATE_HEADER}', got '{got}'")
    txtids, frames = [], []
    for number, line in enumerate(lines[1:], start=2):
        location = line.split(",", 1)[0].strip()
        if not location:
            continue
        txtid, _, image = location.rpartition("/")
        m = CROP_NAME.match(image)
        if not txtid or not m:
            raise DataError(f"{path}:{number}: expected '<txtid>/<00001>.jpg', got '{location}'")
        txtids.append(txtid)
        frames.append(int(m.group(1)))
    table = pd.DataFrame({"txtid": txtids, "frame": np.array(frames, dtype=np.int64)})
    table["template_row"] = np.arange(len(table), dtype=np.int64)
    dup = table.duplicated(["txtid", "frame"])
    if dup.any():
        row = table[dup].iloc[0]
        raise DataError(f"{path}: {row.txtid}/{row.frame:05d}.jpg is listed twice")
    return table


def txtid_frames(txtid: str, frame: np.ndarray, label: np.ndarray, crop_frames: np.ndarray,
                 crop_paths: list[str]) -> dict:
    """Columns of one txtid's rows: each indexed frame, its label and its crop if one exists."""
    pos = np.searchsorted(crop_frames, frame)
    pos_clipped = np.minimum(pos, max(len(crop_frames) - 1, 0))
    has_crop = (pos < len(crop_frames)) & (crop_frames[pos_clipped] == frame) if len(crop_frames) \
        else np.zeros(len(frame), bool)
    paths = np.full(len(frame), "", dtype=object)
    if has_crop.any():
        paths[has_crop] = np.asarray(crop_paths, dtype=object)[pos[has_crop]]
    return {"txtid": np.full(len(frame), txtid, dtype=object), "videoid": videoid_of(txtid),
            "frame": frame.astype(np.int32), "label": label.astype(np.int8),
            "has_crop": has_crop, "crop_path": paths}


def split_counts(frames: pd.DataFrame, videos: pd.DataFrame) -> dict:
    """Per split: the counts prepare_data.py reports (and make_demo_data.py's manifest holds)."""
    from utils.classes import NUM_EXPR_CLASSES
    with_audio = set(videos.loc[videos.has_audio, "videoid"]) if len(videos) else set()
    found = set(videos["videoid"]) if len(videos) else set()
    vfr = set(videos.loc[videos["vfr"], "videoid"]) if len(videos) and "vfr" in videos else set()
    out = {}
    for split in ("train", "val", "test"):
        part = frames[frames.split == split]
        labels = part["label"].to_numpy()
        vids = set(part["videoid"])
        out[split] = dict(
            txtids=int(part["txtid"].nunique()), videos=len(vids), frames=len(part),
            labels=np.bincount(labels[labels >= 0], minlength=NUM_EXPR_CLASSES).tolist(),
            ignored=int((labels < 0).sum()), crops=int(part["has_crop"].sum()),
            missing_crops=int((~part["has_crop"]).sum()),
            videos_without_audio=len((vids & found) - with_audio), vfr_videos=len(vids & vfr),
            txtids_without_video=int(part.loc[~part.videoid.isin(found), "txtid"].nunique()))
    return out
