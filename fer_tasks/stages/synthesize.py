"""Embedded default data set: a procedural generator of FER2013-style faces.

`synthesize(out_csv, params)` writes a CSV in the FER2013 ICML layout
(`emotion,pixels,Usage`; 2304 space-separated ints 0-255, 48x48 row-major;
Usage = Training / PublicTest / PrivateTest), atomically and byte-for-byte
deterministic for a seed. It exists so the pipeline runs end to end without
the real (licensed) FER2013 file.

Class balance
    Shares follow FER2013 (angry 13.9 %, disgust 1.5 %, fear 14.3 %, happy
    25.1 %, sad 16.8 %, surprise 11.0 %, neutral 17.3 %), allocated by largest
    remainder. Each split is stratified per class, and every class gets at least
    two rows in every split with a non-zero share, even at small n. Rows are
    grouped by Usage (as in the real file) and shuffled within each group.

Rendering
    Every shape is an anti-aliased signed-distance field evaluated on the 48x48
    pixel grid in face-local coordinates (unit = half the face height; u to the
    right, v downwards), vectorised over a chunk of faces. Layers, back to front:
    background gradient, hair/head silhouette, neck, face ellipse (narrower jaw,
    radial shading), hair fringe, eye sockets, eyes (sclera, iris, lid line),
    brows (two capsules: inner-mid-outer), forehead furrows, nose (nostrils,
    shadow, bridge wrinkles), nasolabial folds, mouth, optional glasses.

    The mouth is one parametric shape: a centre curve c(u) = y - curve * t^2
    (t = u / half-width) with an opening of (1 - t^2)^shape above and below it
    (shape 0.5 = an ellipse, 1 = a lens, 0.3 = a stretched box), lips around it,
    an optional band of upper teeth and an optional one-sided upper-lip raise.

Expression cues (value at full intensity, blended from neutral)
    angry     brows low with inner ends pulled down (V), vertical furrows between
              the brows, narrowed eyes, lips pressed into a tight flat line or
              (40 %) bared clenched teeth.
    disgust   brows lowered, eyes narrowed most, horizontal wrinkles across the
              nose bridge, raised/flared nostrils, deep nasolabial folds, upper
              lip raised on one side (asymmetric) showing some teeth.
    fear      brows raised with inner ends up, eyes wide (sclera visible), wide
              horizontally stretched open mouth with teeth.
    happy     upward-curved smile, closed or (55 %) open with upper teeth,
              smile folds, cheeks squeezing the eyes slightly.
    sad       inner brow ends up and outer ends down, slightly lowered lids,
              downward-curved closed mouth.
    surprise  brows raised high and arched, eyes widest, round open "O" mouth
              with the jaw dropped.
    neutral   flat brows, relaxed eyes, flat closed mouth; leaks up to 25 % of a
              random other expression.

Difficulty
    Expression intensity varies per face (uniform on [0.6, 1.2] of the full cue,
    plus per-cue jitter), so weak samples sit close to neutral or to a
    neighbouring class (angry/disgust, fear/surprise, sad/neutral), as in the
    noisy real data. Nuisances: face position, scale, in-plane rotation, yaw
    (features shifted sideways), per-person geometry (face width, eye spacing
    and size, brow height/thickness/tone, nose and mouth height, lip thickness,
    gaze), skin / hair / background shades and gradients, directional lighting,
    contrast and brightness, glasses or sunglasses (hide the eyes), Gaussian
    blur and noise. Measured with n=3500, seed 0, trained on Training and scored
    on PublicTest + PrivateTest: logistic regression (C=0.01) on standardised
    raw pixels 0.41 (tests/test_synthesize.py keeps it in (0.24, 0.6)); a small
    3-block Keras CNN, 12 epochs on CPU, 0.83.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fer_tasks import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.face_render import BLUR_SIGMAS, render
from fer_tasks.lib.io import atomic_path
from fer_tasks.lib.params import USAGES, SynthesizeParams

log = logging.getLogger(__name__)

CLASS_SHARES = np.array([0.139, 0.015, 0.143, 0.251, 0.168, 0.110, 0.173])
MIN_PER_SPLIT = 2
CHUNK = 512
_NEUTRAL = CLASS_NAMES.index("neutral")
_LUT = tuple(str(i) for i in range(256))

# Expression cues at full intensity, per class in CLASS_NAMES order:
#             angry  disgust fear   happy  sad    surprise neutral
_EXPR: dict[str, tuple[float, ...]] = {
    "brow_in": (0.12, 0.06, -0.08, 0.00, -0.09, -0.03, 0.0),  # inner-end drop, + = down
    "brow_out": (-0.03, 0.00, -0.02, 0.00, 0.04, -0.02, 0.0),  # outer-end drop
    "brow_lift": (0.05, 0.04, -0.07, -0.01, 0.00, -0.15, 0.0),  # whole brow, - = up
    "arch": (0.00, 0.01, 0.01, 0.02, 0.02, 0.06, 0.02),  # brow arch height
    "eye_open": (0.040, 0.030, 0.105, 0.045, 0.048, 0.115, 0.065),  # lid half-height
    "mouth_w": (0.21, 0.24, 0.34, 0.33, 0.24, 0.12, 0.25),  # mouth half-width
    "curve": (-0.02, -0.05, -0.04, 0.12, -0.10, 0.00, 0.0),  # corner lift, + = up
    "open_top": (0.0, 0.02, 0.05, 0.0, 0.0, 0.09, 0.0),
    "open_bot": (0.0, 0.01, 0.09, 0.0, 0.0, 0.16, 0.0),
    "shape": (1.0, 0.6, 0.3, 0.6, 1.0, 0.5, 1.0),  # opening profile exponent
    "teeth": (0.0, 0.6, 0.7, 0.0, 0.0, 0.0, 0.0),  # teeth brightness mix
    "teeth_frac": (0.9, 0.7, 0.5, 0.5, 0.5, 0.4, 0.5),  # share of the opening
    "lip_raise": (0.0, 0.08, 0.0, 0.0, 0.0, 0.0, 0.0),  # one-sided upper-lip raise
    "mouth_dy": (0.0, -0.02, 0.03, 0.0, 0.02, 0.06, 0.0),  # jaw drop, + = down
    "press": (1.0, 0.2, 0.0, 0.0, 0.4, 0.0, 0.0),  # lips pressed thin
    "furrow": (1.0, 0.4, 0.3, 0.0, 0.2, 0.0, 0.0),  # vertical lines between brows
    "wrinkle": (0.1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # nose-bridge wrinkles
    "fold": (0.2, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0),  # nasolabial folds
}
# Alternative mouths: (class, probability, overrides).
_VARIANTS: tuple[tuple[int, float, dict[str, float]], ...] = (
    # happy: open smile showing the upper teeth
    (3, 0.55, {"open_top": 0.015, "open_bot": 0.12, "teeth": 1.0, "shape": 0.6}),
    # angry: bared, clenched teeth instead of pressed lips
    (0, 0.30, {"mouth_w": 0.27, "open_top": 0.035, "open_bot": 0.035, "shape": 0.25,
               "teeth": 1.0, "press": 0.0}),
)  # fmt: skip
# Per-face jitter (standard deviation) added to each cue after blending.
_JITTER: dict[str, float] = {
    "brow_in": 0.015, "brow_out": 0.015, "brow_lift": 0.015, "arch": 0.01, "eye_open": 0.008,
    "mouth_w": 0.02, "curve": 0.015, "open_top": 0.006, "open_bot": 0.008, "mouth_dy": 0.015,
}  # fmt: skip
_INTENSITY = (0.6, 1.2)
_NEUTRAL_LEAK = 0.2


def synthesize(out_csv: Path, params: SynthesizeParams) -> dict:
    """Write `params.n_samples` synthetic faces to `out_csv`; return per-Usage class counts."""
    start = time.perf_counter()
    out_csv = Path(out_csv)
    labels, usages = _layout(params)
    rng = np.random.default_rng(params.seed)
    faces = _draw_faces(rng, labels)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="\n") as fh:
        fh.write("emotion,pixels,Usage\n")
        for lo in range(0, len(labels), CHUNK):
            hi = min(lo + CHUNK, len(labels))
            chunk = {k: v[lo:hi] for k, v in faces.items()}
            pixels = render(chunk, rng).reshape(hi - lo, -1)
            for label, usage, row in zip(labels[lo:hi], usages[lo:hi], pixels, strict=True):
                fh.write(f"{label},{' '.join(map(_LUT.__getitem__, row.tolist()))},{usage}\n")
    counts = {
        u: {name: int(np.sum((usages == u) & (labels == c))) for c, name in enumerate(CLASS_NAMES)}
        for u in USAGES
    }
    log.info(
        "wrote %d synthetic faces to %s in %.1fs (seed %d)",
        len(labels),
        out_csv,
        time.perf_counter() - start,
        params.seed,
    )
    return {
        "path": str(out_csv),
        "n_samples": int(len(labels)),
        "seed": params.seed,
        "counts": counts,
    }


# ---------------------------------------------------------------- layout


def _class_counts(n: int, minimum: int) -> np.ndarray:
    """Largest-remainder allocation of n rows to the FER2013 shares, each >= minimum."""
    raw = n * CLASS_SHARES / CLASS_SHARES.sum()
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    while (short := np.flatnonzero(counts < minimum)).size:
        counts[short[0]] += 1
        counts[np.argmax(counts)] -= 1
    return counts


def _split_counts(count: int, fractions: tuple[float, float, float]) -> list[int]:
    """Per-Usage rows for one class: rounded shares, >= MIN_PER_SPLIT where the share > 0."""
    val, test = (max(MIN_PER_SPLIT, round(count * f)) if f > 0 else 0 for f in fractions[1:])
    while fractions[0] > 0 and count - val - test < MIN_PER_SPLIT:
        if val >= test and val > MIN_PER_SPLIT:
            val -= 1
        else:
            test -= 1
    return [count - val - test, val, test]


def _layout(params: SynthesizeParams) -> tuple[np.ndarray, np.ndarray]:
    """Labels and Usage per row: grouped by Usage, shuffled within each group."""
    train = 1.0 - params.val_fraction - params.test_fraction
    if train < 0 or (train == 0 and params.val_fraction * params.test_fraction == 0):
        raise InputError(
            f"val_fraction + test_fraction must leave room for two splits, "
            f"got {params.val_fraction} + {params.test_fraction}"
        )
    fractions = (train, params.val_fraction, params.test_fraction)
    minimum = MIN_PER_SPLIT * sum(f > 0 for f in fractions)
    if params.n_samples < minimum * NUM_CLASSES:
        raise InputError(f"n_samples={params.n_samples} too small: need {minimum * NUM_CLASSES}")
    per_usage: list[list[np.ndarray]] = [[] for _ in USAGES]
    for c, count in enumerate(_class_counts(params.n_samples, minimum)):
        for u, k in enumerate(_split_counts(int(count), fractions)):
            per_usage[u].append(np.full(k, c))
    rng = np.random.default_rng([params.seed, 1])
    labels = [rng.permutation(np.concatenate(group)) for group in per_usage]
    usages = [
        np.full(len(lab), name, dtype=object) for lab, name in zip(labels, USAGES, strict=True)
    ]
    return np.concatenate(labels), np.concatenate(usages)


# ---------------------------------------------------------------- face parameters


def _draw_expression(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Cue values per face: neutral + intensity * (class target - neutral) + jitter."""
    n = len(labels)
    table = {k: np.asarray(v, dtype=np.float64) for k, v in _EXPR.items()}
    target = {k: v[labels] for k, v in table.items()}
    for cls, prob, overrides in _VARIANTS:
        pick = (labels == cls) & (rng.random(n) < prob)
        for key, value in overrides.items():
            target[key][pick] = value
    # neutral faces leak a little of a random other expression
    leak_to = rng.integers(0, NUM_CLASSES - 1, n)
    leak_to[leak_to >= _NEUTRAL] += 1
    is_neutral = labels == _NEUTRAL
    alpha = rng.uniform(*_INTENSITY, n)
    alpha[is_neutral] = rng.uniform(0.0, _NEUTRAL_LEAK, is_neutral.sum())
    out = {}
    for key, values in table.items():
        goal = np.where(is_neutral, values[leak_to], target[key])
        out[key] = values[_NEUTRAL] + alpha * (goal - values[_NEUTRAL])
        out[key] += rng.normal(0.0, _JITTER.get(key, 0.0), n)
    out["eye_open"] = np.clip(out["eye_open"], 0.018, None)
    out["mouth_w"] = np.clip(out["mouth_w"], 0.08, None)
    for key in ("open_top", "open_bot", "teeth", "press", "furrow", "wrinkle", "fold"):
        out[key] = np.clip(out[key], 0.0, None)
    out["lip_side"] = rng.choice([-1.0, 1.0], n)
    return out


