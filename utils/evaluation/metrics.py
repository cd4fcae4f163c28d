"""Challenge metrics, with scikit-learn underneath.

ABAW Expression: macro-F1 over the 8 classes, frames labelled -1 left out. A class that
never occurs and is never predicted scores 0 (the challenge averages over all 8 classes).
DFEW: WAR = accuracy, UAR = mean of the per-class recalls.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from utils.classes import IGNORE_LABEL, NUM_EXPR_CLASSES


def _valid(labels, preds):
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
    keep = labels != IGNORE_LABEL
    return labels[keep], preds[keep]


def per_class_f1(labels, preds, num_classes: int = NUM_EXPR_CLASSES) -> np.ndarray:
    y, p = _valid(labels, preds)
    return f1_score(y, p, labels=np.arange(num_classes), average=None, zero_division=0)


def macro_f1(labels, preds, num_classes: int = NUM_EXPR_CLASSES) -> float:
    """ABAW Expression score: mean F1 over the classes, -1 frames ignored."""
    return float(per_class_f1(labels, preds, num_classes).mean())


def expr_confusion(labels, preds, num_classes: int = NUM_EXPR_CLASSES) -> np.ndarray:
    """Rows are true classes, columns predicted, -1 frames ignored."""
    y, p = _valid(labels, preds)
    return confusion_matrix(y, p, labels=np.arange(num_classes))


def uar_war(labels, preds) -> tuple[float, float]:
    """DFEW clip metrics: (UAR, WAR). UAR averages recall over the classes present in labels."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    present = np.unique(labels)
    uar = recall_score(labels, preds, labels=present, average="macro", zero_division=0)
    war = accuracy_score(labels, preds)
    return float(uar), float(war)
