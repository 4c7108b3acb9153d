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
from scipy import ndimage

from fer_tasks import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import atomic_path
from fer_tasks.lib.params import USAGES, SynthesizeParams

log = logging.getLogger(__name__)

CLASS_SHARES = np.array([0.139, 0.015, 0.143, 0.251, 0.168, 0.110, 0.173])
MIN_PER_SPLIT = 2
CHUNK = 512
_NEUTRAL = CLASS_NAMES.index("neutral")
_LUT = tuple(str(i) for i in range(256))
_BLUR_SIGMAS = (0.0, 0.0, 0.4, 0.7)

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
            pixels = _render(chunk, rng).reshape(hi - lo, -1)
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
        "blur": rng.integers(0, len(_BLUR_SIGMAS), n).astype(float),
    }


def _draw_faces(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    n = len(labels)
    return {**_draw_expression(rng, labels), **_draw_identity(rng, n), **_draw_nuisance(rng, n)}


# ---------------------------------------------------------------- rendering

_YS, _XS = (a.astype(np.float32)[None] for a in np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE])
Array = np.ndarray


def _cover(sd: Array, px: Array, soft: float = 1.0) -> Array:
    """Anti-aliased coverage of a signed distance (negative inside), `soft` pixels wide."""
    return np.clip(0.5 - sd / (px * soft), 0.0, 1.0)


def _paint(img: Array, cover: Array, tone: Array | float) -> None:
    img += cover * (tone - img)


def _ellipse(
    u: Array, v: Array, cu: Array | float, cv: Array | float, a: Array | float, b: Array | float
) -> Array:
    """Approximate signed distance to an axis-aligned ellipse."""
    r = np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)
    return (r - 1.0) * np.minimum(a, b)


