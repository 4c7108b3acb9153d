"""`evaluate` stage: the fine-tuned model on the test split, side by side with the SVM baseline.

The model is applied as the `calibrate` stage's recipe (models/calibration.json)
says: its logits divided by the temperature fitted on val, and with flip TTA
the mean of the calibrated softmax of each face and its mirror image. The test
split is scored once; nothing here is chosen on it.

Writes, under `out_dir`, in one swap of the folder:

``metrics.json``
    ``{"split": "test", "n", "accuracy", "top2_accuracy", "macro_f1",
    "per_class": {class: {precision, recall, f1, support}}, "predicted_share":
    {class: share}, "calibration": {"temperature", "tta_flip", "center_crop", "ece_bins",
    "before": {"nll", "ece"}, "after": {"nll", "ece"}}, "ci95": {"resamples",
    "accuracy": {"low", "high"}, "macro_f1": {...}, "ece": {...}}}`` -- the same
    keys every run (every class always present), so ``dvc metrics diff``
    compares key for key. ``ci95`` (absent when `evaluate.bootstrap_resamples`
    is 0 or the split has one face) holds 95 % percentile-bootstrap intervals
    over the test faces: how far the score would move on another draw of
    faces like these, which says whether two runs' difference means anything.
    ``per_class`` comes from `fer_tasks.lib.metrics.classification_metrics`,
    like the SVM stage's; ``before`` is T = 1 and ``after`` the fitted T, both
    with the recipe's TTA setting.
``errors.json``, ``errors.png``
    For each true class, the `evaluate.gallery_per_class` most confident
    mistakes (test index, true and predicted class, predicted probability),
    and those faces drawn with their labels.
``reliability.png``
    Reliability diagrams before and after calibration (15 equal-width bins).
``per_class.png``
    Precision and recall of every class in one chart.
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

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib import plots
from fer_tasks.lib.calibration import (
    ECE_BINS,
    Recipe,
    center_zoom,
    ece,
    measures,
    read_recipe,
    reliability,
    tta_probs,
)
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import atomic_files, atomic_path, load_split, read_json, write_json
from fer_tasks.lib.metrics import classification_metrics, write_confusion_csv, write_confusion_png
from fer_tasks.lib.params import EvaluateParams

log = logging.getLogger(__name__)


def error_gallery(y_true: np.ndarray, probs: np.ndarray, per_class: int) -> dict[str, list[dict]]:
    """For each true class, its `per_class` most confident mistakes, most confident first.

    An entry: ``{"index", "true", "predicted", "probability"}`` (the test index,
    class names, the probability of the predicted class). Only misclassified
    faces are listed; a class with fewer mistakes lists fewer (ties: lower index first).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    out: dict[str, list[dict]] = {}
    for c, name in enumerate(CLASS_NAMES):
        wrong = np.flatnonzero((y_true == c) & (pred != c))
        top = wrong[np.argsort(-conf[wrong], kind="stable")][:per_class]
        out[name] = [
            {
                "index": int(i),
                "true": name,
                "predicted": CLASS_NAMES[pred[i]],
                "probability": float(conf[i]),
            }
            for i in top
        ]
    return out


def _gallery_rows(images: np.ndarray, gallery: dict[str, list[dict]]) -> dict[str, list[tuple]]:
    return {
        f"true: {name}": [
            (images[e["index"]], f"#{e['index']}: {e['predicted']} {e['probability']:.2f}")
            for e in entries
        ]
        for name, entries in gallery.items()
    }


def _recipe(calibration_path: Path | None) -> Recipe:
    if calibration_path is None:
        return Recipe()  # T = 1, no TTA: the model's own softmax
    recipe = read_recipe(calibration_path)
    if recipe.temperature_in_model:
        raise InputError(
            f"{calibration_path}: an export's recipe (its temperature is inside the TFLite "
            "models); evaluate takes the calibrate stage's models/calibration.json"
        )
    return recipe


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


