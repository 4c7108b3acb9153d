"""Tests for fer_tasks.stages.evaluate: a tiny trained CNN scored on a learnable test split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import band_split, train_tiny_classifier

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.calibration import ece
from fer_tasks.lib.io import read_json, save_split, write_json
from fer_tasks.lib.metrics import classification_metrics
from fer_tasks.lib.params import EvaluateParams
from fer_tasks.stages.evaluate import (
    comparison_markdown,
    evaluate,
    intervals,
    resample_scores,
    score,
)

pytestmark = pytest.mark.slow  # trains a tiny CNN (seconds)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    x_train, y_train = band_split(280, seed=1)
    x_test, y_test = band_split(140, seed=2)
    # few epochs: good but not perfect, so the confusion matrix has off-diagonal cells
    train_tiny_classifier(x_train, y_train, epochs=4).save(root / "model.keras")
    save_split(root / "test.npz", x_test, y_test)
    svm = {
        "n": 140,
        "accuracy": 0.5,
        "macro_f1": 0.45,
        "per_class": {
            c: {"precision": 0.5, "recall": 0.1 * i, "f1": 0.4, "support": 20}
            for i, c in enumerate(CLASS_NAMES)
        },
    }
    write_json(root / "svm.json", {"val": svm, "test": svm})
    # a recipe as the calibrate stage writes one: T = 2 and flip TTA
    write_json(root / "calibration.json", {"temperature": 2.0, "tta_flip": True, "split": "val"})
    out = root / "out"
    metrics = evaluate(
        root / "model.keras",
        root / "calibration.json",
        root / "test.npz",
        root / "svm.json",
        out,
        EvaluateParams(batch_size=32),
    )
    return {"root": root, "out": out, "metrics": metrics, "x_test": x_test, "y_test": y_test}


def _confusion_from_csv(path: Path) -> np.ndarray:
    idx = {c: i for i, c in enumerate(CLASS_NAMES)}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    for r in rows:
        cm[idx[r["actual"]], idx[r["predicted"]]] += 1
    return cm


def test_outputs_exist_and_metrics_json_matches_return(setup) -> None:
    out = setup["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.md",
        "confusion.csv",
        "confusion.png",
        "errors.json",
        "errors.png",
        "metrics.json",
        "per_class.png",
        "reliability.png",
    ]
    for png in ("confusion.png", "errors.png", "per_class.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
    assert read_json(out / "metrics.json") == setup["metrics"]
    assert list(setup["metrics"]) == [
        "split",
        "n",
        "accuracy",
        "top2_accuracy",
        "macro_f1",
        "per_class",
        "predicted_share",
        "calibration",
        "ci95",
    ]
    assert setup["metrics"]["split"] == "test"
    cal = setup["metrics"]["calibration"]
    assert list(cal) == ["temperature", "tta_flip", "center_crop", "ece_bins", "before", "after"]
    assert (cal["temperature"], cal["tta_flip"], cal["ece_bins"]) == (2.0, True, 15)
    assert cal["center_crop"] == 0  # the recipe names none
    assert set(cal["before"]) == set(cal["after"]) == {"nll", "ece"}
    assert cal["before"] != cal["after"]
    assert list(setup["metrics"]["per_class"]) == list(CLASS_NAMES)
    assert list(setup["metrics"]["predicted_share"]) == list(CLASS_NAMES)


def test_model_learned_something(setup) -> None:
    assert 0.5 < setup["metrics"]["accuracy"] < 1.0  # chance is 1/7; not perfect


def test_confusion_csv_is_consistent_with_metrics(setup) -> None:
    m, y = setup["metrics"], setup["y_test"]
    cm = _confusion_from_csv(setup["out"] / "confusion.csv")
    assert cm.sum() == len(y) == m["n"]
    assert np.array_equal(cm.sum(axis=1), np.bincount(y, minlength=NUM_CLASSES))
    assert np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])
    for i, c in enumerate(CLASS_NAMES):
        assert cm[i, i] / cm[i].sum() == pytest.approx(m["per_class"][c]["recall"])
        col = cm[:, i].sum()
        assert (cm[i, i] / col if col else 0.0) == pytest.approx(m["per_class"][c]["precision"])
        assert col / cm.sum() == pytest.approx(m["predicted_share"][c])


def test_shares_sum_to_one_and_top2_at_least_top1(setup) -> None:
    m = setup["metrics"]
    assert sum(m["predicted_share"].values()) == pytest.approx(1.0)
    assert m["accuracy"] <= m["top2_accuracy"] <= 1.0
    assert m["macro_f1"] == pytest.approx(np.mean([v["f1"] for v in m["per_class"].values()]))


def test_comparison_names_both_models_and_every_class(setup) -> None:
    md = (setup["out"] / "comparison.md").read_text()
    assert "fine-tuned" in md and "SVM baseline" in md
    assert "| accuracy |" in md and "| macro-F1 |" in md
    acc = setup["metrics"]["accuracy"]
    assert f"| accuracy | {100 * acc:.1f} % | 50.0 % | {100 * (acc - 0.5):+.1f} |" in md
    for i, c in enumerate(CLASS_NAMES):
        assert f"| recall {c} |" in md
        assert f"{100 * 0.1 * i:.1f} %" in md
    assert "Warning" not in md  # same n on both sides


def test_score_top2_counts_second_choice() -> None:
    probs = np.array(
        [[0.6, 0.3, 0.1, 0, 0, 0, 0], [0.6, 0.3, 0.1, 0, 0, 0, 0], [0.6, 0.3, 0.1, 0, 0, 0, 0]]
    )
    m = score(np.array([0, 1, 2]), probs)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top2_accuracy"] == pytest.approx(2 / 3)
    assert m["predicted_share"]["angry"] == 1.0


def test_comparison_without_svm_and_with_mismatched_n() -> None:
    m = score(np.arange(7), np.eye(7))
    md = comparison_markdown(m, None, "m.keras", "None")
    assert "| accuracy | 100.0 % | – | – |" in md and "No SVM metrics" in md
    svm = {**m, "n": 99}
    assert "Warning" in comparison_markdown(m, svm, "m.keras", "svm.json")


def test_bad_svm_metrics_and_bad_test_split_fail_clearly(setup, tmp_path: Path) -> None:
    root = setup["root"]
    write_json(tmp_path / "svm.json", {"val": {}})
    with pytest.raises(ValueError, match="'test' section"):
        evaluate(
            root / "model.keras",
            None,
            root / "test.npz",
            tmp_path / "svm.json",
            tmp_path / "out",
            EvaluateParams(),
        )
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(3))
    with pytest.raises(ValueError, match="uint8 \\(N, 48, 48\\)"):
        evaluate(
            root / "model.keras",
            None,
            tmp_path / "bad.npz",
            None,
            tmp_path / "out",
            EvaluateParams(),
        )
    assert not (tmp_path / "out").exists()


def test_summary_stage_rebuilds_the_same_comparison_without_the_model(setup, tmp_path) -> None:
    from fer_tasks.cli import main

    out = tmp_path / "comparison.md"
    svm = setup["root"] / "svm.json"
    rc = main(
        [
            "summary",
            "--metrics",
            str(setup["out"] / "metrics.json"),
            "--svm-metrics",
            str(svm),
            "--model-name",
            str(setup["root"] / "model.keras"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    # the same table evaluate wrote, with the model named the same way
    assert out.read_text() == (setup["out"] / "comparison.md").read_text()


def test_summary_rejects_a_file_that_is_not_evaluate_metrics(setup, tmp_path) -> None:
    from fer_tasks.stages.evaluate import summarize

    bad = tmp_path / "m.json"
    write_json(bad, {"accuracy": 0.5})
    with pytest.raises(ValueError, match=str(bad)):
        summarize(bad, setup["root"] / "svm.json", tmp_path / "c.md")
    assert not (tmp_path / "c.md").exists()


def test_evaluate_without_svm_metrics_writes_no_comparison(setup, tmp_path) -> None:
    root = setup["root"]
    evaluate(
        root / "model.keras", None, root / "test.npz", None, tmp_path / "out", EvaluateParams()
    )
    assert "comparison.md" not in {p.name for p in (tmp_path / "out").iterdir()}


def _model_logits(setup, images: np.ndarray) -> np.ndarray:
    import keras

    from fer_tasks.lib.model import logit_model

    model = keras.saving.load_model(setup["root"] / "model.keras", compile=False)
    return logit_model(model).predict(images[..., None].astype("float32"), verbose=0)


def test_scores_the_mean_of_the_calibrated_softmax_of_face_and_mirror(setup) -> None:
    from fer_tasks.lib.calibration import ece, nll, softmax

    x, y = setup["x_test"], setup["y_test"]
    plain, mirrored = _model_logits(setup, x), _model_logits(setup, x[:, :, ::-1])
    probs = (softmax(plain, 2.0) + softmax(mirrored, 2.0)) / 2
    m = setup["metrics"]
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert m["calibration"]["after"]["nll"] == pytest.approx(nll(probs, y))
    assert m["calibration"]["after"]["ece"] == pytest.approx(ece(probs, y))
    before = (softmax(plain) + softmax(mirrored)) / 2
    assert m["calibration"]["before"]["nll"] == pytest.approx(nll(before, y))


def test_without_a_recipe_the_model_softmax_is_scored(setup, tmp_path) -> None:
    root = setup["root"]
    m = evaluate(
        root / "model.keras", None, root / "test.npz", None, tmp_path / "out", EvaluateParams()
    )
    cal = m["calibration"]
    assert (cal["temperature"], cal["tta_flip"]) == (1.0, False)
    assert cal["before"] == cal["after"]


def test_an_export_recipe_is_refused(setup, tmp_path) -> None:
    root = setup["root"]
    write_json(tmp_path / "inference.json", {"temperature": 2.0, "temperature_in_model": True})
    with pytest.raises(ValueError, match="an export's recipe"):
        evaluate(
            root / "model.keras",
            tmp_path / "inference.json",
            root / "test.npz",
            None,
            tmp_path / "out",
            EvaluateParams(),
        )
    assert not (tmp_path / "out").exists()


def test_error_gallery_on_known_predictions() -> None:
    from fer_tasks.stages.evaluate import error_gallery

    # true classes, predicted class with its probability
    rows = [(0, 1, 0.9), (0, 0, 0.99), (0, 2, 0.95), (0, 3, 0.5), (1, 0, 0.8), (2, 2, 0.7)]
    probs = np.array([_onehot_like(pred, p) for _, pred, p in rows])
    y = np.array([t for t, _, _ in rows])
    g = error_gallery(y, probs, per_class=2)
    assert list(g) == list(CLASS_NAMES)
    # angry: three mistakes (rows 0, 2, 3); the two most confident, most confident first
    assert [(e["index"], e["predicted"]) for e in g["angry"]] == [(2, "fear"), (0, "disgust")]
    assert g["angry"][0]["probability"] == pytest.approx(0.95)
    assert [e["index"] for e in g["disgust"]] == [4]
    assert g["fear"] == [] and g["happy"] == []  # right, or no faces of that class
    assert error_gallery(y, probs, per_class=5)["angry"][-1]["index"] == 3


def _onehot_like(cls: int, p: float) -> list[float]:
    row = [(1 - p) / 6] * 7
    row[cls] = p
    return row


def test_stage_gallery_lists_only_misclassified_faces(setup) -> None:
    import csv as csv_module

    gallery = read_json(setup["out"] / "errors.json")["per_class"]
    with open(setup["out"] / "confusion.csv", newline="") as fh:
        rows = list(csv_module.DictReader(fh))  # one row per test face, in order
    entries = [e for v in gallery.values() for e in v]
    assert entries, "the tiny model makes mistakes: the gallery has faces"
    for name, items in gallery.items():
        assert len(items) <= 4
        probs = [e["probability"] for e in items]
        assert probs == sorted(probs, reverse=True)
        for e in items:
            row = rows[e["index"]]
            assert e["true"] == name == row["actual"] == CLASS_NAMES[setup["y_test"][e["index"]]]
            assert e["predicted"] == row["predicted"] != row["actual"]
    # and every class shows as many of its mistakes as it has, up to gallery_per_class
    assert len(entries) == sum(min(4, _wrong_of(rows, c)) for c in CLASS_NAMES)


def _wrong_of(rows: list[dict], name: str) -> int:
    return sum(r["actual"] == name != r["predicted"] for r in rows)


def _noisy(n: int, hit_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose argmax is right for about `hit_rate` of the faces."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    pred = np.where(rng.random(n) < hit_rate, y, rng.integers(0, NUM_CLASSES, n))
    probs = rng.dirichlet(np.ones(NUM_CLASSES), n) * 0.4
    probs[np.arange(n), pred] += 0.6
    return y, probs


def test_resample_scores_match_the_reported_metrics() -> None:
    """The bootstrap's fast scores are the metrics evaluate reports, on any draw of faces."""
    y, probs = _noisy(500, 0.6, seed=3)
    y[y == 5] = 4  # a class neither true nor (mostly) predicted: F1 0, as classification_metrics
    rng = np.random.default_rng(0)
    for idx in (np.arange(len(y)), rng.integers(0, len(y), len(y))):
        ref = classification_metrics(y[idx], probs[idx].argmax(axis=1))
        acc, f1, e = resample_scores(y, probs, idx)
        assert acc == pytest.approx(ref["accuracy"])
        assert f1 == pytest.approx(ref["macro_f1"])
        assert e == pytest.approx(ece(probs[idx], y[idx]))


