"""Ensembling of prediction files: members, weight search, temporal smoothing, class biases.

An ensemble is applied in one fixed order, by ensemble.py on val and make_submission.py on
test (apply_spec):
  1. each member: softmax of its logits, averaged over the runs that differ only by seed;
  2. P = sum_m w_m P_m, with w_m >= 0 and sum w_m = 1;
  3. optional smoothing of P within each video (txtid): median or mean over a window of
     frames, the edges padded with the nearest frame;
  4. label = argmax(log(P) + bias), one additive bias per class.
Each stage is tuned on val macro-F1 given the stages before it, and a stage is kept only if
it improves the score, so on the data it was tuned on no stage can lower it. Because all of
it is tuned on val, honest_estimate() also tunes on half of the val videos and scores on the
other half (and swaps).

Each search stage shows its progress when given a `progress` description (utils.console.Progress:
a bar on a terminal, done/total, rate and ETA lines in a log; None is silent).

The search loops score thousands of candidates, so they use fast_macro_f1 (a bincount, equal
to utils.evaluation.metrics.macro_f1 on frames already stripped of -1); reported figures use utils.evaluation.metrics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from utils.files import DataError
from utils.readers.affwild2 import videoid_of
from utils.classes import IGNORE_LABEL, NUM_EXPR_CLASSES
from utils.evaluation.metrics import macro_f1
from utils.evaluation.preds import check_same_frames, load_preds
from utils.console import Progress

EPS = 1e-6            # floor before the log, so a smoothed probability of 0 stays finite
SMOOTH_METHODS = ("median", "mean")
MIN_GAIN = 1e-12      # a stage or a move must beat the current score by more than rounding
SEED_SUFFIX = re.compile(r"^(?P<stem>.+)_seed(?P<seed>\d+)$")


# ---------------------------------------------------------------- members (runs on disk)

@dataclass
class Member:
    """One ensemble member: the runs of one model that differ only by seed, and the head used."""
    name: str
    runs: list[str]
    head: str = "logits"


def group_runs(runs: list[tuple[Path, str]]) -> list[Member]:
    """Group (run dir, head) pairs into members: same path but for `_seed<k>`, same head."""
    members: dict[tuple[str, str], Member] = {}
    for run, head in runs:
        run = Path(run)
        m = SEED_SUFFIX.match(run.name)
        stem = m.group("stem") if m else run.name
        key = (str(run.parent / stem), head)
        if key not in members:
            name = f"{run.parent.name}/{stem}" if run.parent.name else stem
            members[key] = Member(name if head == "logits" else f"{name}:{head}", [], head)
        if str(run) not in members[key].runs:
            members[key].runs.append(str(run))
    return list(members.values())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.array(logits, dtype=np.float32)          # a copy, changed in place below
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def load_members(members: list[Member], split: str) -> tuple[list[np.ndarray], dict]:
    """Probabilities of each member on `split` (seeds averaged) and the frames they cover.

    Every run must cover the same frames with the same labels as the first one; the error
    names the first row where they differ.
    """
    probs, ref, ref_name = [], None, None
    for member in members:
        total = None
        for run in member.runs:
            path = Path(run) / "preds" / f"{split}.npz"
            preds = load_preds(path, keys=[member.head])
            if member.head not in preds:
                with np.load(path, allow_pickle=False) as data:
                    heads = sorted(k for k in data.files if k.startswith("logits"))
                raise DataError(f"{path}: no '{member.head}' array (it has {heads})")
            if ref is None:
                ref = {k: preds[k] for k in ("txtid", "frame", "label", "has_crop")}
                ref_name = str(path)
            else:
                check_same_frames(ref, preds, ref_name, str(path))
                bad = np.flatnonzero(ref["label"] != preds["label"])
                if len(bad):
                    i = bad[0]
                    raise DataError(f"{path}: label of {ref['txtid'][i]}/{ref['frame'][i]:05d} is "
                                    f"{preds['label'][i]} but {ref_name} has {ref['label'][i]}")
            p = softmax(preds[member.head])
            total = p if total is None else total + p
        probs.append(total / np.float32(len(member.runs)))
    return probs, ref


# ---------------------------------------------------------------- the four stages

def combine(probs: list[np.ndarray], weights) -> np.ndarray:
    """Weighted sum of the members' probabilities, always in member order (deterministic)."""
    out = np.zeros_like(probs[0])
    for w, p in zip(weights, probs):
        if w:
            out += np.float32(w) * p
    return out


