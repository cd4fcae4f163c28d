"""ABAW Expression submission files (DESIGN.md section 5): write, validate, read back, zip.

Two formats:
  per_video/<txtid>.txt   header `Neutral,...,Other`, then the label of frame 1, 2, ... n
  <template name>         header `image_location,Neutral,...,Other`, then `<txtid>/<00001>.jpg,<label>`
                          for every template row, in the template's own order
Lines are written by hand, never through pandas or csv, so nothing is ever quoted. The
reader here is strict and shares no code with the writer: a file passes only if it parses
back, line by line, to a label 0..7 for exactly the frames expected.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from utils.files import DataError
from utils.classes import EXPR_HEADER, EXPR_TEMPLATE_HEADER, NUM_EXPR_CLASSES
from utils.evaluation.metrics import macro_f1
from utils.runs import atomic_path, write_text

PER_VIDEO_DIR = "per_video"
VALID_LABELS = frozenset(str(c) for c in range(NUM_EXPR_CLASSES))


def location(txtid: str, frame: int) -> str:
    return f"{txtid}/{int(frame):05d}.jpg"


def _videos(txtid: np.ndarray):
    """(txtid, start, end) of each video; rows are ordered by (txtid, frame)."""
    txtid = np.asarray(txtid)
    starts = np.concatenate([[0], np.flatnonzero(txtid[1:] != txtid[:-1]) + 1, [len(txtid)]])
    return [(str(txtid[a]), int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


# ---------------------------------------------------------------- writing

def clear_outputs(folder: Path, template_name: str | None) -> None:
    """Remove the files a previous call wrote here (only those), so no stale file is zipped."""
    per_video = folder / PER_VIDEO_DIR
    if per_video.is_dir():
        for path in per_video.glob("*.txt"):
            path.unlink()
    if template_name and (folder / template_name).is_file():
        (folder / template_name).unlink()


def write_per_video(folder: Path, txtid: np.ndarray, frame: np.ndarray, labels: np.ndarray) -> list[Path]:
    """One file per video. A line is a frame, so each video's frames must be 1..n."""
    folder = Path(folder) / PER_VIDEO_DIR
    paths = []
    for name, a, b in _videos(txtid):
        if not np.array_equal(frame[a:b], np.arange(1, b - a + 1)):
            raise DataError(f"{name}: frames are not 1..{b - a}, so they cannot be written one line "
                            "per frame; use --format template")
        path = folder / f"{name}.txt"
        write_text(path, EXPR_HEADER + "\n" + "\n".join(map(str, labels[a:b].tolist())) + "\n")
        paths.append(path)
    return paths


def write_template(path: Path, txtid: np.ndarray, frame: np.ndarray, labels: np.ndarray,
                   template_row: np.ndarray) -> Path:
    """The single file: one line per template row, in template order (not sorted order)."""
    n = len(template_row)
    if not np.array_equal(np.sort(template_row), np.arange(n)):
        raise DataError(f"{path.name}: the frames' template_row is not 0..{n - 1}; re-run prepare_data.py")
    order = np.argsort(template_row, kind="stable")
    body = [f"{t}/{f:05d}.jpg,{y}" for t, f, y in
            zip(txtid[order].tolist(), frame[order].tolist(), labels[order].tolist())]
    write_text(path, EXPR_TEMPLATE_HEADER + "\n" + "\n".join(body) + "\n")
    return path


# ---------------------------------------------------------------- reading and validating

def _lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()                           # the newline that ends the last line
    return lines


