"""Temperature scaling, flip test-time augmentation, and how well probabilities are calibrated.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017) divides the logits by one scalar T > 0 fitted on held-out data by
minimising the negative log-likelihood (NLL); T > 1 softens an over-confident
softmax, and the argmax, hence the accuracy, does not change. With flip TTA
the probabilities of a face are the mean of the calibrated softmax of the
face and of its mirror image, and T is fitted on that mean.

The expected calibration error (ECE) is the one of Guo et al. (after Naeini
et al., 2015): predictions go into M equal-width bins (lower, upper] by their
confidence (the top probability), and ECE = sum over bins of |B| / n *
|accuracy(B) - mean confidence(B)|, with M = 15 as in Guo et al.

A *recipe* says how a model is applied: ``{"temperature": T, "tta_flip": bool,
"temperature_in_model": bool, "center_crop": px}``. ``center_crop`` cuts that
many pixels from each side of the 48x48 face and scales the rest back to 48x48
(a zoomed-in view; every TTA pass sees it) before the model runs. The `calibrate` stage writes one
(models/calibration.json, with its fit figures); `export` writes one beside the
TFLite files (inference.json, the temperature already inside the models);
`evaluate` and `fer predict` follow them. numpy only at import, so `fer predict`
keeps its light install; scipy is imported where the fit runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fer_tasks import NUM_CLASSES
from fer_tasks.lib.errors import InputError, MissingInput

ECE_BINS = 15
MAX_CENTER_CROP = 8  # pixels per side of a 48x48 face: at most a 32x32 centre
T_BOUNDS = (0.05, 20.0)  # the search interval of the fit; T = 1 is inside it


@dataclass(frozen=True)
class Recipe:
    temperature: float = 1.0
    tta_flip: bool = False
    temperature_in_model: bool = False  # the model's own softmax already divides by T
    center_crop: int = 0  # pixels cut from each side, the rest scaled back (center_zoom)

    def to_json(self) -> dict:
        return asdict(self)


def read_recipe(path: str | Path) -> Recipe:
    """The recipe in a JSON file (other keys, such as fit figures, are ignored)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInput(f"{path}: calibration file not found") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with temperature and tta_flip")
    t = data.get("temperature")
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf:
        raise InputError(f"{path}: temperature must be a positive number, got {t!r}")
    for key in ("tta_flip", "temperature_in_model"):
        if not isinstance(data.get(key, False), bool):
            raise InputError(f"{path}: {key} must be true or false, got {data[key]!r}")
    crop = data.get("center_crop", 0)
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 <= crop <= MAX_CENTER_CROP:
        raise InputError(
            f"{path}: center_crop must be a whole number of pixels 0..{MAX_CENTER_CROP}, "
            f"got {crop!r}"
        )
    return Recipe(
        float(t), data.get("tta_flip", False), data.get("temperature_in_model", False), crop
    )


def center_zoom(images: np.ndarray, crop: int) -> np.ndarray:
    """Faces (N, H, W) uint8 with `crop` pixels cut from each side and the centre scaled
    back to (H, W) (Pillow, bilinear): the same faces, seen closer. `crop` 0 returns them."""
    images = np.asarray(images)
    if crop == 0:
        return images
    n, h, w = images.shape
    if not 0 < 2 * crop < min(h, w):
        raise InputError(f"center_crop {crop} leaves nothing of a {h}x{w} face")
    from PIL import Image

    return (
        np.stack(
            [
                np.asarray(
                    Image.fromarray(f[crop : h - crop, crop : w - crop]).resize(
                        (w, h), Image.BILINEAR
                    )
                )
                for f in images.astype(np.uint8, copy=False)
            ]
        )
        if n
        else images
    )


def flip(images: np.ndarray) -> np.ndarray:
    """Mirror images (N, H, W) left-right."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def tta_probs(logit_passes: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over passes (P, N, 7) of each pass's calibrated softmax -> (N, 7)."""
    return softmax(logit_passes, temperature).mean(axis=0)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): temperature scaling of a model that outputs probabilities.

    Equal to scaling its logits (the softmax's shift cancels) wherever no
    probability underflowed to 0; a 0 stays 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p / p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return softmax(np.log(p), temperature)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or len(probs) != len(labels):
        raise InputError(
            f"expected probabilities (N, {NUM_CLASSES}) for N labels, "
            f"got {probs.shape} for {labels.shape}"
        )
    if len(labels) == 0:
        raise InputError("cannot measure calibration on an empty split")
    return probs, labels.astype(np.int64)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    probs, labels = _check(probs, labels)
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin (lower, upper]: count, mean confidence, accuracy."""
    probs, labels = _check(probs, labels)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # bin i holds (edges[i], edges[i+1]]
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=bins) / count
        acc = np.bincount(idx, right, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over `bins` equal-width confidence bins."""
    r = reliability(probs, labels, bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float(np.sum(r["count"][used] / r["count"].sum() * gaps))


def fit_temperature(logit_passes: np.ndarray, labels: np.ndarray) -> float:
    """The T in `T_BOUNDS` that minimises the NLL of `tta_probs(logit_passes, T)`.

    A bounded scalar search over log T (scipy). The NLL of a single pass is convex
    in 1/T; a mean of passes need not be, so the result is kept only when its
    NLL is below that of T = 1: the fit never makes the NLL worse on the data it saw.
    """
    from scipy.optimize import minimize_scalar

    passes = np.asarray(logit_passes, dtype=np.float64)
    if passes.ndim != 3 or passes.shape[1:] != (len(labels), NUM_CLASSES):
        raise InputError(
            f"expected logits (passes, {len(labels)}, {NUM_CLASSES}), got {passes.shape}"
        )

    def loss(log_t: float) -> float:
        return nll(tta_probs(passes, math.exp(log_t)), labels)

    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x)) if res.fun < loss(0.0) else 1.0


def measures(probs: np.ndarray, labels: np.ndarray) -> dict:
    """NLL and ECE of probabilities against labels."""
    return {"nll": nll(probs, labels), "ece": ece(probs, labels)}