def video_starts(txtid: np.ndarray) -> np.ndarray:
    """Row where each video begins, plus len(txtid) (rows are ordered by txtid)."""
    txtid = np.asarray(txtid)
    change = np.flatnonzero(txtid[1:] != txtid[:-1]) + 1
    return np.concatenate([[0], change, [len(txtid)]]).astype(np.int64)


def smooth(probs: np.ndarray, txtid: np.ndarray, method: str, window: int) -> np.ndarray:
    """Median or mean of each class's probability over `window` frames, never across videos."""
    if method not in SMOOTH_METHODS:
        raise ValueError(f"unknown smoothing method '{method}'")
    out = np.empty_like(probs)
    starts = video_starts(txtid)
    for a, b in zip(starts[:-1], starts[1:]):
        if method == "median":
            out[a:b] = ndimage.median_filter(probs[a:b], size=(window, 1), mode="nearest")
        else:
            out[a:b] = ndimage.uniform_filter1d(probs[a:b], size=window, axis=0, mode="nearest")
    return out


def log_scores(probs: np.ndarray) -> np.ndarray:
    # float64: the log of distinct float32 values stays distinct, so argmax(log P) == argmax(P)
    return np.log(np.maximum(probs, EPS).astype(np.float64))


def predict(probs: np.ndarray, bias=None) -> np.ndarray:
    scores = log_scores(probs)
    if bias is not None:
        scores += np.asarray(bias, dtype=np.float64)
    return scores.argmax(axis=1)


def apply_spec(probs: list[np.ndarray], txtid: np.ndarray, spec: dict) -> np.ndarray:
    """Labels from the members' probabilities under an ensemble spec (as in ensemble.json)."""
    if len(spec["weights"]) != len(probs):
        raise ValueError(f"{len(spec['weights'])} weights for {len(probs)} members")
    p = combine(probs, spec["weights"])
    if spec.get("smoothing"):
        p = smooth(p, txtid, spec["smoothing"]["method"], int(spec["smoothing"]["window"]))
    return predict(p, spec.get("bias"))


# ---------------------------------------------------------------- searches

def fast_macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int = NUM_EXPR_CLASSES) -> float:
    """Macro-F1 over all classes from one bincount; y holds no -1 (equals utils.evaluation.metrics)."""
    cm = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)        # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(num_classes), where=denom > 0)
    return float(f1.mean())


def simplex_grid(members: int, step: float) -> np.ndarray:
    """Every weight vector with entries in multiples of `step` that sum to one."""
    n = int(round(1 / step))
    if members == 1:
        return np.ones((1, 1))

    def compositions(total, parts):
        if parts == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):       # the first member's weight high first
            for rest in compositions(total - first, parts - 1):
                yield (first,) + rest
    return np.array(list(compositions(n, members)), dtype=np.float64) / n


def search_weights(probs: list[np.ndarray], y: np.ndarray, step: float = 0.05, progress: str | None = None):
    """Weights maximising macro-F1: the full grid up to three members, line search beyond.

    probs hold only the labelled frames. Returns (weights, score); ties keep the first found.
    """
    m = len(probs)

    def score(w):
        return fast_macro_f1(y, combine(probs, w).argmax(axis=1))

    if m <= 3:
        best_w, best = None, -1.0
        grid = simplex_grid(m, step)
        with Progress(len(grid), f"{progress}: weights", "mixes", show=progress is not None) as bar:
            for w in grid:
                s = score(w)
                if s > best + MIN_GAIN:
                    best_w, best = w, s
                bar.advance()
        return best_w, best
    # Beyond three members the grid grows too fast: start from the best of the uniform mix
    # and each member alone, then move one member's weight along a line at a time (the
    # others keep their ratios) until a full sweep finds nothing better.
    starts = [np.full(m, 1 / m)] + list(np.eye(m))
    scores = [score(w) for w in starts]
    best_w, best = starts[int(np.argmax(scores))], max(scores)
    levels = np.arange(int(round(1 / step)) + 1) * step
    # The total is the most the sweeps can take; a search that settles early ends below it.
    bar = Progress(20 * m * len(levels), f"{progress}: weights (line search)", "mixes", show=progress is not None)
    for _ in range(20):
        improved = False
        for i in range(m):
            bar.advance(len(levels))
            rest = best_w.copy()
            rest[i] = 0.0
            rest = rest / rest.sum() if rest.sum() > 0 else np.where(np.arange(m) == i, 0.0, 1 / (m - 1))
            for a in levels:
                w = (1 - a) * rest
                w[i] = a
                s = score(w)
                if s > best + MIN_GAIN:
                    best_w, best, improved = w, s, True
        if not improved:
            break
    bar.close()
    return best_w, best


