"""Body and face keypoints from OpenPose's JSON output, one array per clip (DESIGN.md section 6).

OpenPose with --write_json writes one file per image or video frame, named
<anything>_<number>_keypoints.json or <number>_keypoints.json: '12_keypoints.json' for
the image 12.jpg (--image_dir), 'clip_000000000011_keypoints.json' for a video's 12th frame
(0-based). A frame is matched by the number right before '_keypoints.json', as an integer, so
the caller passes frame numbers in the numbering OpenPose saw. Each file holds
  {"version": 1.3, "people": [{"pose_keypoints_2d": [x, y, c, ...],   BODY_25: 75 values
                               "face_keypoints_2d": [...], ...}]}      70 points: 210 values

read_keypoints returns, per frame, the 25 body points then the 70 face points as (x, y, c):
  - one person is kept: the one with the largest face box (width x height of its face points
    with c > 0); people without face points come after any face, by summed body confidence;
  - x, y are moved to that person's face box: (x - box centre) / the box's larger side, so the
    face spans [-0.5, 0.5]; a person without face points uses the box of its body points;
  - c is kept as written, and a point with c == 0 (not detected) is (0, 0, 0);
  - mask is False (and the frame all zeros) where no person with a detected point exists,
    where the file is missing, or where it is not valid JSON; missing and malformed files are
    counted through `warnings` (kind 'openpose missing' / 'openpose malformed', naming the file);
  - a non-empty keypoint list of another length (another pose model, e.g. COCO's 18 points) is
    a DataError: every frame would be wrong, so the run stops and names the file.
An empty list (OpenPose run without --face) counts as points not detected.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from utils.affwild2 import DataError
from utils.console import WarningCounter

BODY_POINTS, FACE_POINTS = 25, 70
N_POINTS = BODY_POINTS + FACE_POINTS
JSON_NAME = re.compile(r"(\d+)_keypoints\.json$")
PARTS = (("pose_keypoints_2d", BODY_POINTS), ("face_keypoints_2d", FACE_POINTS))


def list_keypoint_files(folder: Path) -> dict[int, Path]:
    """Frame number -> file, for every *_keypoints.json in folder (empty if there is none)."""
    found: dict[int, Path] = {}
    if Path(folder).is_dir():
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                m = JSON_NAME.search(entry.name)
                if m:
                    found.setdefault(int(m.group(1)), Path(entry.path))
    return found


def read_people(path: Path) -> np.ndarray:
    """Every person of one file as (N, 95, 3) float32. ValueError if it is not OpenPose JSON."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise ValueError("no 'people' list")
    out = np.zeros((len(people), N_POINTS, 3), np.float32)
    for i, person in enumerate(people):
        if not isinstance(person, dict):
            raise ValueError(f"person {i} is not an object")
        start = 0
        for key, count in PARTS:
            values = person.get(key) or []
            if len(values) not in (0, 3 * count):
                raise DataError(f"{path}: '{key}' has {len(values)} values, expected {3 * count} "
                                "(BODY_25 body, 70-point face); rerun OpenPose with --model_pose BODY_25")
            if values:
                out[i, start:start + count] = np.asarray(values, np.float32).reshape(count, 3)
            start += count
    return out


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


def read_keypoints(folder, frame_numbers, warnings=None) -> tuple[np.ndarray, np.ndarray]:
    """(F, 95, 3) float32 normalised keypoints of the given frames, and (F,) bool mask."""
    warnings = warnings if warnings is not None else WarningCounter()
    folder = Path(folder)
    frame_numbers = np.asarray(frame_numbers, dtype=np.int64)
    files = list_keypoint_files(folder)
    points = np.zeros((len(frame_numbers), N_POINTS, 3), np.float32)
    missing = []
    for i, number in enumerate(frame_numbers):
        path = files.get(int(number))
        if path is None:
            missing.append(int(number))
            continue
        try:
            people = read_people(path)
        except (ValueError, TypeError, OSError) as err:   # JSONDecodeError is a ValueError
            warnings("openpose malformed", f"{path}: not OpenPose JSON ({err}); frame left empty")
            continue
        if len(people):
            points[i] = choose_person(people)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        warnings("openpose missing", f"{folder}: no *_keypoints.json for frame {missing[0]}{more}; "
                 "left empty", len(missing))
    return normalise(points)
