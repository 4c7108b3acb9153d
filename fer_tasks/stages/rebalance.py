"""Rebalance stage: counter the class imbalance of the prepared training split.

FER2013 is heavily imbalanced (disgust ~1.5 % of the images, happy ~25 %). This
stage offers four answers, chosen by `RebalanceParams.method`:

* ``none``: the training split is copied unchanged; every class weight is 1.0.
* ``class_weight``: the split is copied unchanged; the class weights file tells
  the trainer how to weight the loss (``balanced`` or ``effective``).
* ``oversample``: every class is raised to ``target_ratio`` x the largest class
  count (never below its own count) with duplicates, augmented when
  ``augment`` is set; all class weights are 1.0.
* ``undersample``: every class is cut to at most ``target_ratio`` x the smallest
  class count, by a seeded random draw without replacement; weights 1.0.

Targets and caps are ``target_ratio`` x count rounded half up; the undersample
cap is at least 1. Oversampled duplicates are spread evenly over the images of
their class (each copied floor or ceil of extra / n_c times).

Empty classes (a class with no training image):

* ``none``: fine, the class is reported with count 0.
* ``class_weight``: the class gets weight 0.0 (it never occurs in a batch, so
  its weight is never used) and a warning is logged; the other weights are
  computed over the non-empty classes only (see `_balanced_weights` and
  `_effective_weights`).
* ``oversample`` / ``undersample``: ValueError naming the file and the class,
  since there is nothing to duplicate, or the cap would be zero.

Resampled splits (oversample, undersample) are shuffled with the seed; for
``none`` and ``class_weight`` the arrays are written back in their input order,
so those methods are exact no-ops on the data.

Every output is written atomically. Importing this module is cheap: numpy only;
scipy, scikit-learn and matplotlib are imported inside the functions using them,
and TensorFlow is never imported.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import atomic_files, atomic_path, load_split, save_split, write_json
from fer_tasks.lib.params import RebalanceParams

__all__ = ["rebalance"]

logger = logging.getLogger(__name__)

# augmentation ranges for oversampled duplicates
MAX_SHIFT_PX = 3
MAX_ROTATION_DEG = 10.0
CONTRAST_RANGE = (0.8, 1.2)  # multiplicative, around the image mean
BRIGHTNESS_RANGE = (-20.0, 20.0)  # additive, in 0..255 grey levels
_MAX_REDRAWS = 5  # re-draw an augmentation that came out identical to its source


# ---------------------------------------------------------------------------
# loading and counting


def _load_train(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a checked training split (see `load_split`); it must not be empty."""
    images, labels = load_split(path)
    if len(labels) == 0:
        raise InputError(f"{path}: the training split is empty")
    return images, labels


def _class_counts(labels: np.ndarray) -> np.ndarray:
    """Images per class, shape (NUM_CLASSES,), int64."""
    return np.bincount(labels, minlength=NUM_CLASSES).astype(np.int64)


def _by_name(values: np.ndarray) -> dict[str, float | int]:
    """Per-class values keyed by class name, as plain Python numbers."""
    return {name: values[c].item() for c, name in enumerate(CLASS_NAMES)}


def _empty_classes(counts: np.ndarray) -> list[str]:
    return [CLASS_NAMES[c] for c in np.flatnonzero(counts == 0)]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------
# class weights


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
    """sklearn "balanced" weights n / (k * n_c), shape (NUM_CLASSES,).

    k is the number of non-empty classes, so the weighted class totals
    w_c * n_c all equal n / k and sum to n. An empty class gets weight 0.0.
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.zeros(NUM_CLASSES, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def _effective_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Class-balanced weights of Cui et al. (2019), shape (NUM_CLASSES,).

    w_c = (1 - beta) / (1 - beta ** n_c), the inverse "effective number of
    samples" of class c, then normalised so the weights of the k non-empty
    classes sum to k (the paper's normalisation; with no empty class they sum
    to NUM_CLASSES). An empty class gets weight 0.0. beta -> 0 gives uniform
    weights; beta -> 1 tends to inverse class frequency.
    """
    if not 0.0 < beta < 1.0:
        raise InputError(f"beta must be in (0, 1), got {beta}")
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros(len(counts), dtype=np.float64)
    # 1 - beta**n computed as -expm1(n * log(beta)): accurate for beta near 1
    effective_num = -np.expm1(counts[present] * math.log(beta)) / (1.0 - beta)
    raw = 1.0 / effective_num
    weights[present] = raw * (present.sum() / raw.sum())
    return weights