def test_intervals_hold_the_score_narrow_with_more_faces_and_repeat() -> None:
    small, large = _noisy(300, 0.6, seed=1), _noisy(3000, 0.6, seed=2)
    ci_small, ci_large = intervals(*small, 400), intervals(*large, 400)
    for (y, probs), ci in ((small, ci_small), (large, ci_large)):
        point = resample_scores(y, probs, np.arange(len(y)))
        for value, key in zip(point, ("accuracy", "macro_f1", "ece"), strict=True):
            assert ci[key]["low"] < value < ci[key]["high"], key
    width = {k: ci_large[k]["high"] - ci_large[k]["low"] for k in ("accuracy", "macro_f1")}
    for k, w in width.items():  # sqrt(10) x the faces: about a third of the width
        assert w < 0.5 * (ci_small[k]["high"] - ci_small[k]["low"]), k
    assert 0.02 < width["accuracy"] < 0.05  # 1.96 * 2 * sqrt(0.6 * 0.4 / 3000) = 0.035
    assert intervals(*small, 400) == ci_small  # seeded
    assert ci_small["resamples"] == 400


def test_perfect_predictions_have_a_point_interval() -> None:
    y = np.repeat(np.arange(NUM_CLASSES), 10)
    probs = np.eye(NUM_CLASSES)[y]
    ci = intervals(y, probs, 200)
    assert ci["accuracy"] == ci["macro_f1"] == {"low": 1.0, "high": 1.0}


