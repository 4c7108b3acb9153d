"""`evaluate` stage: the fine-tuned model on the test split, side by side with the SVM baseline.

Writes, each atomically, under `out_dir`:

``metrics.json``
    ``{"n", "accuracy", "top2_accuracy", "macro_f1", "per_class": {class:
    {precision, recall, f1, support}}, "predicted_share": {class: share}}`` --
    the same keys every run (every class always present), so ``dvc metrics
    diff`` compares key for key. ``per_class`` comes from
    `fer_tasks.lib.metrics.classification_metrics`, like the SVM stage's.
``confusion.csv``
    ``actual,predicted`` class names, one row per test image (``dvc plots``
    ``confusion`` template).
``confusion.png``
    The count matrix with class names.
``comparison.md``
    A Markdown table, fine-tuned model vs SVM baseline on the test split:
    accuracy, macro-F1 and recall per class, with the difference in points.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fer_tasks import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import atomic_files, atomic_path, load_split, read_json, write_json
from fer_tasks.lib.metrics import classification_metrics, write_confusion_csv, write_confusion_png
from fer_tasks.lib.params import EvaluateParams

log = logging.getLogger(__name__)


def predict_probs(model_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax outputs (N, 7) of the `.keras` model at `model_path` (loaded in safe mode)."""
    import keras

    from fer_tasks.lib.data import eval_dataset

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    if tuple(model.input_shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1) or (
        model.output_shape[-1] != NUM_CLASSES
    ):
        raise InputError(
            f"{model_path}: expected input (None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) and "
            f"{NUM_CLASSES} outputs, got {model.input_shape} -> {model.output_shape}"
        )
    probs = model.predict(eval_dataset(images, None, batch_size), verbose=0)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(images), NUM_CLASSES):
        raise InputError(
            f"{model_path}: predictions of shape {probs.shape} for {len(images)} images"
        )
    if not np.isfinite(probs).all():
        raise InputError(f"{model_path}: the model outputs non-finite values on the test split")
    return probs


