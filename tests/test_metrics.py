"""Tests for fer_tasks.lib.metrics: scores keyed by class name and the confusion writers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.metrics import (
    classification_metrics,
    confusion_matrix,
    write_confusion_csv,
    write_confusion_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, NUM_CLASSES, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, NUM_CLASSES, size=300))
    return y_true, y_pred


def test_metrics_match_sklearn(labels):
    y_true, y_pred = labels
    m = classification_metrics(y_true, y_pred)
    assert set(m) == {"n", "accuracy", "macro_f1", "per_class"}
    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=list(range(NUM_CLASSES)))
    )
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(NUM_CLASSES)))
    assert list(m["per_class"]) == list(CLASS_NAMES)
    for c, name in enumerate(CLASS_NAMES):
        pc = m["per_class"][name]
        assert set(pc) == {"precision", "recall", "f1", "support"}
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((p[c], r[c], f[c]))
        assert pc["support"] == s[c]
        assert all(type(v) in (float, int) for v in pc.values())  # JSON-ready


def test_absent_class_scores_zero_and_keeps_its_key():
    y = np.array([0, 0, 3, 3, 3, 6])
    m = classification_metrics(y, y)
    assert m["accuracy"] == 1.0
    assert m["per_class"]["disgust"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["happy"]["f1"] == 1.0
    # macro-F1 averages all seven classes, absent ones included
    assert m["macro_f1"] == pytest.approx(3 / NUM_CLASSES)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "2 true labels but 1 predictions"),
        ([0, 7], [0, 1], "outside 0..6"),
        ([0, -1], [0, 1], "outside 0..6"),
        ([0.0, 1.0], [0, 1], "integer"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.array(y_true), np.array(y_pred))


def test_confusion_matrix_matches_sklearn(labels):
    y_true, y_pred = labels
    cm = confusion_matrix(y_true, y_pred)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.dtype == np.int64
    np.testing.assert_array_equal(
        cm, sk_confusion_matrix(y_true, y_pred, labels=list(range(NUM_CLASSES)))
    )


def test_confusion_csv_long_format(tmp_path: Path, labels):
    y_true, y_pred = labels
    path = tmp_path / "reports" / "confusion.csv"
    write_confusion_csv(path, y_true, y_pred)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["actual", "predicted"]
    assert len(rows) == 1 + len(y_true)
    names = [[CLASS_NAMES[t], CLASS_NAMES[p]] for t, p in zip(y_true, y_pred, strict=True)]
    assert rows[1:] == names
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.csv"]  # no temp left


def test_confusion_png(tmp_path: Path, labels):
    path = tmp_path / "confusion.png"
    write_confusion_png(path, *labels, title="test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png"]


def test_writers_fail_without_output(tmp_path: Path):
    for writer in (write_confusion_csv, lambda p, t, q: write_confusion_png(p, t, q, "x")):
        with pytest.raises(ValueError):
            writer(tmp_path / "out", np.array([0, 1]), np.array([0, 9]))
    assert list(tmp_path.iterdir()) == []