def _class_weights(labels: np.ndarray, counts: np.ndarray, params: RebalanceParams) -> np.ndarray:
    """Weights for the trainer's loss: computed for class_weight, else all 1.0."""
    if params.method != "class_weight":
        return np.ones(NUM_CLASSES, dtype=np.float64)
    empty = _empty_classes(counts)
    if empty:
        logger.warning("classes with no training image get weight 0.0: %s", ", ".join(empty))
    if params.weighting == "balanced":
        return _balanced_weights(labels)
    return _effective_weights(counts, params.beta)


# ---------------------------------------------------------------------------
# augmentation


def _augment_one(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random flip / shift / rotation / brightness-contrast variant of a uint8 image."""
    from scipy import ndimage

    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    theta = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    shift = rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=2).astype(np.float64)
    # output = R (input - c) + c + shift  =>  input = R^T output + c - R^T (c + shift)
    cos, sin = math.cos(theta), math.sin(theta)
    rot_t = np.array([[cos, sin], [-sin, cos]])
    centre = (np.array(img.shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - rot_t @ (centre + shift)
    img = ndimage.affine_transform(img, rot_t, offset=offset, order=1, mode="nearest")
    contrast = rng.uniform(*CONTRAST_RANGE)
    brightness = rng.uniform(*BRIGHTNESS_RANGE)
    mean = float(img.mean())
    img = (img - mean) * contrast + mean + brightness
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _augment_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmented copies of uint8 (N, H, W) images, each different from its source.

    An augmentation that comes out pixel-identical to its source (possible for
    near-identity draws or flat images) is re-drawn up to a few times.
    """
    out = np.empty_like(images)
    for i, src in enumerate(images):
        aug = _augment_one(src, rng)
        for _ in range(_MAX_REDRAWS):
            if not np.array_equal(aug, src):
                break
            aug = _augment_one(src, rng)
        out[i] = aug
    return out


# ---------------------------------------------------------------------------
# resampling


def _oversample_indices(
    labels: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Source indices of the duplicates to add, class by class.

    Duplicates are spread evenly: each image of a class is copied
    floor(extra / n_c) times, and a random subset (without replacement) once more.
    """
    parts: list[np.ndarray] = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        extra = int(targets[c]) - len(idx)
        if extra <= 0:
            continue
        full, rest = divmod(extra, len(idx))
        parts.append(np.tile(idx, full))
        parts.append(_choice_sorted(rng, idx, rest))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


_EMPTY_OVERSAMPLE = (
    "cannot oversample class(es) with no images: {} (use method class_weight, or fix the data)"
)
_EMPTY_UNDERSAMPLE = (
    "cannot undersample to a multiple of an empty class: {} has no images, "
    "so every class would be cut to 0"
)


def _counts_without_empty(path: Path, labels: np.ndarray, message: str) -> np.ndarray:
    """Per-class counts; InputError (`message` with the empty classes) if any class has none."""
    counts = _class_counts(labels)
    empty = _empty_classes(counts)
    if empty:
        raise InputError(f"{path}: " + message.format(", ".join(empty)))
    return counts


def _oversample(
    path: Path, images: np.ndarray, labels: np.ndarray, params: RebalanceParams
) -> tuple[np.ndarray, np.ndarray, int]:
    """Raise every class to target_ratio x the largest count; return images, labels, n added."""
    counts = _counts_without_empty(path, labels, _EMPTY_OVERSAMPLE)
    target = _round_half_up(params.target_ratio * int(counts.max()))
    targets = np.maximum(counts, target)
    select_rng, augment_rng, shuffle_rng = _rngs(params.seed)
    src = _oversample_indices(labels, targets, select_rng)
    extra = images[src]
    if params.augment and len(src):
        extra = _augment_images(extra, augment_rng)
    out_images = np.concatenate([images, extra])
    out_labels = np.concatenate([labels, labels[src]])
    order = shuffle_rng.permutation(len(out_labels))
    return out_images[order], out_labels[order], len(src)


def _undersample(
    path: Path, images: np.ndarray, labels: np.ndarray, params: RebalanceParams
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut every class to at most target_ratio x the smallest count; return images, labels, cap."""
    counts = _counts_without_empty(path, labels, _EMPTY_UNDERSAMPLE)
    cap = max(1, _round_half_up(params.target_ratio * int(counts.min())))
    select_rng, _, shuffle_rng = _rngs(params.seed)
    keep: list[np.ndarray] = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        keep.append(idx if len(idx) <= cap else _choice_sorted(select_rng, idx, cap))
    kept = np.concatenate(keep)
    kept = kept[shuffle_rng.permutation(len(kept))]
    return images[kept], labels[kept], cap


def _choice_sorted(rng: np.random.Generator, idx: np.ndarray, size: int) -> np.ndarray:
    """`size` distinct elements of `idx`, in their original order."""
    return np.sort(rng.choice(idx, size=size, replace=False))


def _rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for selection, augmentation and shuffling."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


# ---------------------------------------------------------------------------
# outputs


def _plot_counts(path: Path, before: np.ndarray, after: np.ndarray, title: str) -> None:
    """Grouped bar chart of per-class counts before vs after, written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(NUM_CLASSES)
    width = 0.4
    bars_b = ax.bar(x - width / 2, before, width, label="before")
    bars_a = ax.bar(x + width / 2, after, width, label="after")
    ax.bar_label(bars_b, fontsize=7)
    ax.bar_label(bars_a, fontsize=7)
    ax.set_xticks(x, CLASS_NAMES)
    ax.set_ylabel("training images")
    ax.set_title(title)
    ax.set_ylim(0, max(1, int(before.max()), int(after.max())) * 1.2)  # room for the legend
    ax.legend(loc="upper center", ncols=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _weights_json(method: str, weights: np.ndarray) -> dict:
    return {
        "method": method,
        "weights": {str(c): float(weights[c]) for c in range(NUM_CLASSES)},
        "names": {str(c): name for c, name in enumerate(CLASS_NAMES)},
    }


# ---------------------------------------------------------------------------
# entry point


def rebalance(
    train_path: Path,
    out_train: Path,
    class_weights_path: Path,
    report_json: Path,
    report_png: Path,
    params: RebalanceParams,
) -> dict:
    """Rebalance the training split `train_path` according to `params`.

    Writes, each atomically:

    * `out_train`: the (resampled) split, via `save_split`;
    * `class_weights_path`: ``{"method", "weights": {"0": w0, ..., "6": w6},
      "names": {"0": "angry", ...}}`` (string keys; all 1.0 unless
      method is class_weight);
    * `report_json`: counts before/after keyed by class name, totals, method,
      weights (keyed by class name) and the parameters; this dict is returned;
    * `report_png`: grouped bar chart of the counts before vs after.

    Raises ValueError naming the file for malformed input, and for
    oversample/undersample naming the empty class(es) that make it impossible.
    """
    train_path, out_train = Path(train_path), Path(out_train)
    images, labels = _load_train(train_path)
    before = _class_counts(labels)
    logger.info("%s: %d images, per class %s", train_path, len(labels), _by_name(before))

    extra: dict[str, int] = {}
    if params.method == "oversample":
        images, labels, added = _oversample(train_path, images, labels, params)
        extra = {"added": added, "augmented": added if params.augment else 0}
    elif params.method == "undersample":
        images, labels, cap = _undersample(train_path, images, labels, params)
        extra = {"cap": cap, "removed": int(before.sum()) - len(labels)}
    after = _class_counts(labels)
    weights = _class_weights(labels, after, params)

    report = {
        "method": params.method,
        "input": str(train_path),
        "params": params.model_dump(),
        "before": _by_name(before),
        "after": _by_name(after),
        "total_before": int(before.sum()),
        "total_after": int(after.sum()),
        **extra,
        **({"weighting": params.weighting} if params.method == "class_weight" else {}),
        "weights": _by_name(weights),
    }

    # the pair a phase reads: published together (one swap when they share a folder)
    with atomic_files(out_train, class_weights_path) as (train_tmp, weights_tmp):
        save_split(train_tmp, images, labels)
        write_json(weights_tmp, _weights_json(params.method, weights))
    write_json(report_json, report)
    _plot_counts(Path(report_png), before, after, f"training split: {params.method}")
    logger.info(
        "%s: %s -> %d images, per class %s",
        out_train,
        params.method,
        len(labels),
        _by_name(after),
    )
    return report
