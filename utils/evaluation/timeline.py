"""A video's predictions as one picture: a strip of its face crops, the 8 class probabilities over
time, and the predicted label as a coloured band, with the frames without a face shaded."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.classes import EXPR_CLASSES
from utils.runs import atomic_path

# Colour-blind-safe (Okabe-Ito) plus grey for Other; the same colour in the curves and the band.
COLOURS = ("#999999", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#0072B2", "#56B4E9", "#444444")


def no_face_spans(time: np.ndarray, has_face: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of each run of frames without a face; a frame spans [t, t + dt)."""
    dt = float(np.median(np.diff(time))) if len(time) > 1 else 1.0
    spans, start = [], None
    for t, face in zip(time, has_face):
        if not face and start is None:
            start = t
        elif face and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, float(time[-1]) + dt))
    return spans


def plot_timeline(path: Path, title: str, time: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                  has_face: np.ndarray, crops: list[tuple[float, np.ndarray | None]], dpi: int = 80) -> Path:
    """Write the PNG. time (N,) seconds of each frame, probs (N, 8) float, labels (N,) int 0..7,
    has_face (N,) bool, crops: (time, H x W x 3 uint8 RGB or None) for the strip, left to right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 5.2), dpi=dpi)
    grid = fig.add_gridspec(3, 1, height_ratios=[1.3, 3, 0.35], hspace=0.2)
    strip, curves, band = (fig.add_subplot(grid[i]) for i in range(3))
    size = next((c.shape[0] for _, c in crops if c is not None), 112)
    tiles = [c if c is not None else np.full((size, size, 3), 235, np.uint8) for _, c in crops]
    if tiles:
        strip.imshow(np.concatenate(tiles, axis=1))
        for i, (t, c) in enumerate(crops):
            strip.text(i * size + size / 2, size - 4, f"{t:.1f}s" if c is not None else f"{t:.1f}s\nno face",
                       ha="center", va="bottom", fontsize=7, color="white" if c is not None else "black")
    strip.set_axis_off()
    strip.set_title(title, fontsize=10, loc="left")
    end = float(time[-1]) + (float(np.median(np.diff(time))) if len(time) > 1 else 1.0)
    for name, colour, p in zip(EXPR_CLASSES, COLOURS, probs.T):
        curves.plot(time, p, color=colour, lw=1.4, label=name)
    for a, b in no_face_spans(time, has_face):
        curves.axvspan(a, b, color="black", alpha=0.08, lw=0)
        band.axvspan(a, b, color="black", alpha=0.08, lw=0)
    curves.set_xlim(0, end)
    curves.set_ylim(0, 1)
    curves.set_ylabel("probability")
    curves.tick_params(labelbottom=False)
    curves.legend(ncol=8, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 0.98), frameon=False)
    curves.grid(alpha=0.3)
    edges = np.r_[time, end]
    for i in np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]):
        j = i + 1
        while j < len(labels) and labels[j] == labels[i]:
            j += 1
        band.axvspan(edges[i], edges[j], color=COLOURS[labels[i]], lw=0)
        if edges[j] - edges[i] > 0.06 * end:
            band.text((edges[i] + edges[j]) / 2, 0.5, EXPR_CLASSES[labels[i]], ha="center", va="center",
                      fontsize=7, color="white")
    band.set_xlim(0, end)
    band.set_yticks([])
    band.set_ylabel("label", rotation=0, ha="right", va="center", fontsize=8)
    band.set_xlabel("time (s); shaded: no face")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)