def score(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """`classification_metrics` plus top-2 accuracy and the share of each predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    base = classification_metrics(y_true, y_pred)
    # top-2: the true class is among the two highest scores (ties broken by class order)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    shares = np.bincount(y_pred, minlength=NUM_CLASSES) / len(y_pred)
    return {
        "n": base["n"],
        "accuracy": base["accuracy"],
        "top2_accuracy": float(np.mean((top2 == y_true[:, None]).any(axis=1))),
        "macro_f1": base["macro_f1"],
        "per_class": base["per_class"],
        "predicted_share": {name: float(s) for name, s in zip(CLASS_NAMES, shares, strict=True)},
    }


def _svm_split(svm_metrics_path: Path | None, split: str = "test") -> dict | None:
    """The SVM's metrics on `split` (the split the fine-tuned model was scored on)."""
    if svm_metrics_path is None:
        return None
    data = read_json(svm_metrics_path)
    section = data.get(split) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not {"accuracy", "macro_f1", "per_class"} <= section.keys():
        raise InputError(
            f"{svm_metrics_path}: expected a {split!r} section with accuracy, macro_f1 and "
            "per_class"
        )
    return section


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _diff(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{100 * (a - b):+.1f}"


def comparison_markdown(model: dict, svm: dict | None, model_name: str, svm_name: str) -> str:
    """Side-by-side table: accuracy, macro-F1, recall per class; difference in points."""
    rows = [
        ("accuracy", model["accuracy"], svm and svm["accuracy"]),
        ("macro-F1", model["macro_f1"], svm and svm["macro_f1"]),
    ]
    for name in CLASS_NAMES:
        svm_rec = svm["per_class"].get(name, {}).get("recall") if svm else None
        rows.append((f"recall {name}", model["per_class"][name]["recall"], svm_rec))
    lines = [
        f"# {model.get('split', 'test').capitalize()} split: fine-tuned model vs SVM baseline",
        "",
        f"- fine-tuned model: {model_name} (n = {model['n']})",
        f"- SVM baseline: {svm_name}" + (f" (n = {svm['n']})" if svm and "n" in svm else ""),
        "",
        "| metric | fine-tuned | SVM baseline | difference (points) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {m} | {_pct(a)} | {_pct(b)} | {_diff(a, b)} |" for m, a, b in rows]
    lines += ["", f"Top-2 accuracy of the fine-tuned model: {_pct(model['top2_accuracy'])}."]
    if svm is None:
        lines += ["", "No SVM metrics were given: the baseline column is empty."]
    elif "n" in svm and svm["n"] != model["n"]:
        lines += [
            "",
            f"**Warning:** the SVM was scored on {svm['n']} images, "
            f"the fine-tuned model on {model['n']}: not the same split.",
        ]
    return "\n".join(lines) + "\n"


def evaluate(
    model_path: Path,
    test_path: Path,
    svm_metrics_path: Path | None,
    out_dir: Path,
    params: EvaluateParams,
    split_name: str | None = None,
) -> dict:
    """Score the model on the split `params.split` names (`split_name` in the figure's title).

    Writes metrics.json, confusion.{csv,png}, and comparison.md when SVM metrics
    are given (the pipeline's `summary` stage writes it instead, so that an SVM
    edit does not rerun the model).

    Returns the metrics written to metrics.json.
    """
    model_path, test_path, out_dir = Path(model_path), Path(test_path), Path(out_dir)
    svm = _svm_split(Path(svm_metrics_path) if svm_metrics_path is not None else None, params.split)
    images, labels = load_split(test_path)  # checks uint8 (N, 48, 48) and labels
    if len(images) == 0:
        raise InputError(f"{test_path}: the test split is empty")

    probs = predict_probs(model_path, images, params.batch_size)
    metrics = {"split": params.split, **score(labels, probs)}
    y_pred = probs.argmax(axis=1)

    names = ["metrics.json", "confusion.csv", "confusion.png"]
    names += ["comparison.md"] if svm_metrics_path is not None else []
    title = f"fine-tuned model, {split_name or params.split + ' split'}"
    with atomic_files(*(out_dir / n for n in names)) as tmp:  # one swap of out_dir
        write_json(tmp[0], metrics)
        write_confusion_csv(tmp[1], labels, y_pred)
        write_confusion_png(tmp[2], labels, y_pred, title)
        if svm_metrics_path is not None:
            tmp[3].write_text(
                comparison_markdown(metrics, svm, str(model_path), str(svm_metrics_path))
            )
    log.info(
        "%s: accuracy %.4f, top-2 %.4f, macro-F1 %.4f (n=%d)%s",
        params.split,
        metrics["accuracy"],
        metrics["top2_accuracy"],
        metrics["macro_f1"],
        metrics["n"],
        f"; SVM accuracy {svm['accuracy']:.4f}, macro-F1 {svm['macro_f1']:.4f}" if svm else "",
    )
    return metrics


def summarize(
    metrics_path: Path, svm_metrics_path: Path, out_path: Path, model_name: str | None = None
) -> str:
    """`summary` stage: comparison.md from the two metrics files, without TensorFlow.

    Kept out of `evaluate` so that editing the SVM reruns only this cheap step.
    """
    metrics_path, svm_metrics_path = Path(metrics_path), Path(svm_metrics_path)
    metrics = read_json(metrics_path)
    if not isinstance(metrics, dict) or not {"n", "accuracy", "macro_f1", "per_class"} <= set(
        metrics
    ):
        raise InputError(f"{metrics_path}: not an evaluate metrics.json")
    md = comparison_markdown(
        metrics,
        _svm_split(svm_metrics_path, metrics.get("split", "test")),
        model_name or str(metrics_path),
        str(svm_metrics_path),
    )
    with atomic_path(Path(out_path)) as tmp:
        tmp.write_text(md)
    return md
