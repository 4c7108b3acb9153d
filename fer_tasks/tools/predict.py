"""`fer predict`: expression probabilities for faces in ordinary image files.

`predict(paths, model_path)` takes image files and folders (searched
recursively for common image suffixes) and a `.keras` or `.tflite` model, and
prints one JSON line per face::

    {"file": "photo.jpg", "box": [x, y, w, h], "probabilities": {"angry": 0.01, ...}}

or, with ``top=k``, one short human-readable line per face
(``photo.jpg [177,56,114,114]: happy 81.2%, neutral 9.3%``).

Faces
    With ``detect=True`` (the default) faces are found with OpenCV's bundled
    Haar cascade (``haarcascade_frontalface_default.xml``; OpenCV 4.x, since
    OpenCV 5 no longer ships the cascade classifier). Each detected box is
    padded by `PAD` of its size on every side (FER2013 crops include some
    forehead and chin), clipped to the image, and that region -- the one the
    model sees and the ``box`` printed -- is converted to grayscale and resized
    to 48x48. With ``detect=False`` the whole image is taken as one pre-cropped
    face (``box`` = the whole image).

Calibration
    The probabilities are those of the pipeline's recipe (`lib.calibration`):
    read from ``calibration`` (``--calibration FILE``, e.g. the calibrate
    stage's models/calibration.json), else from ``inference.json`` beside the
    model (what `export` writes next to its TFLite files, whose temperature is
    built in). It gives the temperature and whether to use flip test-time
    augmentation (TTA): the mean of the calibrated softmax of each face and of
    its mirror image (``tta=True/False``, ``--tta/--no-tta``, overrides it).
    Without a recipe the model's own softmax is printed, with a note on
    stderr. Giving a calibration file for a model that already holds its
    temperature (an export) is refused: T would be applied twice.

Models
    ``.tflite`` files run on LiteRT (`ai_edge_litert`) and never import
    TensorFlow, so a light install (numpy, Pillow, LiteRT, OpenCV) can predict.
    An input of type uint8/int8 is fed quantized pixels (for the int8 export
    that is the raw 0-255 pixels: scale 1, zero point 0), a float input the
    pixels as float 0-255; a quantized output is dequantized, and the printed
    probabilities are renormalised to sum to 1 (an int8 softmax is quantized in
    steps of 1/256, so its raw values may sum to 1 +- 0.01). ``.keras`` files
    load with ``safe_mode=True`` (this needs TensorFlow).

Bad input
    Every file is handled on its own: a path that does not exist, a file that
    is not an image, a truncated image, an image over `MAX_PIXELS` (checked on
    the header, before anything is decoded: decompression bombs) and an image
    with no face each print ``fer predict: <file>: <reason>`` on stderr; the
    other files are still processed; so do an image under `MIN_FACE` px on
    its short side and a float image with NaN/inf pixels (`read_image` says how
    16-bit, 32-bit and float images are scaled). A multi-frame file (animated
    GIF, multi-page TIFF) is predicted from frame 1, with ``fer predict:
    <file>: note: frame 1 of N used`` on stderr (stdout keeps its format).
    `predict` returns 0 when every file gave at least one face, 1 when any
    failed, 2 when the model cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from fer_tasks import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.calibration import Recipe, center_zoom, read_recipe
from fer_tasks.lib.classifiers import ModelError, load_classifier, predict_tta
from fer_tasks.lib.errors import FerError, InputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"}
)
MAX_PIXELS = 50_000_000  # refuse larger images without decoding them
# refuse smaller images: the model sees 48x48, so a face under 16 px is blown up over 3x
# from a few pixels per eye or mouth corner (detected faces are at least 24 px anyway)
MIN_FACE = 16
PAD = 0.1  # share of the detected box added on each side before cropping
DETECT_MAX_SIDE = 1024  # detection runs on a copy no larger than this (speed)
CASCADE_FILE = "haarcascade_frontalface_default.xml"
SIDECAR = "inference.json"  # the recipe `export` writes beside its TFLite files

EXIT_OK, EXIT_FILE_ERRORS, EXIT_MODEL_ERROR = 0, 1, 2


class ImageError(InputError):
    """One input file that cannot be used; the message says why (the caller adds the file)."""


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for every file to read, or (path, reason) for a path that cannot be.

    A folder yields its image files (by suffix) recursively in sorted order; a
    file named directly is always tried, whatever its suffix.
    """
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                yield p, "folder holds no image files"
            yield from ((f, None) for f in found)
        elif p.is_file():
            yield p, None
        elif p.exists():
            yield p, "not a regular file or folder"
        else:
            yield p, "no such file or folder"