def resample_scores(y_true: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[accuracy, macro-F1, ECE] of the faces at `idx` (repeats allowed), fast enough to bootstrap.

    Macro-F1 as `classification_metrics` computes it: the mean over all seven
    classes of 2 TP / (2 TP + FP + FN), 0 for a class neither true nor predicted.
    """
    t, p = y_true[idx], probs[idx].argmax(axis=1)
    true_n = np.bincount(t, minlength=NUM_CLASSES)
    pred_n = np.bincount(p, minlength=NUM_CLASSES)
    hits = np.bincount(t[t == p], minlength=NUM_CLASSES)
    denom = true_n + pred_n
    f1 = np.divide(2 * hits, denom, out=np.zeros(NUM_CLASSES), where=denom > 0)
    return np.array([np.mean(t == p), f1.mean(), ece(probs[idx], t)])


def intervals(y_true: np.ndarray, probs: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """95 % percentile-bootstrap intervals of accuracy, macro-F1 and ECE over the faces.

    `scipy.stats.bootstrap` resamples the faces with replacement `resamples`
    times (seeded, so reruns agree) and recomputes `resample_scores` on each draw.
    """
    from scipy.stats import bootstrap

    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    res = bootstrap(
        (np.arange(len(y_true)),),
        lambda idx: resample_scores(y_true, probs, idx),
        vectorized=False,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return {
        "resamples": resamples,
        **{
            name: {"low": float(low[i]), "high": float(high[i])}
            for i, name in enumerate(("accuracy", "macro_f1", "ece"))
        },
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
    if "ci95" in model:
        ci = model["ci95"]
        lines += [
            "",
            "95 % bootstrap intervals of the fine-tuned model over the test faces "
            f"({ci['resamples']} resamples): accuracy {_pct(ci['accuracy']['low'])} to "
            f"{_pct(ci['accuracy']['high'])}, macro-F1 {_pct(ci['macro_f1']['low'])} to "
            f"{_pct(ci['macro_f1']['high'])}.",
        ]
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
    calibration_path: Path | None,
    test_path: Path,
    svm_metrics_path: Path | None,
    out_dir: Path,
    params: EvaluateParams,
    split_name: str | None = None,
) -> dict:
    """Score the model, applied as the recipe at `calibration_path` says, on the test split.

    Without a recipe the model's own softmax is scored (T = 1, no TTA). Writes
    metrics.json, errors.{json,png}, reliability.png, per_class.png,
    confusion.{csv,png}, and comparison.md when SVM metrics are given (the
    pipeline's `summary` stage writes it instead, so that an SVM edit does not
    rerun the model). `split_name` names the split in the figures' titles.

    Returns the metrics written to metrics.json.
    """
    from fer_tasks.lib.model import load_fer_model, predict_logits

    model_path, test_path, out_dir = Path(model_path), Path(test_path), Path(out_dir)
    recipe = _recipe(Path(calibration_path) if calibration_path is not None else None)
    svm = _svm_split(Path(svm_metrics_path) if svm_metrics_path is not None else None)
    images, labels = load_split(test_path)  # checks uint8 (N, 48, 48) and labels
    if len(images) == 0:
        raise InputError(f"{test_path}: the test split is empty")

    closer = center_zoom(images, recipe.center_crop)  # the recipe's view of each face
    passes = predict_logits(load_fer_model(model_path), closer, params.batch_size, recipe.tta_flip)
    probs, raw = tta_probs(passes, recipe.temperature), tta_probs(passes, 1.0)
    calibration = {
        "temperature": recipe.temperature,
        "tta_flip": recipe.tta_flip,
        "center_crop": recipe.center_crop,
        "ece_bins": ECE_BINS,
        "before": measures(raw, labels),
        "after": measures(probs, labels),
    }
    metrics = {"split": "test", **score(labels, probs), "calibration": calibration}
    if params.bootstrap_resamples and len(labels) > 1:
        metrics["ci95"] = intervals(labels, probs, params.bootstrap_resamples)
    y_pred = probs.argmax(axis=1)
    gallery = error_gallery(labels, probs, params.gallery_per_class)  # drawn uncropped

    names = ["metrics.json", "errors.json", "errors.png", "reliability.png", "per_class.png"]
    names += ["confusion.csv", "confusion.png"]
    names += ["comparison.md"] if svm_metrics_path is not None else []
    split = split_name or "test split"
    with atomic_files(*(out_dir / n for n in names)) as tmp:  # one swap of out_dir
        out = dict(zip(names, tmp, strict=True))
        write_json(out["metrics.json"], metrics)
        write_json(out["errors.json"], {"per_class": gallery})
        plots.plot_gallery(
            _gallery_rows(images, gallery),
            out["errors.png"],
            f"Most confident mistakes, {split} (predicted class, its probability)",
            params.gallery_per_class,
        )
        plots.plot_reliability(
            {
                name: {**reliability(p, labels), "ece": calibration[key]["ece"]}
                for name, p, key in (
                    ("before calibration (T = 1)", raw, "before"),
                    (f"after (T = {recipe.temperature:.2f})", probs, "after"),
                )
            },
            out["reliability.png"],
            f"Reliability, {split}" + (" (flip TTA)" if recipe.tta_flip else ""),
        )
        plots.plot_per_class(
            metrics["per_class"], out["per_class.png"], f"Precision and recall per class, {split}"
        )
        write_confusion_csv(out["confusion.csv"], labels, y_pred)
        write_confusion_png(out["confusion.png"], labels, y_pred, f"fine-tuned model, {split}")
        if svm_metrics_path is not None:
            out["comparison.md"].write_text(
                comparison_markdown(metrics, svm, str(model_path), str(svm_metrics_path))
            )
    ci = metrics.get("ci95")
    log.info(
        "test: accuracy %.4f%s, top-2 %.4f, macro-F1 %.4f (n=%d); NLL %.4f -> %.4f, "
        "ECE %.4f -> %.4f (T = %.3f, TTA %s)%s",
        metrics["accuracy"],
        f" (95 % CI {ci['accuracy']['low']:.4f}-{ci['accuracy']['high']:.4f})" if ci else "",
        metrics["top2_accuracy"],
        metrics["macro_f1"],
        metrics["n"],
        calibration["before"]["nll"],
        calibration["after"]["nll"],
        calibration["before"]["ece"],
        calibration["after"]["ece"],
        recipe.temperature,
        "on" if recipe.tta_flip else "off",
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
