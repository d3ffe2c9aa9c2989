"""Offline metrics against hand-computed values (and scikit-learn when it happens to be installed)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lora_core.metrics import accuracy, classification_metrics, f1_per_class, macro_f1, perplexity

PREDS = [0, 1, 1, 2, 2, 2]
LABELS = [0, 1, 2, 2, 2, 0]


def test_accuracy_by_hand():
    assert accuracy(PREDS, LABELS) == pytest.approx(4 / 6)
    assert accuracy([1, 1], [1, 1]) == 1.0
    assert accuracy([0, 1], [1, 0]) == 0.0


def test_accuracy_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        accuracy([0, 1, 1], [0, 1])


def test_f1_per_class_by_hand():
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 1 fp 1 fn 0 -> 2/3; class 2: tp 2 fp 1 fn 1 -> 4/6
    scores = f1_per_class(PREDS, LABELS)
    assert scores == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 4 / 6})
    assert macro_f1(PREDS, LABELS) == pytest.approx(2 / 3)


def test_macro_f1_counts_a_class_that_is_only_predicted():
    # class 0: tp 2 fp 0 fn 1 -> 0.8; class 1 (never true) scores 0 -> macro 0.4, as scikit-learn
    assert macro_f1([0, 0, 1], [0, 0, 0]) == pytest.approx(0.4)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0


def test_macro_f1_is_not_accuracy_on_imbalanced_data():
    labels = [0] * 9 + [1]
    preds = [0] * 10
    assert accuracy(preds, labels) == pytest.approx(0.9)
    assert macro_f1(preds, labels) == pytest.approx((18 / 19 + 0) / 2)


def test_matches_sklearn_when_installed():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 4, size=50)
        preds = rng.integers(0, 4, size=50)
        assert macro_f1(preds, labels) == pytest.approx(sklearn_metrics.f1_score(labels, preds, average="macro"))
        assert accuracy(preds, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10.0)) == pytest.approx(10.0)
    assert perplexity(1e6) == float("inf")


def test_classification_metrics_from_logits():
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [0.8, 0.2], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    out = classification_metrics(SimpleNamespace(predictions=logits, label_ids=labels))
    assert out["accuracy"] == pytest.approx(0.75)
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 2 fp 0 fn 1 -> 0.8
    assert out["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    tupled = classification_metrics(SimpleNamespace(predictions=(logits, None), label_ids=labels))
    assert tupled == out
