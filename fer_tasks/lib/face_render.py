"""Rendering of the synthetic faces (stages/synthesize.py draws their parameters).

`render(faces, rng)` turns per-face parameters (expression cues, identity,
nuisance) into 48x48 uint8 images: signed-distance shapes with anti-aliased
coverage for head, eyes, brows, nose, mouth and glasses, then the camera
(lighting, blur from `BLUR_SIGMAS`, noise). Vectorised over a chunk of faces.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fer_tasks import IMAGE_SIZE

BLUR_SIGMAS = (0.0, 0.0, 0.4, 0.7)  # a face's blur level indexes this

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


def render(faces: dict[str, Array], rng: np.random.Generator) -> np.ndarray:
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
    for k, sigma in enumerate(BLUR_SIGMAS):
        if sigma > 0 and (pick := np.flatnonzero(level == k)).size:
            img[pick] = ndimage.gaussian_filter(img[pick], sigma=(0, sigma, sigma))
    img += q["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