def search_smoothing(probs: np.ndarray, txtid: np.ndarray, labelled: np.ndarray, y: np.ndarray,
                     methods, windows, current: float, progress: str | None = None):
    """The (method, window) with the best macro-F1, or None if none beats `current`.

    Smoothing runs over all frames of each video (unlabelled ones too); only labelled rows
    are scored. Returns (choice, score, every candidate's score).
    """
    best, best_score, tried = None, current, []
    bar = Progress(len(methods) * len(windows), f"{progress}: smoothing", "filters", show=progress is not None)
    for method in methods:
        for window in windows:
            s = fast_macro_f1(y, smooth(probs, txtid, method, window)[labelled].argmax(axis=1))
            bar.advance()
            tried.append({"method": method, "window": int(window), "macro_f1": s})
            if s > best_score + MIN_GAIN:
                best, best_score = {"method": method, "window": int(window)}, s
    bar.close()
    return best, best_score, tried


def search_bias(scores: np.ndarray, y: np.ndarray, values: np.ndarray, sweeps: int = 10,
                progress: str | None = None):
    """Per-class additive biases on log-probabilities by coordinate ascent.

    For class c every value in `values` is tried with the other biases fixed: a frame goes to
    c exactly when its biased score beats the best other class (ties to the lower index, as
    argmax does), so one comparison per candidate is enough. A move is kept only if the full
    argmax confirms the gain, so the result is never below the unbiased score.
    """
    k = scores.shape[1]
    bias = np.zeros(k)
    best = fast_macro_f1(y, scores.argmax(axis=1))
    # The total is the most the sweeps can take; a search that settles early ends below it.
    bar = Progress(sweeps * k * len(values), f"{progress}: class biases", "candidates", show=progress is not None)
    for _ in range(sweeps):
        improved = False
        for c in range(k):
            bar.advance(len(values))
            others = scores + bias
            others[:, c] = -np.inf
            other_arg = others.argmax(axis=1)
            other_max = others[np.arange(len(others)), other_arg]
            cand_best, cand_value = best, None
            for v in values:
                sc = scores[:, c] + v
                take = (sc > other_max) | ((sc == other_max) & (c < other_arg))
                s = fast_macro_f1(y, np.where(take, c, other_arg))
                if s > cand_best + MIN_GAIN:
                    cand_best, cand_value = s, float(v)
            if cand_value is None:
                continue
            trial = bias.copy()
            trial[c] = cand_value
            s = fast_macro_f1(y, (scores + trial).argmax(axis=1))
            if s > best + MIN_GAIN:
                bias, best, improved = trial, s, True
        if not improved:
            break
    bar.close()
    return bias, best


# ---------------------------------------------------------------- tuning and honesty

@dataclass
class SearchOptions:
    step: float = 0.05
    smooth_methods: list[str] = field(default_factory=lambda: list(SMOOTH_METHODS))
    smooth_windows: list[int] = field(default_factory=lambda: [5, 9, 15, 25, 45])
    biases: bool = True
    bias_range: float = 2.0
    bias_step: float = 0.1

    def bias_values(self) -> np.ndarray:
        n = int(round(self.bias_range / self.bias_step))
        return np.arange(-n, n + 1) * self.bias_step


@dataclass
class Tuned:
    specs: dict          # stage -> spec: "weights", "smoothing", "biases" (the last is final)
    scores: dict         # stage -> macro-F1 on the tuning frames
    smoothing_tried: list


