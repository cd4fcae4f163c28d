"""Ensemble finished runs: weights, temporal smoothing and class biases tuned on val macro-F1.

Usage: python ensemble.py --runs RUN[:HEAD] [RUN ...] [--name NAME] [--no-smooth] [--no-biases]

RUN is a run folder (globs allowed, e.g. 'runs/fusion/swin_mfm_seed*'); runs that differ only
by the `_seed<k>` suffix are averaged into one member. HEAD picks another logits array of the
prediction files (e.g. runs/fusion/x_seed0:logits_image); the default is `logits`.
Writes ensembles/<name>/ensemble.json (what make_submission.py applies), report.txt and
confusion_val.png, and prints every member and each stage with its gain, plus an honest
figure: tuned on half of the val videos and scored on the other half, then swapped.
"""
from __future__ import annotations

import glob
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from utils.files import DataError
from utils.classes import EXPR_CLASSES, NUM_EXPR_CLASSES
from utils.config import parse_config, to_dict
from utils.console import cli, log, table, warn
from utils.evaluation.ensemble import (SMOOTH_METHODS, SearchOptions, apply_spec, group_runs, honest_estimate,
                            load_members, predict, tune)
from utils.evaluation.metrics import expr_confusion, per_class_f1
from utils.runs import atomic_path, environment_info, is_complete, read_json, write_json, write_text


@dataclass
class EnsembleConfig:
    runs: list[str] = field(default_factory=list, metadata={"help": "run folders, globs allowed; RUN:HEAD picks a logits head"})
    name: str | None = field(default=None, metadata={"help": "ensemble name; empty: made from the member names"})
    out_dir: str = field(default="ensembles", metadata={"help": "parent folder of ensembles/<name>/"})
    data: str | None = field(default=None, metadata={"help": "prepared data dir to record; empty: the runs' config.json data"})
    step: float = field(default=0.05, metadata={"help": "weight grid step (1/step must be an integer)"})
    smooth: bool = field(default=True, metadata={"help": "tune temporal smoothing within each video"})
    smooth_methods: list[str] = field(default_factory=lambda: list(SMOOTH_METHODS), metadata={"help": "median and/or mean"})
    smooth_windows: list[int] = field(default_factory=lambda: [5, 9, 15, 25, 45], metadata={"help": "window lengths in frames to try"})
    biases: bool = field(default=True, metadata={"help": "tune per-class biases on the log-probabilities"})
    bias_range: float = field(default=2.0, metadata={"help": "biases are tried in [-range, range]"})
    bias_step: float = field(default=0.1, metadata={"help": "step of the bias values tried"})
    split_seed: int = field(default=0, metadata={"help": "seed of the val halves of the honest figure"})


def resolve_runs(specs: list[str]) -> list[tuple[Path, str]]:
    """Expand globs of 'RUN[:HEAD]' into complete run folders, in a stable order."""
    runs = []
    for spec in specs:
        pattern, head = spec, "logits"
        before, sep, after = spec.rpartition(":")
        if sep and after.startswith("logits"):
            pattern, head = before, after
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise DataError(f"{pattern}: no run folder matches")
        for match in matches:
            path = Path(match)
            if not path.is_dir():
                raise DataError(f"{path}: run folder not found")
            if not is_complete(path):
                raise DataError(f"{path}: run is not complete (no metrics.json)")
            runs.append((path, head))
    return runs


def data_dir_of(runs: list[tuple[Path, str]]) -> str | None:
    """The prepared data folder the runs were trained on, from their config.json."""
    found = []
    for run, _ in runs:
        try:
            found.append(read_json(run / "config.json")["config"]["data"])
        except (OSError, KeyError, TypeError, ValueError):
            warn(f"{run / 'config.json'}: no config.data recorded")
    if len({str(Path(d).resolve()) for d in found}) > 1:
        warn(f"the runs were trained on different data folders {sorted(set(found))}; using {found[0]}")
    return found[0] if found else None


def default_name(members) -> str:
    name = "+".join(m.name.replace("/", "-").replace(":", "-") for m in members)
    return name if len(name) <= 80 else "ensemble_" + hashlib.sha1(name.encode()).hexdigest()[:8]


def pct(*values) -> list[str]:
    return [f"{100 * v:.2f}" for v in values]


