"""Tests for fer_tasks.stages.svm on small synthetic feature sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import joblib
import numpy as np
import pytest

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.params import SvmParams
from fer_tasks.stages.svm import stratified_subsample, train_svm

D = 32
SIZES = {"train": 350, "val": 70, "test": 84}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _features(n: int, rng: np.random.Generator, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed class centres; every class present."""
    centres = np.random.default_rng(123).normal(size=(NUM_CLASSES, D)) * 3.0
    y = np.arange(n) % NUM_CLASSES
    y = y[rng.permutation(n)]
    x = centres[y] + rng.normal(size=(n, D)) * spread
    return x.astype(np.float32), y.astype(np.int64)


def _write(features_dir: Path, splits=tuple(SIZES), spread: float = 1.0) -> dict:
    features_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for s in splits:
        x, y = _features(SIZES[s], rng, spread)
        np.savez(features_dir / f"{s}.npz", features=x, labels=y)
        data[s] = (x, y)
    return data


def _run(tmp_path: Path, **params) -> dict:
    return train_svm(
        tmp_path / "features", tmp_path / "model", tmp_path / "reports", SvmParams(**params)
    )


@pytest.fixture
def data(tmp_path: Path) -> dict:
    return _write(tmp_path / "features")


def test_separable_features_score_high(tmp_path: Path, data):
    m = _run(tmp_path)
    assert m["val"]["accuracy"] > 0.95 and m["test"]["accuracy"] > 0.95
    assert m["test"]["macro_f1"] > 0.95
    assert m["n_train"] == SIZES["train"] and m["n_features"] == D
    assert m["fit_seconds"] >= 0 and m["converged"] is True
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == m


def test_metric_keys_are_stable(tmp_path: Path, data):
    m = _run(tmp_path)
    assert set(m) == {
        "val",
        "test",
        "n_train",
        "n_features",
        "fit_seconds",
        "train_accuracy",
        "converged",
    }
    for split in ("val", "test"):
        assert m[split]["n"] == SIZES[split]
        assert {"accuracy", "macro_f1", "per_class"} <= set(m[split])
        assert list(m[split]["per_class"]) == list(CLASS_NAMES)
        for pc in m[split]["per_class"].values():
            assert {"precision", "recall", "f1"} <= set(pc)


def test_confusion_csv_agrees_with_metrics(tmp_path: Path):
    data = _write(tmp_path / "features", spread=6.0)  # overlapping blobs: recall varies
    m = _run(tmp_path)
    assert 0.3 < m["test"]["accuracy"] < 1.0
    with open(tmp_path / "reports" / "confusion.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == SIZES["test"]
    # the CSV keeps the test split's order: its "actual" column is the test labels
    assert [r["actual"] for r in rows] == [CLASS_NAMES[c] for c in data["test"][1]]
    for name in CLASS_NAMES:
        mine = [r for r in rows if r["actual"] == name]
        recall = sum(r["predicted"] == name for r in mine) / len(mine)
        assert recall == pytest.approx(m["test"]["per_class"][name]["recall"])
    assert sum(r["actual"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(
        m["test"]["accuracy"]
    )
    assert (tmp_path / "reports" / "confusion.png").read_bytes()[:8] == PNG_MAGIC


def test_saved_model_reproduces_metrics(tmp_path: Path, data):
    m = _run(tmp_path)
    model = joblib.load(tmp_path / "model" / "model.joblib")
    x, y = data["test"]
    assert np.mean(model.predict(x) == y) == pytest.approx(m["test"]["accuracy"])
    assert [name for name, _ in model.steps] == ["scale", "svm"]
    assert model.named_steps["svm"].dual is False
    assert model.named_steps["svm"].class_weight == "balanced"


def test_pca_option(tmp_path: Path, data):
    m = _run(tmp_path, pca_components=8)
    model = joblib.load(tmp_path / "model" / "model.joblib")
    assert [name for name, _ in model.steps] == ["scale", "pca", "svm"]
    assert model.named_steps["pca"].n_components_ == 8
    assert m["test"]["accuracy"] > 0.9


def test_pca_too_large_fails_before_writing(tmp_path: Path, data):
    with pytest.raises(ValueError, match="pca_components"):
        _run(tmp_path, pca_components=D + 1)
    assert not (tmp_path / "model").exists() and not (tmp_path / "reports").exists()


def test_rbf_option(tmp_path: Path, data):
    m = _run(tmp_path, kernel="rbf", C=1.0, class_weight="none")
    model = joblib.load(tmp_path / "model" / "model.joblib")
    svm = model.named_steps["svm"]
    assert svm.kernel == "rbf" and svm.class_weight is None
    assert m["test"]["accuracy"] > 0.9


def test_max_train_samples_caps_n_train(tmp_path: Path, data):
    m = _run(tmp_path, max_train_samples=70)
    assert m["n_train"] == 70
    m = _run(tmp_path, max_train_samples=10_000)  # above N: everything
    assert m["n_train"] == SIZES["train"]


def test_stratified_subsample():
    rng = np.random.default_rng(0)
    labels = rng.choice(NUM_CLASSES, size=1000, p=[0.3, 0.01, 0.1, 0.3, 0.1, 0.1, 0.09])
    idx = stratified_subsample(labels, 137, seed=5)
    assert len(idx) == 137 and len(np.unique(idx)) == 137
    assert np.all(np.diff(idx) > 0)  # sorted: the subsample keeps file order
    want = np.bincount(labels, minlength=NUM_CLASSES) * 137 / 1000
    got = np.bincount(labels[idx], minlength=NUM_CLASSES)
    assert np.all(np.abs(got - want) < 1)
    np.testing.assert_array_equal(idx, stratified_subsample(labels, 137, seed=5))
    assert not np.array_equal(idx, stratified_subsample(labels, 137, seed=6))
    np.testing.assert_array_equal(stratified_subsample(labels, 1000, 0), np.arange(1000))
    # a one-member class does not break it (sklearn's stratify would refuse)
    tiny = np.array([0] * 50 + [1] + [2] * 49)
    assert len(stratified_subsample(tiny, 20, 0)) == 20


def test_val_only_scores_val_and_plots_it(tmp_path: Path):
    _write(tmp_path / "features", splits=("train", "val"))
    m = _run(tmp_path)
    assert "test" not in m and "val" in m
    with open(tmp_path / "reports" / "confusion.csv") as fh:
        assert sum(1 for _ in fh) == 1 + SIZES["val"]


def test_missing_inputs(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="train.npz"):
        _run(tmp_path)
    _write(tmp_path / "features", splits=("train",))
    with pytest.raises(FileNotFoundError, match="val.npz nor test.npz"):
        _run(tmp_path)


def test_mismatched_dims_leave_no_outputs(tmp_path: Path, data):
    np.savez(
        tmp_path / "features" / "test.npz",
        features=np.zeros((5, D + 1), np.float32),
        labels=np.zeros(5, np.int64),
    )
    with pytest.raises(ValueError, match="features per row"):
        _run(tmp_path)
    assert not (tmp_path / "model").exists() and not (tmp_path / "reports").exists()


def test_bad_labels_rejected(tmp_path: Path, data):
    x, y = data["train"]
    y = y.copy()
    y[3] = NUM_CLASSES
    np.savez(tmp_path / "features" / "train.npz", features=x, labels=y)
    with pytest.raises(ValueError, match="outside"):
        _run(tmp_path)


def test_non_convergence_is_recorded(tmp_path: Path):
    _write(tmp_path / "features", spread=6.0)  # overlapping blobs
    m = _run(tmp_path, C=1000.0, max_iter=10)
    assert m["converged"] is False