def spec_of(weights, smoothing=None, bias=None) -> dict:
    """A JSON-ready spec; the floats written are exactly the ones applied."""
    bias = np.zeros(NUM_EXPR_CLASSES) if bias is None else bias
    return {"weights": [float(w) for w in weights], "smoothing": smoothing,
            "bias": [float(b) for b in bias]}


def tune(probs: list[np.ndarray], txtid: np.ndarray, labels: np.ndarray,
         options: SearchOptions, progress: str | None = None) -> Tuned:
    """Weights, then smoothing given the weights, then biases given both (each stage's progress
    under `progress`, None: silent)."""
    labelled = np.flatnonzero(labels != IGNORE_LABEL)
    if not len(labelled):
        raise DataError("no labelled frame to tune the ensemble on")
    y = labels[labelled].astype(np.int64)
    weights, s_weights = search_weights([p[labelled] for p in probs], y, options.step, progress)
    p = combine(probs, weights)
    smoothing, s_smooth, tried = None, s_weights, []
    if options.smooth_windows and options.smooth_methods:
        smoothing, s_smooth, tried = search_smoothing(p, txtid, labelled, y, options.smooth_methods,
                                                      options.smooth_windows, s_weights, progress)
    if smoothing:
        p = smooth(p, txtid, smoothing["method"], smoothing["window"])
    bias, s_bias = np.zeros(p.shape[1]), s_smooth
    if options.biases:
        bias, s_bias = search_bias(log_scores(p[labelled]), y, options.bias_values(), progress=progress)
    specs = {"weights": spec_of(weights), "smoothing": spec_of(weights, smoothing),
             "biases": spec_of(weights, smoothing, bias)}
    return Tuned(specs, {"weights": s_weights, "smoothing": s_smooth, "biases": s_bias}, tried)


def split_halves(txtid: np.ndarray, seed: int = 0) -> np.ndarray:
    """True for the rows of half A: whole videos (both people of a video together), drawn
    in a seeded order and each given to the half with fewer frames so far."""
    starts = video_starts(txtid)
    videos = np.array([videoid_of(str(t)) for t in np.asarray(txtid)[starts[:-1]]])
    names, inverse = np.unique(videos, return_inverse=True)
    sizes = np.bincount(inverse, weights=np.diff(starts))
    in_a = np.zeros(len(names), dtype=bool)
    load = [0.0, 0.0]
    for v in np.random.default_rng(seed).permutation(len(names)):
        half = 0 if load[0] <= load[1] else 1
        in_a[v] = half == 0
        load[half] += sizes[v]
    return np.repeat(in_a[inverse], np.diff(starts))


def honest_estimate(probs: list[np.ndarray], txtid: np.ndarray, labels: np.ndarray,
                    options: SearchOptions, seed: int = 0, progress: str | None = None) -> dict | None:
    """Tune on half of the val videos, predict the other half, swap; score the pooled
    out-of-half predictions at every stage. None when val has fewer than two videos."""
    txtid = np.asarray(txtid)
    half_a = split_halves(txtid, seed)
    if half_a.all() or not half_a.any():
        return None
    pooled = {stage: np.zeros(len(txtid), dtype=np.int64) for stage in ("weights", "smoothing", "biases")}
    halves = []
    for half, (tune_rows, score_rows) in zip("AB", ((half_a, ~half_a), (~half_a, half_a))):
        t, s = np.flatnonzero(tune_rows), np.flatnonzero(score_rows)
        tuned = tune([p[t] for p in probs], txtid[t], labels[t], options,
                     None if progress is None else f"{progress} (tuned on half {half})")
        for stage, spec in tuned.specs.items():
            pooled[stage][s] = apply_spec([p[s] for p in probs], txtid[s], spec)
        halves.append({"videos": int(len(video_starts(txtid[s])) - 1), "frames": int(len(s)),
                       "macro_f1": macro_f1(labels[s], pooled["biases"][s]),
                       "tuned_on_macro_f1": tuned.scores["biases"]})
    stages = {stage: macro_f1(labels, pred) for stage, pred in pooled.items()}
    return {"macro_f1": stages["biases"], "stages": stages, "halves": halves, "seed": seed}
