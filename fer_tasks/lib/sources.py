"""Readers of FER2013 sources: the ICML CSV (streamed) and image-folder trees.

Used by the `prepare` stage (stages/prepare.py, which documents the formats).
The CSV is read in blocks of ``chunk_rows`` records; each block's pixel
strings are parsed in one vectorised numpy pass and appended to growing uint8
arrays, so peak memory is the uint8 output plus one block. Every error names
the file and the line (or the path) at fault.
"""

from __future__ import annotations

import csv
import gzip
import logging
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from fer_tasks import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.params import USAGES

logger = logging.getLogger("fer_tasks.stages.prepare")  # its messages are the stage's

SPLITS = ("train", "val", "test")
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_USAGE_SPLIT = {u.lower(): s for u, s in zip(USAGES, SPLITS, strict=True)}
_GZIP_MAGIC = b"\x1f\x8b"
# decompression-bomb guard for folder images (width * height, checked before decoding)
_MAX_IMAGE_PIXELS = 40_000_000
# rows parsed per vectorised pass (bounds the temporary index arrays to ~100 MB)
_PARSE_BLOCK = 1024
_SKIPS_LISTED = 10
_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


class PrepareError(InputError):
    """Unusable input; the message names the file and the line (or the path) at fault."""


class _BadRow(Exception):
    """One bad CSV row or image file: fatal, or skipped with ``on_bad_row: skip``."""


@dataclass
class Skips:
    """Applies ``on_bad_row``: raise on the first bad row, or count and list a few."""

    mode: str
    count: int = 0
    first: list[dict] = field(default_factory=list)

    def bad(self, where: str, key: dict, reason: str) -> None:
        if self.mode == "error":
            raise PrepareError(f"{where}: {reason}")
        self.count += 1
        if len(self.first) < _SKIPS_LISTED:
            self.first.append({**key, "reason": reason})
            logger.warning("skipping %s: %s", where, reason)