def test_no_intervals_when_resamples_is_zero(setup, tmp_path: Path) -> None:
    assert setup["metrics"]["ci95"]["resamples"] == 1000  # the default, in the stage's run
    acc = setup["metrics"]["accuracy"]
    assert (
        setup["metrics"]["ci95"]["accuracy"]["low"]
        <= acc
        <= setup["metrics"]["ci95"]["accuracy"]["high"]
    )
    metrics = evaluate(
        setup["root"] / "model.keras",
        setup["root"] / "calibration.json",
        setup["root"] / "test.npz",
        None,
        tmp_path / "out",
        EvaluateParams(batch_size=32, bootstrap_resamples=0),
    )
    assert "ci95" not in metrics and metrics["accuracy"] == acc


def test_a_centre_crop_recipe_scores_the_closer_view(setup, tmp_path: Path) -> None:
    from fer_tasks.lib.calibration import center_zoom, softmax

    write_json(tmp_path / "c.json", {"temperature": 2.0, "tta_flip": True, "center_crop": 3})
    m = evaluate(
        setup["root"] / "model.keras",
        tmp_path / "c.json",
        setup["root"] / "test.npz",
        None,
        tmp_path / "out",
        EvaluateParams(batch_size=32, bootstrap_resamples=0),
    )
    x = center_zoom(setup["x_test"], 3)
    probs = (
        softmax(_model_logits(setup, x), 2.0) + softmax(_model_logits(setup, x[:, :, ::-1]), 2.0)
    ) / 2
    assert m["calibration"]["center_crop"] == 3
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == setup["y_test"]))
    assert m["calibration"]["after"]["nll"] != setup["metrics"]["calibration"]["after"]["nll"]
