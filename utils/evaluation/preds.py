"""The one prediction file every stage writes and reads (DESIGN.md section 4).

preds/<split>.npz covers every frame of every video of the split, ordered by (txtid, frame):
  txtid     str      (N,)
  frame     int32    (N,)   1-based
  label     int8     (N,)   -1 where unknown
  has_crop  bool     (N,)
  logits    float32  (N, C)
  features  float16  (N, D) or (N, 3, D) for the audio windows   [optional]
  logits_*  float32  (N, C) named heads, e.g. logits_image, logits_audio, logits_fusion
  has_audio bool     (N,)                                         [optional]
Loadable with np.load(path, allow_pickle=False).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.files import DataError
from utils.console import log
from utils.runs import save_npz

REQUIRED = ("txtid", "frame", "label", "has_crop", "logits")


def order_by_key(txtid: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Indices that sort rows by (txtid, frame): the order of every prediction file."""
    return np.lexsort((np.asarray(frame), np.asarray(txtid)))


def save_preds(path, *, txtid, frame, label, has_crop, logits, features=None, **extra) -> None:
    txtid = np.asarray(txtid).astype(str)
    frame = np.asarray(frame).astype(np.int32)
    n = len(txtid)
    arrays = {"txtid": txtid, "frame": frame, "label": np.asarray(label).astype(np.int8),
              "has_crop": np.asarray(has_crop).astype(bool),
              "logits": np.asarray(logits).astype(np.float32)}
    if features is not None:
        arrays["features"] = np.asarray(features).astype(np.float16)
    for key, value in extra.items():
        value = np.asarray(value)
        arrays[key] = value.astype(np.float32) if key.startswith("logits_") else value
    for key, value in arrays.items():
        if len(value) != n:
            raise ValueError(f"{path}: '{key}' has {len(value)} rows, txtid has {n}")
    if n and not np.array_equal(order_by_key(txtid, frame), np.arange(n)):
        raise ValueError(f"{path}: rows must be ordered by (txtid, frame)")
    save_npz(path, **arrays)


def skip_split(run, split: str, source) -> None:
    """A split without rows (a dataset with no test set): said once, and a preds file an earlier
    run wrote for it removed, so no stage reads predictions of frames that no longer exist."""
    stale = Path(run) / "preds" / f"{split}.npz"
    stale.unlink(missing_ok=True)
    log(f"{split}: no frames in {source}; preds/{split}.npz not written")


def load_preds(path, keys=None) -> dict[str, np.ndarray]:
    """The arrays of a prediction file; `keys` reads only those (and the required ones), so a
    stage that needs logits never reads gigabytes of features."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prediction file not found")
    with np.load(path, allow_pickle=False) as data:
        wanted = data.files if keys is None else [k for k in data.files if k in set(keys) | set(REQUIRED)]
        arrays = {key: data[key] for key in wanted}
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise DataError(f"{path}: not a prediction file, missing {missing}")
    n = len(arrays["txtid"])
    for key, value in arrays.items():
        if len(value) != n:
            raise DataError(f"{path}: '{key}' has {len(value)} rows, txtid has {n}")
    return arrays


def check_same_frames(a: dict, b: dict, name_a: str, name_b: str) -> None:
    """Refuse two prediction sets whose rows are not the same frames, naming the first mismatch."""
    ta, fa, tb, fb = a["txtid"], a["frame"], b["txtid"], b["frame"]
    n = min(len(ta), len(tb))
    bad = np.flatnonzero((ta[:n] != tb[:n]) | (fa[:n] != fb[:n]))
    if len(bad):
        i = bad[0]
        raise DataError(f"{name_b}: row {i} is {tb[i]}/{fb[i]:05d} but {name_a} has "
                        f"{ta[i]}/{fa[i]:05d}; the runs do not cover the same frames")
    if len(ta) != len(tb):
        longer, name, i = (a, name_a, n) if len(ta) > len(tb) else (b, name_b, n)
        raise DataError(f"{name}: has {max(len(ta), len(tb))} rows, the other run "
                        f"{min(len(ta), len(tb))}; first extra frame "
                        f"{longer['txtid'][i]}/{longer['frame'][i]:05d}")
