"""Compare a demo's figures with the README's (demo_figures.json), so drift is caught, not published.

Usage: python check_figures.py --dataset dfew --seed 0 [--demo demo]   (the last step of make demo)
       python check_figures.py --dataset dfew --seed 1 --update        (after measuring: record them)

The README's demo tables were measured on CPU with the packages of requirements.lock and the
thread count of `make demo` (THREADS, 2); demo_figures.json holds the same figures, the lock's
sha256 and the thread count (tests/test_figures.py checks that the README shows what the file
holds). The same seed on the same lock and thread count gives the same figures on any x86-64
machine; other library versions or thread counts change float sums, hence the figures.
This script prints "same as README" or "differs from README:" with every figure that moved,
then what differs from the measuring setup (packages not at the lock's version, another lock,
another thread count). --strict exits 1 when a figure differs.
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from utils.config import parse_config
from utils.console import log
from utils.runs import read_json, write_json

ROOT = Path(__file__).resolve().parent
FIGURES = ROOT / "demo_figures.json"
LOCK = ROOT / "requirements.lock"
PINNED = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


@dataclass
class CheckConfig:
    dataset: str = field(default="affwild2", metadata={"choices": ["affwild2", "dfew"]})
    seed: int = 0
    demo: str = field(default="demo", metadata={"help": "the demo's output folder"})
    update: bool = field(default=False, metadata={"help": "record this demo's figures in demo_figures.json"})
    strict: bool = field(default=False, metadata={"help": "exit 1 when a figure differs from the README's"})


def measured(dataset: str, demo: Path, seed: int) -> dict[str, float]:
    """The figures the README shows, rounded as it shows them: Aff-Wild2's Table 2 (val
    macro-F1 in %, 2 decimals), DFEW's ablation (mean test UAR and WAR over the folds, 4 decimals)."""
    if dataset == "affwild2":
        path = demo / "runs" / "fusion" / f"demo_seed{seed}" / "metrics.json"
        rows = _read(path)["table_2"]
        return {name: round(100 * value, 2) for name, value in rows.items()}
    path = demo / "runs" / "temporal" / f"demo-ablation_seed{seed}" / "metrics.json"
    return {f"{setting} {metric}": round(result[f"mean_test_{metric.lower()}"], 4)
            for setting, result in _read(path).items() for metric in ("UAR", "WAR")}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path}: not found; the demo has not finished")
    return read_json(path)


def lock_sha256(path: Path = LOCK) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "none"


def threads() -> int:
    import torch
    return torch.get_num_threads()


def off_lock(path: Path = LOCK) -> list[str]:
    """'name installed (lock version)' for each package of the lock, for this Python and
    platform, that is missing or installed at another version."""
    from packaging.markers import Marker
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        m = PINNED.match(line.strip())
        if not m or (m.group(3) and not Marker(m.group(3)).evaluate()):
            continue
        try:
            installed = metadata.version(m.group(1))
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed.split("+")[0] != m.group(2).split("+")[0]:
            out.append(f"{m.group(1)} {installed} (lock {m.group(2)})")
    return out


def compare(expected: dict[str, float], got: dict[str, float]) -> list[str]:
    """'name got (README expected)' for each figure that differs, is missing or is new."""
    return [f"{name} {got.get(name, 'missing')} (README {expected.get(name, 'none')})"
            for name in {**expected, **got} if expected.get(name) != got.get(name)]


def main(argv=None) -> bool:
    cfg = parse_config(CheckConfig, argv, description=__doc__.split("\n")[0])
    book = read_json(FIGURES) if FIGURES.is_file() else {"measured_with": {}}
    expected = book.get(cfg.dataset, {}).get(str(cfg.seed))
    if expected is None and not cfg.update:
        log(f"figures: the README has none for {cfg.dataset} seed {cfg.seed} (demo_figures.json)")
        return True
    got = measured(cfg.dataset, Path(cfg.demo), cfg.seed)
    setup = dict(lock=lock_sha256(), threads=threads(), python=".".join(map(str, sys.version_info[:2])))
    if cfg.update:
        book.setdefault(cfg.dataset, {})[str(cfg.seed)] = got
        book["measured_with"] = setup
        write_json(FIGURES, book)
        log(f"recorded {cfg.dataset} seed {cfg.seed} in {FIGURES.name}; update the README's tables to match")
        return True
    differ = compare(expected, got)
    if not differ:
        log(f"figures: same as README ({cfg.dataset}, seed {cfg.seed}; requirements.lock {setup['lock']}, "
            f"{setup['threads']} threads)")
        return True
    log(f"figures: differs from README ({cfg.dataset}, seed {cfg.seed}): " + "; ".join(differ))
    was = book["measured_with"]
    causes = [f"installed {p}" for p in off_lock()]
    causes += [f"{k} {setup[k]} (README: {was.get(k)})" for k in ("lock", "threads", "python") if setup[k] != was.get(k)]
    log("  the README was measured with requirements.lock {lock}, {threads} threads, Python {python}; ".format(**was)
        + ("here: " + "; ".join(causes[:8]) + (f" and {len(causes) - 8} more" if len(causes) > 8 else "")
           if causes else "the same setup here: the code or the data changed, or another CPU computes otherwise"))
    if cfg.strict:
        raise SystemExit(1)
    return False


if __name__ == "__main__":
    main()
