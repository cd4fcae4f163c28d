"""curves.png of a run: train loss, the validation metric and the learning rate per epoch.

The Trainer rewrites it after every epoch from log.jsonl (atomically: a viewer open on the file
never reads half of it), so a person can watch a run that is still training.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.runs import atomic_path


def read_log(run) -> list[dict]:
    """The records of run/log.jsonl in order; a last line cut short by a crash is skipped."""
    path, records = Path(run) / "log.jsonl", []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(run, title: str | None = None) -> Path | None:
    """Write run/curves.png from run/log.jsonl (epoch, train_loss, val_macro_f1, lr, selection_metric);
    None when the log is empty. Three panels side by side, 9 x 2.6 in at 100 dpi (~40 KB)."""
    records = read_log(run)
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")   # no display: training runs on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    metric = records[-1].get("selection_metric", "macro-F1")
    best = max(range(len(records)), key=lambda i: records[i]["val_macro_f1"])
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.6), dpi=100)
    panels = ((axes[0], "train_loss", "train loss", "tab:blue"), (axes[1], "val_macro_f1", f"val {metric}", "tab:green"),
              (axes[2], "lr", "learning rate (end of epoch)", "tab:orange"))
    for ax, key, label, colour in panels:
        ax.plot(epochs, [r[key] for r in records], marker="o", markersize=3, color=colour)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].plot([epochs[best]], [records[best]["val_macro_f1"]], "*", color="black", markersize=9,
                 label=f"best {records[best]['val_macro_f1']:.3f} (epoch {epochs[best]})")
    axes[1].legend(fontsize=7, loc="lower right")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[2].yaxis.get_offset_text().set_fontsize(7)
    fig.suptitle(title or Path(run).name, fontsize=9)
    fig.tight_layout()
    path = Path(run) / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
