"""Tests for fer_tasks.stages.evaluate: a tiny trained CNN scored on a learnable test split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import band_split, train_tiny_classifier

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.io import read_json, save_split, write_json
from fer_tasks.lib.params import EvaluateParams
from fer_tasks.stages.evaluate import comparison_markdown, evaluate, score

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
    out = root / "out"
    metrics = evaluate(
        root / "model.keras",
        root / "test.npz",
        root / "svm.json",
        out,
        EvaluateParams(batch_size=32),
    )
    return {"root": root, "out": out, "metrics": metrics, "y_test": y_test}


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
        "metrics.json",
    ]
    assert (out / "confusion.png").read_bytes()[:8] == PNG_MAGIC
    assert read_json(out / "metrics.json") == setup["metrics"]
    assert list(setup["metrics"]) == [
        "split",
        "n",
        "accuracy",
        "top2_accuracy",
        "macro_f1",
        "per_class",
        "predicted_share",
    ]
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
            root / "test.npz",
            tmp_path / "svm.json",
            tmp_path / "out",
            EvaluateParams(),
        )
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(3))
    with pytest.raises(ValueError, match="uint8 \\(N, 48, 48\\)"):
        evaluate(
            root / "model.keras", tmp_path / "bad.npz", None, tmp_path / "out", EvaluateParams()
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
    evaluate(root / "model.keras", root / "test.npz", None, tmp_path / "out", EvaluateParams())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "confusion.csv",
        "confusion.png",
        "metrics.json",
    ]


def test_val_split_is_named_and_compared_with_the_svm_on_val(setup, tmp_path) -> None:
    root = setup["root"]
    svm = read_json(root / "svm.json")
    svm["val"] = {**svm["val"], "accuracy": 0.123}  # tell the two sections apart
    write_json(tmp_path / "svm.json", svm)
    m = evaluate(
        root / "model.keras",
        root / "test.npz",
        tmp_path / "svm.json",
        tmp_path / "out",
        EvaluateParams(batch_size=32, split="val"),
    )
    assert m["split"] == "val" and setup["metrics"]["split"] == "test"
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert md.startswith("# Val split:") and "| 12.3 % |" in md
    assert "| 12.3 % |" not in (setup["out"] / "comparison.md").read_text()