def _labels(path: Path, body: list[str], first_line: int) -> np.ndarray:
    if not VALID_LABELS.issuperset(body):
        i = next(i for i, value in enumerate(body) if value not in VALID_LABELS)
        raise DataError(f"{path}:{i + first_line}: label must be one integer 0..7, got '{body[i][:40]}'")
    # every entry is one character '0'..'7', so the bytes are the labels
    return np.frombuffer("".join(body).encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")


def read_label_file(path: Path) -> np.ndarray:
    """Labels of frames 1..n from a per-video file; exact header, one integer 0..7 a line."""
    lines = _lines(path)
    if not lines or lines[0] != EXPR_HEADER:
        got = lines[0][:80] if lines else "an empty file"
        raise DataError(f"{path}:1: header must be exactly '{EXPR_HEADER}', got '{got}'")
    return _labels(path, lines[1:], 2)


def read_per_video(folder: Path) -> pd.DataFrame:
    """Every per-video file under folder as rows txtid, frame (1-based), pred."""
    parts = []
    for path in sorted((Path(folder) / PER_VIDEO_DIR).glob("*.txt")):
        labels = read_label_file(path)
        parts.append(pd.DataFrame({"txtid": path.stem, "frame": np.arange(1, len(labels) + 1),
                                   "pred": labels}))
    if not parts:
        raise DataError(f"{Path(folder) / PER_VIDEO_DIR}: no prediction file")
    return pd.concat(parts, ignore_index=True)


def validate_per_video(folder: Path, expected: pd.DataFrame, required: set[str]) -> None:
    """Every video of `expected` (txtid, frame) and every `required` txtid has a file with
    the exact header and one label 0..7 per frame; no other file is there."""
    folder = Path(folder) / PER_VIDEO_DIR
    counts = expected.groupby("txtid", sort=True).size()
    files = {p.stem: p for p in folder.glob("*.txt")} if folder.is_dir() else {}
    for txtid in sorted(set(counts.index) | set(required)):
        if txtid not in files:
            raise DataError(f"{folder / (txtid + '.txt')}: missing, video {txtid} has no prediction file")
    extra = sorted(set(files) - set(counts.index) - set(required))
    if extra:
        raise DataError(f"{files[extra[0]]}: not a video of this split ({len(extra)} such files)")
    for txtid, n in counts.items():
        got = len(read_label_file(files[txtid]))
        if got != n:
            raise DataError(f"{files[txtid]}:{min(got, n) + 2}: {got} label lines, the video has {n} frames")


def validate_template(path: Path, locations: list[str], required: set[str]) -> np.ndarray:
    """The single file has the exact header and, line by line, the template's locations in
    the template's order, each with a label 0..7. Returns the labels in template order."""
    lines = _lines(path)
    if not lines or lines[0] != EXPR_TEMPLATE_HEADER:
        got = lines[0][:80] if lines else "an empty file"
        raise DataError(f"{path}:1: header must be exactly '{EXPR_TEMPLATE_HEADER}', got '{got}'")
    body = lines[1:]
    labels = []
    for i, (line, loc) in enumerate(zip(body, locations)):
        if line[:len(loc) + 1] != loc + ",":
            raise DataError(f"{path}:{i + 2}: expected '{loc},<label>' (template order), got '{line[:80]}'")
        labels.append(line[len(loc) + 1:])
    if len(body) != len(locations):
        raise DataError(f"{path}:{min(len(body), len(locations)) + 2}: {len(body)} rows, the "
                        f"template has {len(locations)}")
    present = {loc.rpartition("/")[0] for loc in locations}
    missing = sorted(set(required) - present)
    if missing:
        raise DataError(f"{path}: test video {missing[0]} has no row ({len(missing)} videos missing)")
    return _labels(path, labels, 2)


# ---------------------------------------------------------------- scoring and zipping

def score_per_video(folder: Path, truth: pd.DataFrame) -> float:
    """Macro-F1 of the files on disk against truth (txtid, frame, label); every frame scored."""
    merged = truth[["txtid", "frame", "label"]].merge(read_per_video(folder), on=["txtid", "frame"],
                                                      how="left", validate="one_to_one")
    if merged.pred.isna().any():
        row = merged[merged.pred.isna()].iloc[0]
        raise DataError(f"{Path(folder) / PER_VIDEO_DIR / (row.txtid + '.txt')}: no line for frame {row.frame}")
    return macro_f1(merged.label.to_numpy(), merged.pred.to_numpy().astype(np.int64))


def write_zip(folder: Path, files: list[Path], out: Path) -> Path:
    """The files, named relative to folder, into out (atomic: a failed zip leaves no file)."""
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, arcname=Path(path).relative_to(folder).as_posix())
    return out