def _gray8(img) -> np.ndarray:
    """uint8 grey of a loaded PIL image; high-bit-depth grey stretched min..max -> 0..255."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    a = np.asarray(img).astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError("NaN or infinite float pixels: cannot scale them to 8-bit grey")
    lo, hi = float(a.min()), float(a.max())
    if hi == lo:  # no range to scale by: mid-grey
        return np.full(a.shape, 128, np.uint8)
    return np.clip(np.round((a - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """The first frame as uint8 grayscale (H, W) and the frame count; `ImageError` if unusable.

    Checked on the header, before decoding: at most `max_pixels` pixels, at least
    `MIN_FACE` on the short side. 8-bit images (L, P, RGB, ...) convert to grey
    as they are. 16-bit ("I;16"), 32-bit integer ("I") and float ("F") grey is
    stretched from the image's own min..max to 0..255, as the file does not say
    which part of its nominal range holds data (10-bit values in a 16-bit PNG,
    floats in 0..1 or 0..255): a full-range image gives exactly its 8-bit
    version, a constant one mid-grey (128); NaN or infinite floats are refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not an image file (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large, not decoded ({err})") from None
    except OSError as err:
        raise ImageError(f"cannot open: {err}") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(
                f"image too large, not decoded: {w}x{h} = {w * h / 1e6:.1f} megapixels "
                f"(limit {max_pixels / 1e6:g})"
            )
        if min(w, h) < MIN_FACE:
            raise ImageError(f"image too small: {w}x{h} (a face needs {MIN_FACE} px or more)")
        try:
            frames = int(getattr(img, "n_frames", 1))
            img.load()
            return _gray8(ImageOps.exif_transpose(img)), frames
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
            raise ImageError(f"corrupt or truncated image ({err})") from None


def read_gray(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`read_image` without the frame count."""
    return read_image(path, max_pixels)[0]


def _resize48(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    from PIL import Image

    x, y, w, h = box
    region = Image.fromarray(gray).crop((x, y, x + w, y + h))
    return np.asarray(region.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


class FaceDetector:
    """OpenCV's Haar frontal-face cascade; boxes padded by `PAD` and clipped to the image."""

    def __init__(self) -> None:
        try:
            import cv2
        except ImportError as err:
            raise ModelError(
                f"face detection needs OpenCV (pip install 'opencv-python-headless<5'): {err}; "
                f"or pass detect=False (--no-detect) for pre-cropped faces"
            ) from None
        if not hasattr(cv2, "CascadeClassifier"):
            raise ModelError(
                f"face detection needs OpenCV 4.x (opencv-python-headless<5): OpenCV "
                f"{cv2.__version__} has no Haar cascade classifier; or pass detect=False "
                f"(--no-detect) for pre-cropped faces"
            )
        path = Path(cv2.data.haarcascades) / CASCADE_FILE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(f"cannot load OpenCV's face cascade {path}")
        self._cv2 = cv2

    def boxes(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        h, w = gray.shape
        f = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = gray
        if f < 1.0:
            small = self._cv2.resize(
                gray,
                (max(1, round(w * f)), max(1, round(h * f))),
                interpolation=self._cv2.INTER_AREA,
            )
        found = self._cascade.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)
        )
        out = []
        for bx, by, bw, bh in (np.asarray(b, dtype=np.float64) / f for b in found):
            x0, y0 = max(0, round(bx - PAD * bw)), max(0, round(by - PAD * bh))
            x1, y1 = min(w, round(bx + bw * (1 + PAD))), min(h, round(by + bh * (1 + PAD)))
            if x1 > x0 and y1 > y0:
                out.append((x0, y0, x1 - x0, y1 - y0))
        return sorted(out)


def faces(path: Path, detector: FaceDetector | None) -> tuple[np.ndarray, list[list[int]], int]:
    """48x48 uint8 face crops (K, 48, 48), their boxes and the frame count; `ImageError` if none."""
    gray, frames = read_image(path)
    h, w = gray.shape
    if detector is None:
        boxes = [(0, 0, w, h)]
    else:
        boxes = detector.boxes(gray)
        if not boxes:
            raise ImageError("no face found (pass detect=False / --no-detect for cropped faces)")
    crops = np.stack([_resize48(gray, b) for b in boxes])
    return crops, [list(map(int, b)) for b in boxes], frames


def find_recipe(model_path: Path, calibration: Path | None) -> tuple[Recipe, Path | None]:
    """The recipe to apply and the file it came from (None: the model's own softmax).

    `calibration` when given, else the `SIDECAR` beside the model. `ModelError`
    when a calibration file would apply a temperature the model already holds.
    """
    sidecar = Path(model_path).parent / SIDECAR
    try:
        if calibration is None:
            return (read_recipe(sidecar), sidecar) if sidecar.is_file() else (Recipe(), None)
        recipe = read_recipe(calibration)
        if not recipe.temperature_in_model and sidecar.is_file():
            inside = read_recipe(sidecar)
            if inside.temperature_in_model and inside.temperature != 1.0:
                raise ModelError(
                    f"{model_path} already holds temperature {inside.temperature:g} "
                    f"({sidecar}); {calibration} would apply one again: drop --calibration"
                )
    except FerError as err:
        raise ModelError(str(err)) from None
    return recipe, Path(calibration)


# --------------------------------------------------------------------------- output


def format_face(file: Path, box: list[int], probs: np.ndarray, top: int | None) -> str:
    if top is None:
        probabilities = {n: round(float(p), 6) for n, p in zip(CLASS_NAMES, probs, strict=True)}
        return json.dumps({"file": str(file), "box": box, "probabilities": probabilities})
    order = np.argsort(-probs, kind="stable")[:top]
    best = ", ".join(f"{CLASS_NAMES[i]} {100 * probs[i]:.1f}%" for i in order)
    return f"{file} [{','.join(map(str, box))}]: {best}"


def predict(
    paths: list[Path],
    model_path: Path,
    *,
    detect: bool = True,
    top: int | None = None,
    calibration: Path | None = None,
    tta: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Classify the faces in `paths`; print one line per face to `out` (default stdout).

    The probabilities follow the recipe (`find_recipe`); `tta` overrides its TTA
    setting. Per-file problems go to `err` (default stderr) as ``fer predict:
    <file>: <reason>`` and the other files are still processed. Returns 0 (all
    files gave faces), 1 (some file failed) or 2 (the model, its recipe or the
    face detector cannot be used).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if top is not None and not 1 <= top <= NUM_CLASSES:
        print(f"fer predict: error: top must be 1..{NUM_CLASSES}, got {top}", file=err)
        return EXIT_MODEL_ERROR
    try:
        recipe, source = find_recipe(model_path, calibration)
        model = load_classifier(
            model_path, temperature=1.0 if recipe.temperature_in_model else recipe.temperature
        )
        detector = FaceDetector() if detect else None
    except ModelError as e:
        print(f"fer predict: error: {e}", file=err)
        return EXIT_MODEL_ERROR
    tta = recipe.tta_flip if tta is None else tta
    if source is None:
        print(
            f"fer predict: note: no {SIDECAR} beside {model_path} and no --calibration: "
            "the model's own softmax, not calibrated",
            file=err,
        )

    failed = 0
    for path, problem in iter_inputs(paths):
        try:
            if problem is not None:
                raise ImageError(problem)
            crops, boxes, frames = faces(path, detector)
        except ImageError as e:
            print(f"fer predict: {path}: {e}", file=err)
            failed += 1
            continue
        if frames > 1:
            print(f"fer predict: {path}: note: frame 1 of {frames} used", file=err)
        probs = predict_tta(model, center_zoom(crops, recipe.center_crop), tta_flip=tta)
        # an int8 model's softmax comes in steps of 1/256: renormalise so each line sums to 1
        probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
        for box, p in zip(boxes, probs, strict=True):
            print(format_face(path, box, p, top), file=out)
        out.flush()
    return EXIT_FILE_ERRORS if failed else EXIT_OK


def add_arguments(sp) -> None:
    sp.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    sp.add_argument(
        "--model",
        default="models/export/model_int8.tflite",
        help=".keras or .tflite model (default: the pipeline's int8 export, %(default)s)",
    )
    sp.add_argument(
        "--no-detect",
        dest="detect",
        action="store_false",
        help="the images are cropped faces: skip face detection",
    )
    sp.add_argument(
        "--top", type=int, metavar="K", help="print the K likeliest classes as text, not JSON"
    )
    sp.add_argument(
        "--calibration",
        metavar="FILE",
        help=f"recipe (temperature, TTA), e.g. models/calibration.json for a phase's .keras "
        f"model (default: the {SIDECAR} beside the model, if any)",
    )
    sp.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average each face with its mirror image (default: as the recipe says)",
    )


def run(a) -> int:
    """Needs no params file; with a .tflite model it never imports TensorFlow."""
    return predict(
        [Path(x) for x in a.paths],
        Path(a.model),
        detect=a.detect,
        top=a.top,
        calibration=Path(a.calibration) if a.calibration else None,
        tta=a.tta,
    )
