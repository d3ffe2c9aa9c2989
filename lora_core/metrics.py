"""Evaluation metrics computed locally with numpy (`evaluate.load` fetches metric scripts from the hub, which
is unreachable offline).

macro-F1 follows scikit-learn's `f1_score(average="macro")`: the mean F1 over the classes that occur in the
true or the predicted labels, with F1 = 0 for a class that is never predicted correctly.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    return float((preds == labels).mean()) if labels.size else float("nan")


def f1_per_class(preds, labels) -> dict:
    """{class: F1} for every class seen in labels or preds; F1 = 2TP / (2TP + FP + FN)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    scores = {}
    for c in np.union1d(preds, labels):
        tp = int(np.sum((preds == c) & (labels == c)))
        fp = int(np.sum((preds == c) & (labels != c)))
        fn = int(np.sum((preds != c) & (labels == c)))
        scores[c.item() if hasattr(c, "item") else c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return scores


def macro_f1(preds, labels) -> float:
    scores = f1_per_class(preds, labels)
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def perplexity(eval_loss: float) -> float:
    """exp(mean token cross-entropy); inf when it overflows (a diverged run)."""
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return float("inf")


def classification_metrics(eval_pred) -> dict:
    """`compute_metrics` for a Trainer on seq-cls: logits -> argmax -> accuracy and macro-F1."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):  # some heads also return hidden states
        logits = logits[0]
    preds = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels)}
