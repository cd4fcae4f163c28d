"""ensemble.py and utils/evaluation/ensemble.py: weight search, smoothing, biases, honesty, alignment."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ensemble
from utils.classes import NUM_EXPR_CLASSES
from utils.evaluation.ensemble import (Member, SearchOptions, apply_spec, fast_macro_f1, group_runs,
                            honest_estimate, load_members, search_weights, smooth, softmax, tune)
from utils.evaluation.metrics import macro_f1
from utils.evaluation.preds import save_preds
from utils.runs import read_json, write_json

C = NUM_EXPR_CLASSES


# ---------------------------------------------------------------- synthetic data

def constrained_probs(constraints, members: int, frames_each: int = 10):
    """Probabilities whose ensemble labels every frame right only where all constraints hold.

    A constraint (i, t, '>') is met iff w_i > t: frames of true class c, competitor k, with
    p_m[c] - p_m[k] = d_m and sum_m w_m d_m = w_i - t (or t - w_i for '<'). Filler frames of
    the other classes are right under any weights, so every class occurs.
    """
    pairs = [(1, 2), (3, 4), (5, 6), (7, 0), (2, 5), (6, 1)]
    rows, ys = [], []
    for (i, t, sign), (c, k) in zip(constraints, pairs):
        d = np.full(members, -t)
        d[i] = 1 - t
        if sign == "<":
            d = -d
        p = np.full((frames_each, members, C), 0.01 / (C - 2))
        p[:, :, c] = 0.99 * (1 + d) / 2
        p[:, :, k] = 0.99 * (1 - d) / 2
        rows.append(p)
        ys += [c] * frames_each
    for c in range(C):                     # filler: all members sure and right
        p = np.full((frames_each, members, C), 0.02 / (C - 1))
        p[:, :, c] = 0.98
        rows.append(p)
        ys += [c] * frames_each
    p = np.concatenate(rows)
    return [np.log(p[:, m]) for m in range(members)], np.array(ys)


def structured_val(seed=0, videos=("a", "b_left", "b_right", "c", "d", "e", "f", "g"), n=240,
                   accuracies=(0.45, 0.4, 0.3)):
    """Videos of long label segments, members right on a share of frames (frame-wise noise)."""
    rng = np.random.default_rng(seed)
    txtid, frame, label = [], [], []
    for v in sorted(videos):
        seg = np.repeat(rng.integers(0, C, n // 30 + 1), 30)[:n]
        seg[rng.random(n) < 0.05] = -1
        txtid += [v] * n
        frame += list(range(1, n + 1))
        label += list(seg)
    label = np.array(label)
    logits = []
    for acc in accuracies:
        right = np.where(label >= 0, label, rng.integers(0, C, len(label)))
        guess = np.where(rng.random(len(label)) < acc, right, rng.integers(0, C, len(label)))
        z = rng.normal(0, 1, (len(label), C))
        z[np.arange(len(label)), guess] += 2.5
        logits.append(z.astype(np.float32))
    return np.array(txtid), np.array(frame), label, logits


def make_run(root: Path, branch: str, name: str, seed: int, txtid, frame, label, logits,
             splits=("val",), **extra) -> Path:
    run = root / "runs" / branch / f"{name}_seed{seed}"
    for split in splits:
        save_preds(run / "preds" / f"{split}.npz", txtid=txtid, frame=frame, label=label,
                   has_crop=np.ones(len(txtid), bool), logits=logits, **extra)
    write_json(run / "config.json", {"config": {"data": str(root / "data"), "seed": seed}, "environment": {}})
    write_json(run / "metrics.json", {"val_macro_f1": 0.0})
    return run


# ---------------------------------------------------------------- the searches

def test_fast_macro_f1_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C - 1, 5000)          # class 7 never true: its F1 must count as 0
    p = np.where(rng.random(5000) < 0.5, y, rng.integers(0, C, 5000))
    assert fast_macro_f1(y, p) == pytest.approx(macro_f1(y, p), abs=1e-12)


def test_grid_finds_the_known_optimum():
    # Only w = (0.5, 0.3, 0.2) on the 0.05 grid meets all four constraints.
    cons = [(0, 0.475, ">"), (0, 0.525, "<"), (1, 0.275, ">"), (1, 0.325, "<")]
    logits, y = constrained_probs(cons, 3)
    probs = [softmax(z) for z in logits]
    weights, score = search_weights(probs, y, 0.05)
    assert np.allclose(weights, [0.5, 0.3, 0.2])
    assert score == 1.0
    uniform = fast_macro_f1(y, sum(probs).argmax(1))
    best_single = max(fast_macro_f1(y, p.argmax(1)) for p in probs)
    assert uniform < 1.0 and best_single < 1.0


def test_refining_search_beyond_three_members():
    cons = [(0, 0.3, ">"), (1, 0.2, ">"), (2, 0.1, ">"), (3, 0.15, "<")]
    logits, y = constrained_probs(cons, 4)
    probs = [softmax(z) for z in logits]
    weights, score = search_weights(probs, y, 0.05)
    assert score == 1.0
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    assert weights[0] > 0.3 and weights[1] > 0.2 and weights[2] > 0.1 and weights[3] < 0.15
    assert fast_macro_f1(y, sum(probs).argmax(1)) < 1.0


def test_smoothing_stays_within_each_video():
    # video a is class 0 throughout with one spike, video b class 1 throughout
    p = np.zeros((20, C), np.float32)
    p[:10, 0], p[10:, 1] = 1, 1
    p[4] = 0
    p[4, 3] = 1
    txtid = np.array(["a"] * 10 + ["b"] * 10)
    for method in ("median", "mean"):
        s = smooth(p, txtid, method, 9)
        assert (s[:10, 1] == 0).all() and (s[10:, 0] == 0).all()      # nothing crosses videos
        assert s.argmax(1).tolist() == [0] * 10 + [1] * 10            # the spike is gone
    mean = smooth(p, txtid, "mean", 3)
    assert mean[5, 0] == pytest.approx(2 / 3) and mean[5, 3] == pytest.approx(1 / 3)


def test_stages_only_help_where_tuned_and_honest_figure_is_separate():
    # Pure noise: every gain found on val is overfitting, so the honest figure must be lower.
    rng = np.random.default_rng(3)
    txtid = np.repeat([f"v{i:02d}" for i in range(10)], 300)
    labels = rng.integers(0, C, len(txtid))
    probs = [softmax(rng.normal(0, 1, (len(txtid), C)).astype(np.float32)) for _ in range(2)]
    options = SearchOptions(smooth_windows=[5, 15], bias_step=0.25)
    tuned = tune(probs, txtid, labels, options)
    s = tuned.scores
    assert s["weights"] <= s["smoothing"] <= s["biases"]
    assert s["biases"] > s["weights"]                  # the biases found something to fit
    for stage, spec in tuned.specs.items():            # the specs reproduce the tuned scores
        assert macro_f1(labels, apply_spec(probs, txtid, spec)) == pytest.approx(s[stage], abs=1e-12)
    honest = honest_estimate(probs, txtid, labels, options, seed=0)
    assert honest["macro_f1"] < s["biases"]
    assert len(honest["halves"]) == 2 and sum(h["frames"] for h in honest["halves"]) == len(txtid)


def test_smoothing_is_kept_when_labels_are_temporal():
    txtid, frame, label, logits = structured_val()
    tuned = tune([softmax(z) for z in logits], txtid, label, SearchOptions(biases=False))
    assert tuned.specs["biases"]["smoothing"] is not None
    assert tuned.scores["smoothing"] > tuned.scores["weights"] + 0.05


# ---------------------------------------------------------------- the script

def test_ensemble_script_writes_spec_report_and_figure(tmp_path):
    txtid, frame, label, logits = structured_val()
    runs = [make_run(tmp_path, "image", "swin", 0, txtid, frame, label, logits[0]),
            make_run(tmp_path, "image", "swin", 1, txtid, frame, label, logits[1]),
            make_run(tmp_path, "audio", "ast", 0, txtid, frame, label, logits[2])]
    out = ensemble.main(["--runs", str(tmp_path / "runs/image/swin_seed*"), str(runs[2]),
                         "--name", "e1", "--out-dir", str(tmp_path / "ensembles"),
                         "--smooth-windows", "5", "15", "--bias-step", "0.25"])
    spec = read_json(out / "ensemble.json")
    assert (out / "confusion_val.png").stat().st_size > 1000 and "macro-F1" in (out / "report.txt").read_text()
    # the two seeds are one member, averaged after the softmax
    assert [m["name"] for m in spec["members"]] == ["image/swin", "audio/ast"]
    assert len(spec["members"][0]["runs"]) == 2
    seed_avg = (softmax(logits[0]) + softmax(logits[1])) / 2
    assert spec["members"][0]["val_macro_f1"] == pytest.approx(macro_f1(label, seed_avg.argmax(1)))
    assert spec["data"] == str(tmp_path / "data")
    # the spec as written reproduces the score as written
    probs, ref = load_members([Member(m["name"], m["runs"], m["head"]) for m in spec["members"]], "val")
    assert macro_f1(label, apply_spec(probs, txtid, spec)) == spec["val"]["macro_f1"]
    v = spec["val"]
    assert v["stages"]["weights"] <= v["stages"]["smoothing"] <= v["stages"]["biases"] == v["macro_f1"]
    assert v["gains"]["smoothing"] >= 0 and v["gains"]["biases"] >= 0
    assert v["honest"]["macro_f1"] <= 1 and set(v["honest"]["stages"]) == {"weights", "smoothing", "biases"}
    assert sum(spec["weights"]) == pytest.approx(1.0) and len(spec["bias"]) == C


def test_misaligned_runs_are_refused(tmp_path):
    txtid, frame, label, logits = structured_val(videos=("a", "b"), n=60)
    make_run(tmp_path, "image", "swin", 0, txtid, frame, label, logits[0])
    keep = np.ones(len(txtid), bool)
    keep[65] = False                                  # drop frame b/00006 from the second run
    make_run(tmp_path, "audio", "ast", 0, txtid[keep], frame[keep], label[keep], logits[1][keep])
    with pytest.raises(SystemExit) as err:
        ensemble.main(["--runs", str(tmp_path / "runs/*/*"), "--out-dir", str(tmp_path / "ens")])
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "row 65" in message and "b/00007" in message and "b/00006" in message
    assert not (tmp_path / "ens").exists()


def test_incomplete_run_and_missing_head_are_refused(tmp_path):
    txtid, frame, label, logits = structured_val(videos=("a", "b"), n=60)
    run = make_run(tmp_path, "fusion", "mfm", 0, txtid, frame, label, logits[0], logits_image=logits[1])
    with pytest.raises(SystemExit, match="logits_audio"):
        ensemble.main(["--runs", f"{run}:logits_audio", "--out-dir", str(tmp_path / "ens")])
    (run / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="not complete"):
        ensemble.main(["--runs", str(run), "--out-dir", str(tmp_path / "ens")])


def test_heads_of_one_run_are_separate_members(tmp_path):
    txtid, frame, label, logits = structured_val(videos=("a", "b", "c"), n=90)
    run = make_run(tmp_path, "fusion", "mfm", 0, txtid, frame, label, logits[0], logits_image=logits[1])
    members = group_runs([(run, "logits"), (run, "logits_image")])
    assert [m.name for m in members] == ["fusion/mfm", "fusion/mfm:logits_image"]
    probs, _ = load_members(members, "val")
    assert np.allclose(probs[1], softmax(logits[1]))