def _segment(u: Array, v: Array, p0: tuple[Array, Array], p1: tuple[Array, Array]) -> Array:
    """Distance to the segment p0-p1."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
    return np.hypot(u - p0[0] - t * du, v - p0[1] - t * dv)


def _render(faces: dict[str, Array], rng: np.random.Generator) -> np.ndarray:
    """Render a chunk of faces to uint8 (B, 48, 48)."""
    q = {k: np.asarray(v, dtype=np.float32)[:, None, None] for k, v in faces.items()}
    dx, dy = _XS - q["cx"], _YS - q["cy"]
    cos, sin = np.cos(q["rot"]), np.sin(q["rot"])
    u = (dx * cos + dy * sin) / q["scale"]
    v = (-dx * sin + dy * cos) / q["scale"]
    px = 1.0 / q["scale"]
    img = q["bg"] + (q["bg_gx"] * _XS + q["bg_gy"] * _YS) / IMAGE_SIZE
    img = img - (q["bg_gx"] + q["bg_gy"]) / 2
    skin = _draw_head(img, u, v, px, q)
    uf = u - q["yaw"]  # features follow the yaw, the outline does not
    _draw_eyes(img, uf, v, px, q, skin)
    _draw_nose(img, uf, v, px, q, skin)
    _draw_mouth(img, uf, v, px, q, skin)
    _draw_glasses(img, uf, v, px, q)
    return _camera(img, u, v, q, rng)


def _draw_head(img: Array, u: Array, v: Array, px: Array, q: dict[str, Array]) -> Array:
    """Hair silhouette, neck, shaded face ellipse and fringe; returns the skin tone."""
    fw, skin = q["face_w"], q["skin"]
    _paint(img, _cover(_ellipse(u, v, 0.0, -0.12, fw + 0.1, 1.1), px), q["hair"])
    neck = np.maximum(np.abs(u) - 0.45 * fw, 0.5 - v)
    _paint(img, _cover(neck, px), skin * 0.7)
    jaw = fw * (1.0 - 0.2 * np.clip(v, 0.0, 1.0))
    radius = np.sqrt((u / jaw) ** 2 + v**2)
    shade = skin * (1.0 - 0.35 * np.clip(radius, 0.0, 1.0) ** 4)
    _paint(img, _cover((radius - 1.0) * jaw, px), shade)
    fringe = np.maximum(
        v - q["hairline"] - 0.4 * (u / fw) ** 2, _ellipse(u, v, 0.0, -0.12, fw + 0.1, 1.1)
    )
    _paint(img, _cover(fringe, px), q["hair"])
    return skin


def _draw_eyes(
    img: Array, uf: Array, v: Array, px: Array, q: dict[str, Array], skin: Array
) -> None:
    """Eye sockets, eyes, brows and brow furrows (symmetric through |u|)."""
    ua, ex, ey, ew, eh = np.abs(uf), q["eye_dx"], q["eye_y"], q["eye_w"], q["eye_open"]
    img *= 1.0 - 0.15 * _cover(_ellipse(ua, v, ex, ey - 0.03, ew * 1.5, 0.12), px, 4.0)
    eye = _ellipse(ua, v, ex, ey, ew, eh)
    _paint(img, _cover(eye, px), np.minimum(skin + 0.25, 0.95))
    iris = np.maximum(_ellipse(ua, v, ex + q["gaze"] * np.sign(uf), ey, q["iris"], q["iris"]), eye)
    _paint(img, _cover(iris, px), 0.1)
    lid = np.maximum(np.abs(eye) - 0.012, v - ey - 0.3 * eh)
    _paint(img, _cover(lid, px), 0.12)
    # brows: inner - mid - outer capsules
    by = ey - q["brow_gap"] + q["brow_lift"]
    inner = (ex - 0.2, by + q["brow_in"])
    mid = (ex, by - q["arch"] + 0.5 * (q["brow_in"] + q["brow_out"]) * 0.3)
    outer = (ex + 0.2, by + q["brow_out"] + 0.03)
    brow = np.minimum(_segment(ua, v, inner, mid), _segment(ua, v, mid, outer)) - q["brow_th"]
    _paint(img, _cover(brow, px), q["brow_tone"] * skin)
    furrow = _segment(ua, v, (0.05, by + q["brow_in"] - 0.04), (0.06, by + q["brow_in"] + 0.07))
    img *= 1.0 - np.clip(0.4 * q["furrow"], 0, 0.6) * _cover(furrow - 0.012, px)


def _draw_nose(
    img: Array, uf: Array, v: Array, px: Array, q: dict[str, Array], skin: Array
) -> None:
    """Nostrils, under-nose shadow, disgust wrinkles and nasolabial folds."""
    ua, ny, wr = np.abs(uf), q["nose_y"], q["wrinkle"]
    img *= 1.0 - 0.12 * _cover(_ellipse(uf, v, 0.0, ny + 0.03, 0.13, 0.05), px, 3.0)
    img *= 1.0 - 0.1 * _cover(_segment(ua, v, (0.07, q["eye_y"] + 0.05), (0.1, ny - 0.04)), px, 3.0)
    nostril = _ellipse(ua, v, 0.075 * (1 + 0.3 * wr), ny - 0.03 * wr, 0.045, 0.025)
    _paint(img, _cover(nostril, px), skin * 0.35)
    for k in range(3):
        vk = q["eye_y"] + 0.04 + 0.06 * k
        line = np.maximum(np.abs(v - vk - 0.8 * uf**2), ua - 0.1) - 0.011
        img *= 1.0 - np.clip(0.5 * wr, 0, 0.6) * _cover(line, px)
    corner = (q["mouth_w"] + 0.06, q["mouth_y"] + q["mouth_dy"] - q["curve"] + 0.03)
    fold = _segment(ua, v, (0.13, ny - 0.02), corner) - 0.014
    img *= 1.0 - np.clip(0.4 * q["fold"], 0, 0.5) * _cover(fold, px)


def _draw_mouth(
    img: Array, uf: Array, v: Array, px: Array, q: dict[str, Array], skin: Array
) -> None:
    """Lips, opening (line, cavity) and upper teeth as one parametric shape."""
    mw, curve, my = q["mouth_w"], q["curve"], q["mouth_y"] + q["mouth_dy"]
    t = np.clip(uf / mw, -1.0, 1.0)
    centre = my - curve * t**2
    prof = np.clip(1.0 - t**2, 0.0, 1.0)
    opening = prof ** q["shape"]
    raise_ = q["lip_raise"] * np.clip(q["lip_side"] * t + 0.3, 0.0, 1.0) * np.sqrt(prof)
    top = centre - q["open_top"] * opening - raise_
    bot = centre + q["open_bot"] * opening
    norm = np.sqrt(1.0 + (2.0 * curve * t / mw) ** 2)
    side = np.abs(uf) - mw
    lip_th = q["lip_th"] * (1.0 - 0.6 * np.clip(q["press"], 0, 1))
    lips = np.maximum(
        np.maximum((top - lip_th - v) / norm, (v - bot - 1.6 * lip_th) / norm), side - 0.02
    )
    _paint(img, _cover(lips, px), skin * q["lip_tone"])
    hole = np.maximum(np.maximum((top - v) / norm, (v - bot) / norm), side)
    line_th = 0.012 + 0.012 * q["press"]
    _paint(img, _cover(hole - line_th, px), 0.06 + 0.12 * skin)
    teeth = np.maximum(hole + 0.01, v - top - q["teeth_frac"] * (bot - top))
    _paint(img, _cover(teeth, px), 0.06 + 0.12 * skin + np.clip(q["teeth"], 0, 1) * 0.7)


def _draw_glasses(img: Array, uf: Array, v: Array, px: Array, q: dict[str, Array]) -> None:
    """Frames (glasses == 1) or dark lenses (glasses == 2) over the eyes."""
    ua, ex, ey = np.abs(uf), q["eye_dx"], q["eye_y"]
    lens = _ellipse(ua, v, ex, ey, 0.2, 0.14)
    img *= 1.0 - 0.75 * (q["glasses"] == 2) * _cover(lens, px)
    frame = np.minimum(
        np.abs(lens) - 0.018, _segment(ua, v, (0.0, ey - 0.05), (ex - 0.2, ey - 0.05))
    )
    _paint(img, (q["glasses"] > 0) * _cover(frame - 0.012, px), 0.08)


def _camera(
    img: Array, u: Array, v: Array, q: dict[str, Array], rng: np.random.Generator
) -> np.ndarray:
    """Directional light, contrast/brightness, blur and sensor noise; quantise to uint8."""
    img *= 1.0 + q["light_x"] * np.clip(u, -1.5, 1.5) + q["light_y"] * np.clip(v, -1.5, 1.5)
    mean = img.mean(axis=(1, 2), keepdims=True)
    img = (img - mean) * q["contrast"] + mean + q["bright"]
    level = q["blur"][:, 0, 0].astype(int)
    for k, sigma in enumerate(_BLUR_SIGMAS):
        if sigma > 0 and (pick := np.flatnonzero(level == k)).size:
            img[pick] = ndimage.gaussian_filter(img[pick], sigma=(0, sigma, sigma))
    img += q["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
