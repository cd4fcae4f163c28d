"""Walking dataset trees and reading their text files as other systems leave them.

Every walk of a dataset tree goes through walk() or listdir(), so operating-system and archive
debris is never taken for data: macOS AppleDouble files (`._00001.jpg`, written beside every file
copied to a non-Mac disk), `__MACOSX/` folders of zips made on a Mac, `.DS_Store`, Windows'
`Thumbs.db` and `desktop.ini`, and every other hidden name (a leading dot: `.git/`, `.ipynb_checkpoints/`).

Every text file (label files, split lists, templates, annotation lists) is read by read_text(),
which decodes UTF-8 with or without a byte-order mark, and UTF-16 with one (what Windows tools
such as Notepad and Excel write as "Unicode"); anything else is a DataError naming the file and
the byte, never a UnicodeDecodeError traceback. Line endings of every system are accepted.

numbered_images() reads a folder of frame images named by their number, with any common image
extension in any case, whatever the padding (`00001.jpg`, `1.png`, `frame_det_00_000001.bmp`:
the last run of digits in the name is the frame number).
"""
from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

# Besides hidden names: archive and OS leftovers, and what NAS boxes add to shared folders
# (Synology's @eaDir thumbnails and #recycle, QNAP's @Recycle, Linux's lost+found, macOS's Icon\r).
DEBRIS_NAMES = frozenset({"__MACOSX", "Thumbs.db", "thumbs.db", "ehthumbs.db", "desktop.ini", "Desktop.ini",
                          "$RECYCLE.BIN", "System Volume Information", "@eaDir", "#recycle", "#snapshot",
                          "@Recycle", "@Recently-Snapshot", "lost+found", "Icon\r"})
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Containers PyAV (FFmpeg) opens that cameras, phones, broadcast and web tools write: camcorder
# AVCHD (.mts/.m2ts), MPEG transport streams, 3GPP/3GPP2 from phones, Flash, Ogg, ASF.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".flv", ".f4v", ".mpg", ".mpeg", ".wmv",
                    ".asf", ".3gp", ".3g2", ".mts", ".m2ts", ".ts", ".ogv", ".vob", ".mxf")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class DataError(Exception):
    """Input that makes the dataset unusable; the message names the file."""


def is_debris(name: str) -> bool:
    """True for names no dataset means: hidden files and folders, AppleDouble, OS thumbnails."""
    return name.startswith(".") or name in DEBRIS_NAMES


def walk(root):
    """os.walk(root, followlinks=True) in sorted order, without debris folders or files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_debris(d))
        yield dirpath, dirnames, sorted(f for f in filenames if not is_debris(f))


def listdir(folder) -> list[os.DirEntry]:
    """The entries of one folder without debris, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not is_debris(e.name)), key=lambda e: e.name)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def whole_number(text: str) -> int | None:
    """The integer a label field means, as other tools write it: '4', ' 4 ', '+4', '4.0' (pandas
    writes integer columns that held a NaN as floats), '4e0'; None for '4.5', 'nan', 'inf', ''."""
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None   # False for nan and inf


def frame_number(name: str) -> int | None:
    """The last run of digits in a file name's stem ('00001_00017.jpg' -> 17), None if none."""
    m = _NUMBER.search(os.path.splitext(name)[0])
    return int(m.group(1)) if m else None


def numbered_images(folder) -> tuple[dict[int, str], list[tuple[int, str, str]]]:
    """Frame number -> path of every numbered image in `folder` (debris excluded).

    Returns (found, clashes): two files with the same number (`00001.jpg` beside `00001.png`, or
    OpenFace's `frame_det_00_000001.bmp` beside `frame_det_01_000001.bmp`) keep the first by name,
    and each other one is listed in clashes as (number, kept path, dropped path) for the caller
    to count."""
    found: dict[int, str] = {}
    clashes = []
    for entry in listdir(folder):
        if not is_image(entry.name):
            continue
        number = frame_number(entry.name)
        if number is None:
            continue
        if number in found:
            clashes.append((number, found[number], entry.path))
        else:
            found[number] = entry.path
    return found, clashes


def read_text(path) -> str:
    """The whole text of a file, decoded as UTF-8 (a BOM is dropped) or, with a BOM, UTF-16.

    Raises DataError naming the file if it cannot be read or is not text in those encodings.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not {encoding.replace('-sig', '')} text (undecodable byte "
                        f"0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise DataError(f"{path}: holds NUL characters; not a text file")
    return text


def read_lines(path) -> list[str]:
    """read_text() split into lines (\\n, \\r\\n and \\r all end a line)."""
    return read_text(path).splitlines()
