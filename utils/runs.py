"""Run directories, atomic writes, seeding and the provenance saved with every run.

Layout of a run (DESIGN.md section 4): runs/<branch>/<name>_seed<k>/ with config.json,
log.jsonl, best.pt, last.pt, preds/<split>.npz and metrics.json, written last.
"""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

KIT_ROOT = Path(__file__).resolve().parent.parent
TRACKED_PACKAGES = ("torch", "torchvision", "torchaudio", "timm", "numpy", "pandas",
                    "scikit-learn", "albumentations", "av", "pyarrow")

_UMASK = os.umask(0o022)
os.umask(_UMASK)   # the umask can only be read by setting it: read once, at import


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A killed process leaves either the old file or the new one, never half of one. The file gets
    the permissions of a plain open() under the user's umask (mkstemp's own 0600 would hide runs
    from the rest of a lab sharing a cluster).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_parquet(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def save_torch(path, obj) -> None:
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path, record: dict) -> None:
    # One short line per append: a crash can at worst lose the line being written.
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=KIT_ROOT, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=KIT_ROOT, capture_output=True, text=True, timeout=10).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_commit": git_commit(), "python": sys.version.split()[0],
            "platform": platform.platform(), "argv": sys.argv, "packages": versions}


def run_dir(root: str | os.PathLike, branch: str, name: str, seed: int) -> Path:
    return Path(root) / branch / f"{name}_seed{seed}"


def is_complete(run: str | os.PathLike) -> bool:
    """metrics.json is written last: its presence means the run finished."""
    return (Path(run) / "metrics.json").is_file()


def save_config(run: Path, config: dict) -> None:
    write_json(Path(run) / "config.json", {"config": config, "environment": environment_info()})
