"""Classification metrics and confusion-matrix writers shared by the svm and evaluate stages.

`classification_metrics` returns plain-Python numbers under stable keys::

    {"n": 3589, "accuracy": 0.61, "macro_f1": 0.55,
     "per_class": {"angry": {"precision": .., "recall": .., "f1": .., "support": ..}, ...}}

Every class of `CLASS_NAMES` is always present in ``per_class`` (a class absent
from both y_true and y_pred scores 0.0 with support 0), and ``macro_f1`` is the
unweighted mean over all seven classes, so numbers from different runs and
splits compare key for key.

`write_confusion_csv` writes the long format the ``confusion`` template of
``dvc plots`` reads: a header ``actual,predicted`` and one row per sample with
class names. `write_confusion_png` draws the count matrix with matplotlib's Agg
canvas (no display needed). Both write atomically. Importing this module is
cheap (numpy only); scikit-learn and matplotlib are imported where used.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import atomic_path

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "write_confusion_csv",
    "write_confusion_png",
]

_LABELS = list(range(NUM_CLASSES))


def _as_labels(y: np.ndarray | list[int], what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"{what} must be 1-D class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what} must be integer class indices, got {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= NUM_CLASSES)
    if bad.any():
        raise InputError(
            f"{what}: {int(bad.sum())} labels outside 0..{NUM_CLASSES - 1} "
            f"(first: {int(y[bad][0])})"
        )
    return y


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise InputError(f"{len(t)} true labels but {len(p)} predictions")
    return t, p


def confusion_matrix(y_true, y_pred) -> np.ndarray:
    """Counts (NUM_CLASSES, NUM_CLASSES), rows = actual, columns = predicted, int64."""
    t, p = _pair(y_true, y_pred)
    return (
        np.bincount(t * NUM_CLASSES + p, minlength=NUM_CLASSES**2)
        .reshape(NUM_CLASSES, NUM_CLASSES)
        .astype(np.int64)
    )


def classification_metrics(y_true, y_pred) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support keyed by class name.

    Per-class values come from sklearn's `precision_recall_fscore_support` over
    all seven labels with ``zero_division=0``; ``macro_f1`` is their mean.
    """
    from sklearn.metrics import precision_recall_fscore_support

    t, p = _pair(y_true, y_pred)
    if len(t) == 0:
        raise InputError("cannot score an empty split")
    prec, rec, f1, support = precision_recall_fscore_support(
        t, p, labels=_LABELS, average=None, zero_division=0
    )
    return {
        "n": int(len(t)),
        "accuracy": float(np.mean(t == p)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(prec[c]),
                "recall": float(rec[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(CLASS_NAMES)
        },
    }


def write_confusion_csv(path: str | Path, y_true, y_pred) -> None:
    """Long-format confusion data for `dvc plots` (template ``confusion``, x=actual, y=predicted).

    Header ``actual,predicted``, then one row per sample in input order, class names.
    """
    t, p = _pair(y_true, y_pred)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["actual", "predicted"])
        names = np.asarray(CLASS_NAMES)
        w.writerows(zip(names[t].tolist(), names[p].tolist(), strict=True))


def write_confusion_png(path: str | Path, y_true, y_pred, title: str) -> None:
    """Count matrix as a PNG: rows actual, columns predicted, class names on both axes.

    Cells show counts; the colour is the row-normalised share (recall), so rare
    classes stay visible next to frequent ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = confusion_matrix(y_true, y_pred)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)

    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    ticks = np.arange(NUM_CLASSES)
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set_title(f"{title} (n={int(cm.sum())}, accuracy={acc:.3f})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