def save_confusion(path: Path, labels, preds, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = expr_confusion(labels, preds)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)     # rows: recall per true class
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(NUM_EXPR_CLASSES):
        for j in range(NUM_EXPR_CLASSES):
            ax.text(j, i, f"{share[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(NUM_EXPR_CLASSES), EXPR_CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(NUM_EXPR_CLASSES), EXPR_CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run(cfg: EnsembleConfig) -> Path:
    if not cfg.runs:
        raise DataError("no run given: pass --runs RUN [RUN ...]")
    if abs(round(1 / cfg.step) * cfg.step - 1) > 1e-9:
        raise DataError(f"--step {cfg.step}: 1/step must be an integer")
    bad = [m for m in cfg.smooth_methods if m not in SMOOTH_METHODS]
    if bad or any(w < 2 for w in cfg.smooth_windows):
        raise DataError(f"smoothing methods must be in {SMOOTH_METHODS} and windows >= 2")
    runs = resolve_runs(cfg.runs)
    members = group_runs(runs)
    name = cfg.name or default_name(members)
    out = Path(cfg.out_dir) / name
    log(f"{len(members)} member(s) from {len(runs)} run(s): " + ", ".join(
        f"{m.name} ({len(m.runs)} seed{'s' if len(m.runs) > 1 else ''})" for m in members))

    probs, ref = load_members(members, "val")
    txtid, labels = ref["txtid"], ref["label"]
    options = SearchOptions(step=cfg.step, biases=cfg.biases, bias_range=cfg.bias_range,
                            bias_step=cfg.bias_step, smooth_methods=cfg.smooth_methods,
                            smooth_windows=cfg.smooth_windows if cfg.smooth else [])
    tuned = tune(probs, txtid, labels, options, progress="search on val")
    honest = honest_estimate(probs, txtid, labels, options, cfg.split_seed, progress="honest estimate")

    # Every reported figure comes from apply_spec and utils.evaluation.metrics: the same path that
    # make_submission.py takes, so its val score must match these numbers exactly.
    rows, member_info = [], []
    for member, p, w in zip(members, probs, tuned.specs["biases"]["weights"]):
        f1 = per_class_f1(labels, predict(p))
        member_info.append({"name": member.name, "runs": member.runs, "head": member.head,
                            "weight": w, "val_macro_f1": float(f1.mean()), "val_per_class_f1": f1.tolist()})
        rows.append([member.name, f"{w:.2f}", *pct(f1.mean(), *f1)])
    stage_f1, preds = {}, None
    smoothing = tuned.specs["biases"]["smoothing"]
    labels_of = {"weights": "ensemble (weights)",
                 "smoothing": "+ smoothing" + (f" ({smoothing['method']} {smoothing['window']})" if smoothing else " (none)"),
                 "biases": "+ class biases" if cfg.biases else "+ class biases (off)"}
    for stage, spec in tuned.specs.items():
        preds = apply_spec(probs, txtid, spec)
        stage_f1[stage] = per_class_f1(labels, preds)
        rows.append([labels_of[stage], "", *pct(stage_f1[stage].mean(), *stage_f1[stage])])
    final = float(stage_f1["biases"].mean())
    if honest:
        rows.append(["honest (split-half)", "", *pct(honest["macro_f1"])] + [""] * NUM_EXPR_CLASSES)
    best_member = max(m["val_macro_f1"] for m in member_info)
    gains = {"weights": float(stage_f1["weights"].mean()) - best_member,
             "smoothing": float(stage_f1["smoothing"].mean() - stage_f1["weights"].mean()),
             "biases": float(stage_f1["biases"].mean() - stage_f1["smoothing"].mean())}

    columns = ["model", "weight", "F1", *(c[:3] for c in EXPR_CLASSES)]
    t = table(f"val F1 in % ({int((labels >= 0).sum()):,} labelled frames)", columns, rows)
    summary = [f"gain of the weights over the best member: {100 * gains['weights']:+.2f} points",
               f"gain of smoothing: {100 * gains['smoothing']:+.2f} points" + (f" ({smoothing['method']}, window {smoothing['window']})" if smoothing else " (none kept)"),
               f"gain of class biases: {100 * gains['biases']:+.2f} points"]
    if honest:
        s = honest["stages"]
        summary.append(f"honest val macro-F1 (tuned on one half of the videos, scored on the other, "
                       f"swapped): {100 * honest['macro_f1']:.2f}  [weights {100 * s['weights']:.2f}, "
                       f"+ smoothing {100 * s['smoothing']:.2f}, + biases {100 * s['biases']:.2f}]")
    else:
        summary.append("honest val macro-F1: not computed (val has fewer than two videos)")
    for line in summary:
        log(line)

    spec = tuned.specs["biases"]
    pred_counts = np.bincount(preds, minlength=NUM_EXPR_CLASSES)   # all frames, as on test
    write_json(out / "ensemble.json", {
        "name": name, "data": cfg.data or data_dir_of(runs), "classes": list(EXPR_CLASSES),
        "members": member_info, **spec,
        "val": {"macro_f1": final, "per_class_f1": stage_f1["biases"].tolist(),
                "frames": int(len(labels)), "labelled": int((labels >= 0).sum()),
                "stages": {"best_member": best_member, **{k: float(v.mean()) for k, v in stage_f1.items()}},
                "gains": gains, "honest": honest, "smoothing_tried": tuned.smoothing_tried,
                "label_counts": np.bincount(labels[labels >= 0], minlength=NUM_EXPR_CLASSES).tolist(),
                "pred_counts": pred_counts.tolist()},
        "search": to_dict(cfg), "environment": environment_info()})
    text = Console(file=io.StringIO(), width=160, record=True)
    text.print(t)
    write_text(out / "report.txt", text.export_text() + "\n".join(summary) + "\n")
    save_confusion(out / "confusion_val.png", labels, preds, f"{name}: val macro-F1 {final:.4f}")
    log(f"wrote {out / 'ensemble.json'} (val macro-F1 {100 * final:.2f}), report.txt, confusion_val.png")
    return out


def main(argv=None) -> Path:
    cfg = parse_config(EnsembleConfig, argv, description=__doc__.split("\n")[0])
    try:
        return run(cfg)
    except DataError as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    cli(main)
