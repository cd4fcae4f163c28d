"""Body and face keypoints from OpenPose's JSON output, one array per clip (DESIGN.md section 6).

OpenPose with --write_json writes one file per image or video frame, named
<anything>_<number>_keypoints.json or <number>_keypoints.json: '12_keypoints.json' for the image
12.jpg (--image_dir), 'clip_000000000011_keypoints.json' for a video's 12th frame (--video:
12 digits, counted from 0). A frame is matched by the number right before '_keypoints.json'.
Each file holds {"version": ..., "people": [{<pose key>: [x, y, c, ...], <face key>: [...]}]}
with the key names of its version:
  - OpenPose 1.0 (2017): "pose_keypoints", "face_keypoints";
  - OpenPose 1.1 and later (and the tools that write its format): "pose_keypoints_2d",
    "face_keypoints_2d" (the *_3d keys of the 3-D module and the hands are not read);
and the body model of its run: BODY_25 (25 points, the default since 1.4), COCO (18 points, the
default before, and what most OpenPose re-implementations write) or MPI (15 points). COCO and
MPI points are put in the BODY_25 slots of the same joints (OpenPose's doc/02_output.md), the
others left undetected; a list of any other length is a DataError naming the file.

read_keypoints returns, per frame, the 25 body points then the 70 face points as (x, y, c):
  - one person is kept: the one with the largest face box (width x height of its face points
    with c > 0); people without face points come after any face, by summed body confidence;
  - x, y are moved to that person's face box: (x - box centre) / the box's larger side, so the
    face spans [-0.5, 0.5]; a person without face points uses the box of its body points;
  - c is kept as written, and a point with c == 0 (not detected) is (0, 0, 0);
  - a point with a NaN, infinite or null value is not detected, and counted ('openpose
    non-finite', naming the file);
  - mask is False (and the frame all zeros) where no person with a detected point exists,
    where the file is missing, or where it is not valid JSON; missing and malformed files are
    counted through `warnings` (kind 'openpose missing' / 'openpose malformed', naming the file);
  - a person with none of the known keys, but other keys, is a DataError naming the file and the
    keys it has: its points would all be read as missing.
An empty list (OpenPose run without --face) counts as points not detected. `stats` (a
KeypointStats) totals the files read and the points found, so the caller can refuse a run that
found keypoint files but no keypoint in them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


from utils.console import WarningCounter
from utils.files import DataError, listdir, read_text

BODY_POINTS, FACE_POINTS = 25, 70
N_POINTS = BODY_POINTS + FACE_POINTS
JSON_NAME = re.compile(r"(\d+)_keypoints\.json$", re.IGNORECASE)
VIDEO_NUMBER = re.compile(r"_(\d{12})_keypoints\.json$", re.IGNORECASE)   # --video output: 0-based
POSE_KEYS = ("pose_keypoints_2d", "pose_keypoints")
FACE_KEYS = ("face_keypoints_2d", "face_keypoints")
KNOWN_KEYS = POSE_KEYS + FACE_KEYS
# BODY_25 slot of each point of the other body models (OpenPose doc/02_output.md); -1: no such joint.
# COCO: nose, neck, r/l shoulder-elbow-wrist, r/l hip-knee-ankle, r/l eye, r/l ear.
BODY_SLOTS = {25: np.arange(25),
              18: np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]),
              # MPI: head top and chest have no BODY_25 joint.
              15: np.array([-1, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, -1])}


@dataclass
class KeypointStats:
    found: int = 0                                   # keypoint files looked at
    files: int = 0                                   # of them, read as OpenPose JSON
    points: int = 0                                  # detected points (c > 0) in them
    keys: set = field(default_factory=set)           # every key seen on a person
    first_error: str = ""                            # why the first unreadable file was not read


def list_keypoint_files(folder: Path) -> dict[int, Path]:
    """Frame number -> file, for every *_keypoints.json in folder (empty if there is none)."""
    found: dict[int, Path] = {}
    if Path(folder).is_dir():
        for entry in listdir(folder):
            m = JSON_NAME.search(entry.name)
            if m:
                found.setdefault(int(m.group(1)), Path(entry.path))
    return found


def _values(person: dict, keys, path: Path, count_points: int | None) -> tuple[np.ndarray, str]:
    """The first present key's values as (points, 3) float64 (None -> NaN), and the key."""
    for key in keys:
        values = person.get(key)
        if values:
            break
    else:
        return np.zeros((0, 3)), ""
    if not isinstance(values, list):
        raise ValueError(f"'{key}' is not a list")
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if len(array) % 3 or (count_points is not None and len(array) != 3 * count_points) or \
            (count_points is None and len(array) // 3 not in BODY_SLOTS):
        expected = f"{3 * count_points}" if count_points else "75 (BODY_25), 54 (COCO) or 45 (MPI)"
        raise DataError(f"{path}: '{key}' has {len(array)} values, expected {expected}; "
                        "rerun OpenPose with --model_pose BODY_25")
    return array.reshape(-1, 3), key


def read_people(path: Path, stats: KeypointStats | None = None) -> tuple[np.ndarray, int]:
    """Every person of one file as (N, 95, 3) float32, and the count of points dropped for a
    non-finite value. ValueError if it is not OpenPose JSON; DataError for another body model
    or a person with only unknown keys."""
    try:
        data = json.loads(read_text(path))
    except DataError as err:   # not text: malformed like any other unreadable JSON
        raise ValueError(str(err).split(": ", 1)[-1]) from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise ValueError("no 'people' list")
    out = np.zeros((len(people), N_POINTS, 3), np.float32)
    dropped = 0
    for i, person in enumerate(people):
        if not isinstance(person, dict):
            raise ValueError(f"person {i} is not an object")
        if stats is not None:
            stats.keys.update(person)
        if person and not any(k in person for k in KNOWN_KEYS):
            raise DataError(f"{path}: a person has none of the OpenPose keys {list(KNOWN_KEYS)} (it has "
                            f"{sorted(person)[:6]}); not an OpenPose --write_json file")
        body, _ = _values(person, POSE_KEYS, path, None)
        face, _ = _values(person, FACE_KEYS, path, FACE_POINTS)
        points = np.zeros((N_POINTS, 3))
        if len(body):
            slots = BODY_SLOTS[len(body)]
            points[slots[slots >= 0]] = body[slots >= 0]
        if len(face):
            points[BODY_POINTS:] = face
        bad = ~np.isfinite(points).all(axis=1)
        dropped += int(bad.sum())
        points[bad] = 0.0
        out[i] = points
    if stats is not None:
        stats.files += 1
        stats.points += int((out[..., 2] > 0).sum())
    return out, dropped


def choose_person(people: np.ndarray) -> np.ndarray:
    """The (95, 3) points of the person with the largest face box (see the module docstring)."""
    if len(people) == 1:
        return people[0]
    lo, hi, has = _boxes(people[:, BODY_POINTS:], people[:, BODY_POINTS:, 2] > 0)
    area = np.where(has, np.prod(hi - lo, axis=-1), -1.0)
    body_confidence = people[:, :BODY_POINTS, 2].sum(axis=1)
    return people[np.lexsort((body_confidence, area, has))[-1]]


def _boxes(points: np.ndarray, valid: np.ndarray):
    """Bounding boxes over the last-but-one axis of the valid points: (lo, hi, any valid)."""
    xy = points[..., :2]
    lo = np.where(valid[..., None], xy, np.inf).min(axis=-2)
    hi = np.where(valid[..., None], xy, -np.inf).max(axis=-2)
    has = valid.any(axis=-1)
    return np.where(has[..., None], lo, 0.0), np.where(has[..., None], hi, 0.0), has


def normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, 95, 3) image coordinates -> face-box coordinates, and which frames have any point."""
    valid = points[..., 2] > 0
    box_valid = valid.copy()
    has_face = valid[:, BODY_POINTS:].any(axis=1)
    box_valid[has_face, :BODY_POINTS] = False    # the face box wherever there is a face
    lo, hi, has = _boxes(points, box_valid)
    side = (hi - lo).max(axis=1)
    side = np.where(side > 0, side, 1.0)          # a single point: shift only
    out = points.copy()
    out[..., :2] = (points[..., :2] - ((lo + hi) / 2)[:, None]) / side[:, None, None]
    out[~valid] = 0.0
    return out.astype(np.float32), has


def video_numbering_offset(files: dict[int, Path], frame_numbers) -> int:
    """1 when the files are OpenPose --video output (12-digit numbers from 0) and the frames are
    numbered from 1 (frame n is the video's frame n - 1), else 0."""
    if not files or not len(frame_numbers) or min(files) != 0 or min(frame_numbers) != 1:
        return 0
    return 1 if VIDEO_NUMBER.search(files[0].name) else 0


def read_keypoints(folder, frame_numbers, warnings=None, files: dict[int, Path] | None = None,
                   stats: KeypointStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(F, 95, 3) float32 normalised keypoints of the given frames, and (F,) bool mask.

    `files` (frame number -> file) replaces the listing of `folder`, for OpenPose output of
    many clips in one flat folder."""
    warnings = warnings if warnings is not None else WarningCounter()
    folder = Path(folder)
    frame_numbers = np.asarray(frame_numbers, dtype=np.int64)
    files = list_keypoint_files(folder) if files is None else files
    offset = video_numbering_offset(files, frame_numbers)
    if offset:
        warnings("openpose video numbering", f"{folder}: OpenPose --video output (frames counted from 0): "
                 "frame n is read from file n - 1")
    points = np.zeros((len(frame_numbers), N_POINTS, 3), np.float32)
    missing = []
    for i, number in enumerate(frame_numbers):
        path = files.get(int(number) - offset)
        if path is None:
            missing.append(int(number))
            continue
        if stats is not None:
            stats.found += 1
        try:
            people, dropped = read_people(path, stats)
        except (ValueError, TypeError) as err:   # JSONDecodeError is a ValueError
            warnings("openpose malformed", f"{path}: not OpenPose JSON ({err}); frame left empty")
            if stats is not None and not stats.first_error:
                stats.first_error = f"{path}: {err}"
            continue
        if dropped:
            warnings("openpose non-finite", f"{path}: {dropped} points with a NaN, infinite or null value; "
                     "read as not detected", dropped)
        if len(people):
            points[i] = choose_person(people)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        warnings("openpose missing", f"{folder}: no *_keypoints.json for frame {missing[0]}{more}; "
                 "left empty", len(missing))
    return normalise(points)
