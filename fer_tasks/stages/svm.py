"""`svm` stage: the SVM baseline on frozen-backbone feature vectors.

Reads ``train.npz`` (required), ``val.npz`` and ``test.npz`` (optional, at
least one of them) from the features directory (`fer_tasks.stages.features`: float32
``features`` (N, D), int64 ``labels``), fits a scikit-learn pipeline

    StandardScaler -> [PCA(pca_components)] -> LinearSVC (primal) | SVC(rbf)

on the training split (optionally a stratified, seeded subsample of
``max_train_samples`` rows) and writes, each atomically:

* ``out_dir/model.joblib``: the fitted pipeline (`joblib.load` it; `.predict`
  takes (N, D) features, returns class indices);
* ``reports_dir/metrics.json``: `fer_tasks.lib.metrics.classification_metrics` for
  ``val`` and ``test`` (whichever exist), plus ``n_train``, ``n_features``,
  ``fit_seconds``, ``train_accuracy`` and ``converged``;
* ``reports_dir/confusion.csv`` / ``confusion.png``: the test split (val when
  there is no test split); the CSV is `dvc plots`' long ``actual,predicted``
  format with class names.

``max_iter`` bounds LinearSVC only; SVC(rbf) runs libsvm to convergence. A
LinearSVC that stops at ``max_iter`` logs a warning and records
``"converged": false`` instead of failing.
"""

from __future__ import annotations

import logging
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fer_tasks import NUM_CLASSES
from fer_tasks.lib.errors import InputError, MissingInput
from fer_tasks.lib.io import atomic_files, atomic_group, write_json
from fer_tasks.lib.metrics import classification_metrics, write_confusion_csv, write_confusion_png
from fer_tasks.lib.params import SvmParams

__all__ = ["build_pipeline", "stratified_subsample", "train_svm"]

log = logging.getLogger(__name__)

# written under --reports and published together (one swap of that folder)
REPORT_FILES = ("metrics.json", "confusion.csv", "confusion.png")

EVAL_SPLITS = ("val", "test")


def _load_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as z:
            x, y = z["features"], z["labels"]
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a features .npz with features and labels ({err})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{path}: features must be float (N, D), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: {len(x)} feature rows but labels {y.dtype} {y.shape}")
    if len(y) == 0:
        raise InputError(f"{path}: the split is empty")
    bad = (y < 0) | (y >= NUM_CLASSES)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} labels outside 0..{NUM_CLASSES - 1}")
    if not np.isfinite(x).all():
        raise InputError(f"{path}: features contain NaN or inf")
    return x, y.astype(np.int64)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` rows drawn without replacement, class shares kept.

    Each class gets floor(n * n_c / N) rows, the remainder going to the classes
    with the largest fractional parts (ties: lower class index), so the sizes
    sum to exactly `n`. `n >= len(labels)` returns every index.
    """
    total = len(labels)
    if n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / total)
    take = np.floor(exact).astype(np.int64)
    order = np.lexsort((classes, -(exact - take)))  # largest remainder first
    take[order[: n - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def build_pipeline(params: SvmParams, n_samples: int, n_features: int):
    """The unfitted sklearn Pipeline for `params`."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    steps: list = [("scale", StandardScaler())]
    if params.pca_components is not None:
        limit = min(n_samples, n_features)
        if params.pca_components > limit:
            raise InputError(
                f"svm.pca_components: {params.pca_components} exceeds min(n_train, n_features) "
                f"= min({n_samples}, {n_features}) = {limit}"
            )
        steps.append(("pca", PCA(n_components=params.pca_components, random_state=params.seed)))
    class_weight = None if params.class_weight == "none" else params.class_weight
    if params.kernel == "linear":
        clf = LinearSVC(
            C=params.C,
            dual=False,
            class_weight=class_weight,
            max_iter=params.max_iter,
            random_state=params.seed,
        )
    else:
        clf = SVC(kernel="rbf", C=params.C, class_weight=class_weight, random_state=params.seed)
    steps.append(("svm", clf))
    return Pipeline(steps)


def train_svm(features_dir: Path, out_dir: Path, reports_dir: Path, params: SvmParams) -> dict:
    """Fit the SVM baseline on `features_dir/train.npz`; write model, metrics and confusion.

    Returns the metrics dict written to `reports_dir/metrics.json`.
    """
    import joblib
    from sklearn.exceptions import ConvergenceWarning

    features_dir, out_dir, reports_dir = Path(features_dir), Path(out_dir), Path(reports_dir)
    train_path = features_dir / "train.npz"
    if not train_path.is_file():
        raise MissingInput(f"{train_path}: training features not found")
    evals = {s: features_dir / f"{s}.npz" for s in EVAL_SPLITS}
    evals = {s: p for s, p in evals.items() if p.is_file()}
    if not evals:
        raise MissingInput(f"{features_dir}: neither val.npz nor test.npz to score on")

    x, y = _load_features(train_path)
    if params.max_train_samples is not None and params.max_train_samples < len(y):
        keep = stratified_subsample(y, params.max_train_samples, params.seed)
        x, y = x[keep], y[keep]
        log.info("svm: training on a stratified subsample of %d rows", len(y))
    if len(np.unique(y)) < 2:
        raise InputError(f"{train_path}: the training labels hold fewer than two classes")

    model = build_pipeline(params, *x.shape)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    fit_seconds = time.perf_counter() - start
    converged = True
    for w in caught:  # convergence is recorded; anything else is passed on
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not converged:
        log.warning("svm: solver stopped at max_iter=%d before converging", params.max_iter)
    log.info("svm: %s fit on %d x %d in %.1f s", params.kernel, *x.shape, fit_seconds)

    metrics: dict = {}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, path in evals.items():
        xe, ye = _load_features(path)
        if xe.shape[1] != x.shape[1]:
            raise InputError(f"{path}: {xe.shape[1]} features per row, train has {x.shape[1]}")
        pred = model.predict(xe).astype(np.int64)
        preds[split] = (ye, pred)
        metrics[split] = classification_metrics(ye, pred)
        log.info(
            "svm %s: accuracy %.4f, macro-F1 %.4f",
            split,
            metrics[split]["accuracy"],
            metrics[split]["macro_f1"],
        )
    metrics.update(
        {
            "n_train": int(len(y)),
            "n_features": int(x.shape[1]),
            "fit_seconds": round(fit_seconds, 3),
            "train_accuracy": float(np.mean(model.predict(x) == y)),
            "converged": converged,
        }
    )

    with atomic_group(out_dir) as tmp:
        joblib.dump(model, tmp / "model.joblib")
    cm_split = "test" if "test" in preds else "val"
    with atomic_files(*(reports_dir / f for f in REPORT_FILES)) as (m, cm_csv, cm_png):
        write_json(m, metrics)
        write_confusion_csv(cm_csv, *preds[cm_split])
        write_confusion_png(cm_png, *preds[cm_split], title=f"SVM ({params.kernel}) on {cm_split}")
    return metrics