def _draw_identity(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-person geometry and shades, independent of the expression."""
    u = rng.uniform
    nose_y = u(0.16, 0.28, n)
    return {
        "face_w": u(0.72, 0.9, n),
        "eye_dx": u(0.27, 0.37, n),
        "eye_y": u(-0.25, -0.13, n),
        "eye_w": u(0.11, 0.15, n),
        "brow_gap": u(0.14, 0.2, n),
        "brow_th": u(0.03, 0.055, n),
        "brow_tone": u(0.05, 0.55, n),
        "nose_y": nose_y,
        "mouth_y": nose_y + u(0.2, 0.3, n),
        "lip_th": u(0.015, 0.04, n),
        "lip_tone": u(0.6, 0.9, n),
        "iris": u(0.045, 0.07, n),
        "gaze": rng.normal(0.0, 0.02, n),
        "skin": u(0.35, 0.85, n),
        "hair": u(0.03, 0.8, n),
        "hairline": u(-0.85, -0.5, n),
        "bg": u(0.0, 1.0, n),
        "bg_gx": rng.normal(0.0, 0.3, n),
        "bg_gy": rng.normal(0.0, 0.3, n),
        "glasses": rng.choice([0.0, 1.0, 2.0], n, p=[0.9, 0.07, 0.03]),
    }


def _draw_nuisance(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Pose, lighting and camera parameters."""
    half = (IMAGE_SIZE - 1) / 2
    return {
        "cx": half + np.clip(rng.normal(0.0, 2.2, n), -5.0, 5.0),
        "cy": half + 1.0 + np.clip(rng.normal(0.0, 2.2, n), -5.0, 5.0),
        "scale": IMAGE_SIZE * 0.47 * rng.uniform(0.88, 1.12, n),
        "rot": np.deg2rad(np.clip(rng.normal(0.0, 10.0, n), -25.0, 25.0)),
        "yaw": rng.normal(0.0, 0.05, n),
        "light_x": rng.normal(0.0, 0.25, n),
        "light_y": rng.normal(0.0, 0.15, n),
        "contrast": rng.uniform(0.7, 1.25, n),
        "bright": rng.normal(0.0, 0.08, n),
        "noise": rng.uniform(0.003, 0.025, n),
        "blur": rng.integers(0, len(BLUR_SIGMAS), n).astype(float),
    }


def _draw_faces(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    n = len(labels)
    return {**_draw_expression(rng, labels), **_draw_identity(rng, n), **_draw_nuisance(rng, n)}
