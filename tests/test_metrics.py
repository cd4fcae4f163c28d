import numpy as np
import pytest

from utils.evaluation.metrics import expr_confusion, macro_f1, per_class_f1, uar_war


def test_macro_f1_ignores_minus_one_and_averages_all_eight_classes():
    labels = [0, 0, 1, 1, -1, 2]
    preds = [0, 1, 1, 1, 3, 2]
    # class 0: P=1, R=1/2 -> 2/3; class 1: P=2/3, R=1 -> 4/5; class 2: 1; the -1 frame's
    # prediction of class 3 is not a false positive; classes 3..7 score 0.
    expected = np.array([2 / 3, 0.8, 1.0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(per_class_f1(labels, preds), expected)
    assert macro_f1(labels, preds) == pytest.approx(expected.sum() / 8)


def test_perfect_prediction_scores_one():
    labels = np.arange(8).repeat(3)
    assert macro_f1(labels, labels) == pytest.approx(1.0)


def test_confusion_rows_are_true_classes_without_ignored_frames():
    cm = expr_confusion([0, 0, 1, -1], [0, 1, 1, 0])
    assert cm.shape == (8, 8)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1
    assert cm.sum() == 3


def test_uar_war_hand_computed():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 0, 2]
    uar, war = uar_war(labels, preds)
    assert war == pytest.approx(4 / 6)
    assert uar == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        macro_f1([0, 1], [0])