class _Growing:
    """Append-only uint8 (N, 48, 48) images and int64 labels with doubling capacity."""

    def __init__(self, capacity: int = 1024) -> None:
        self.images = np.empty((capacity, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        self.labels = np.empty(capacity, np.int64)
        self.n = 0

    def extend(self, images: np.ndarray, labels: np.ndarray) -> None:
        end = self.n + len(labels)
        if end > len(self.labels):
            cap = max(end, 2 * len(self.labels))
            grown = np.empty((cap, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            grown[: self.n] = self.images[: self.n]
            self.images = grown
            self.labels = np.concatenate([self.labels[: self.n], np.empty(cap - self.n, np.int64)])
        self.images[self.n : end] = images
        self.labels[self.n : end] = labels
        self.n = end

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images[: self.n], self.labels[: self.n]


# --------------------------------------------------------------------------- CSV


def _open_text(path: Path) -> IO[str]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC or path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based first line, fields) per non-blank record; read errors -> PrepareError."""
    line = 0
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            for rec in reader:
                start, line = line + 1, reader.line_num
                if rec:
                    yield start, rec
    except csv.Error as err:
        raise PrepareError(f"{path}: line {line + 1}: malformed CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: line {line + 1}: not UTF-8 text ({err.reason})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise PrepareError(f"{path}: line {line + 1}: corrupt gzip data ({err})") from None
    except OSError as err:
        raise PrepareError(f"{path}: cannot read: {err}") from None


@dataclass(frozen=True)
class _Columns:
    emotion: int
    pixels: int
    usage: int | None
    n_fields: int


def _columns(path: Path, line: int, header: list[str]) -> _Columns:
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("emotion", "pixels") if c not in names]
    if missing:
        shown = ",".join(header)[:120]
        raise PrepareError(
            f"{path}: line {line}: missing required column(s) {', '.join(missing)} "
            f"(header is {shown!r}; expected emotion,pixels[,Usage])"
        )
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise PrepareError(f"{path}: line {line}: duplicate column(s) {', '.join(dupes)}")
    usage = names.index("usage") if "usage" in names else None
    return _Columns(names.index("emotion"), names.index("pixels"), usage, len(names))


def _parse_label(text: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.lstrip("+-").isdigit()):
        raise _BadRow(f"emotion {text[:20]!r} is not an integer class 0-{NUM_CLASSES - 1}")
    value = int(t)
    if not 0 <= value < NUM_CLASSES:
        raise _BadRow(f"emotion {value} is outside 0-{NUM_CLASSES - 1}")
    return value


def _parse_fields(rec: list[str], cols: _Columns) -> tuple[int, int, str]:
    """(label, split index, pixel string) of one record, or _BadRow."""
    if len(rec) != cols.n_fields:
        raise _BadRow(f"expected {cols.n_fields} fields, got {len(rec)}")
    label = _parse_label(rec[cols.emotion])
    split = "train"
    if cols.usage is not None:
        usage = rec[cols.usage].strip()
        if usage.lower() not in _USAGE_SPLIT:
            raise _BadRow(f"unknown Usage {usage[:30]!r} (expected {', '.join(USAGES)})")
        split = _USAGE_SPLIT[usage.lower()]
    return label, SPLITS.index(split), rec[cols.pixels]


def _parse_pixel_row(text: str) -> np.ndarray:
    """Slow, authoritative parse of one pixel string; names the first problem."""
    tokens = text.split()
    if len(tokens) != N_PIXELS:
        raise _BadRow(f"wrong pixel count: expected {N_PIXELS} values, got {len(tokens)}")
    values = np.empty(N_PIXELS, np.uint8)
    for i, tok in enumerate(tokens):
        if not (tok.isascii() and tok.lstrip("+-").isdigit()):
            raise _BadRow(f"pixel {i + 1} is {tok[:20]!r}, not an integer")
        value = int(tok)
        if not 0 <= value <= 255:
            raise _BadRow(f"pixel {i + 1} = {value} is outside 0-255")
        values[i] = value
    return values.reshape(IMAGE_SIZE, IMAGE_SIZE)


def _parse_pixel_block(texts: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """Parse pixel strings into uint8 (n, 48, 48); errors[i] is set for a bad row i.

    One vectorised pass over the joined ASCII bytes: runs of digits are tokens,
    their values are built from up to three digits, tokens are assigned to rows by
    offset. Rows it flags (other characters, wrong count, > 3 digits, > 255) go to
    `_parse_pixel_row`, which either accepts them (tabs, leading zeros) or says why not.
    """
    n = len(texts)
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    errors: list[str | None] = [None] * n
    if n == 0:
        return out, errors
    buf = np.frombuffer(" ".join(texts).encode("ascii", "replace"), np.uint8)
    row_start = np.zeros(n, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, n)[:-1] + 1, out=row_start[1:])

    digit = buf - np.uint8(48)  # wraps around for non-digits
    is_digit = digit < 10
    flagged = np.zeros(n, bool)
    odd = np.flatnonzero(~is_digit & (buf != 32))
    flagged[np.searchsorted(row_start, odd, "right") - 1] = True

    pad = np.zeros(1, np.int8)
    edges = np.diff(np.concatenate([pad, is_digit.view(np.int8), pad]))
    starts = np.flatnonzero(edges == 1)
    n_digits = np.flatnonzero(edges == -1) - starts
    del edges
    values = digit[starts].astype(np.int16)
    for k in (1, 2):
        more = n_digits > k
        values[more] = values[more] * 10 + digit[starts[more] + k]
    tok_row = np.searchsorted(row_start, starts, "right") - 1
    flagged |= np.bincount(tok_row, minlength=n) != N_PIXELS
    flagged[tok_row[(n_digits > 3) | (values > 255)]] = True

    good = ~flagged
    if good.all():
        out[:] = values.reshape(n, IMAGE_SIZE, IMAGE_SIZE)
        return out, errors
    out[good] = values[good[tok_row]].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    for i in np.flatnonzero(flagged):
        try:
            out[i] = _parse_pixel_row(texts[i])
        except _BadRow as err:
            errors[i] = str(err)
    return out, errors


@dataclass
class _Chunk:
    lines: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)
    pixels: list[str] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


def _flush(path: Path, chunk: _Chunk, out: dict[str, _Growing], skips: Skips) -> None:
    """Parse a chunk's pixels, report its bad rows in line order, append the good ones."""
    images = np.empty((len(chunk.lines), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    errors: list[str | None] = []
    for lo in range(0, len(chunk.lines), _PARSE_BLOCK):
        block, block_errors = _parse_pixel_block(chunk.pixels[lo : lo + _PARSE_BLOCK])
        images[lo : lo + len(block)] = block
        errors.extend(block_errors)
    bad = chunk.errors + [(chunk.lines[i], e) for i, e in enumerate(errors) if e is not None]
    for line, reason in sorted(bad):
        skips.bad(f"{path}: line {line}", {"line": line}, reason)
    ok = np.array([e is None for e in errors], bool)
    labels = np.asarray(chunk.labels, np.int64)
    splits = np.asarray(chunk.splits, np.int64)
    for s, name in enumerate(SPLITS):
        keep = ok & (splits == s)
        if keep.any():
            out[name].extend(images[keep], labels[keep])


def read_csv(path: Path, chunk_rows: int, skips: Skips) -> dict[str, tuple]:
    if path.stat().st_size == 0:
        raise PrepareError(f"{path}: empty file (0 bytes)")
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise PrepareError(f"{path}: empty file (no header, no rows)")
    cols = _columns(path, *first)
    out = {s: _Growing() for s in SPLITS}
    chunk, n_rows = _Chunk(), 0
    for line, rec in records:
        n_rows += 1
        try:
            label, split, pixels = _parse_fields(rec, cols)
        except _BadRow as err:
            chunk.errors.append((line, str(err)))
        else:
            chunk.lines.append(line)
            chunk.labels.append(label)
            chunk.splits.append(split)
            chunk.pixels.append(pixels)
        if n_rows % chunk_rows == 0:
            _flush(path, chunk, out, skips)
            chunk = _Chunk()
    _flush(path, chunk, out, skips)
    if n_rows == 0:
        raise PrepareError(f"{path}: empty file (header only, no data rows)")
    logger.info("%s: %d rows read, %d skipped", path, n_rows, skips.count)
    return {s: g.arrays() for s, g in out.items()}


# ------------------------------------------------------------------------ folder


def _load_image(path: Path) -> np.ndarray:
    """Any image file -> uint8 (48, 48) grayscale, or _BadRow naming the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > _MAX_IMAGE_PIXELS:
                    raise _BadRow(
                        f"image is {width}x{height} pixels, over the {_MAX_IMAGE_PIXELS} "
                        "pixel limit (decompression bomb guard)"
                    )
                im.draft("L", (IMAGE_SIZE, IMAGE_SIZE))  # JPEG: decode gray, downscaled
                gray = ImageOps.exif_transpose(im).convert("L")
        if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
            gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(gray, np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _BadRow(f"decompression bomb guard: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _BadRow(f"not a readable image: {err}") from None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _subdirs(root):
        key = d.name.lower()
        if key in ("train", "val", "test"):
            if key in found:
                raise PrepareError(f"{d}: ambiguous split folder (also {found[key]})")
            found[key] = d
    if "train" not in found:
        raise PrepareError(
            f"{root}: no train/ folder (expected train/<class>/ and test/<class>/ image folders)"
        )
    return found


def _class_files(split_dir: Path) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for d in _subdirs(split_dir):
        label = _CLASS_INDEX.get(d.name.lower())
        if label is None:
            raise PrepareError(
                f"{d}: unknown class folder {d.name!r} (expected one of {', '.join(CLASS_NAMES)})"
            )
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                logger.warning("%s: ignoring nested folder", p)
                continue
            files.append((p, label))
    return files


def _read_image_dir(root: Path, split_dir: Path, skips: Skips) -> tuple[np.ndarray, np.ndarray]:
    files = _class_files(split_dir)
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    labels = np.empty(len(files), np.int64)
    n = 0
    for path, label in files:
        try:
            images[n] = _load_image(path)
        except _BadRow as err:
            skips.bad(str(path), {"path": str(path.relative_to(root))}, str(err))
            continue
        labels[n] = label
        n += 1
    return images[:n], labels[:n]


def read_folder(root: Path, skips: Skips) -> tuple[dict[str, tuple], dict[str, str]]:
    dirs = _split_dirs(root)
    targets = {"train": "train", "val": "val", "test": "test"}
    if "val" not in dirs:
        targets["test"] = "val"  # the common release's test/ holds PublicTest
    empty = (np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(0, np.int64))
    splits: dict[str, tuple] = dict.fromkeys(SPLITS, empty)
    origins: dict[str, str] = {}
    for key, d in dirs.items():
        splits[targets[key]] = _read_image_dir(root, d, skips)
        origins[targets[key]] = f"{d.name}/"
    logger.info(
        "%s: %d images, %d skipped", root, sum(len(v[1]) for v in splits.values()), skips.count
    )
    return splits, origins


# ----------------------------------------------------------------------- splits
