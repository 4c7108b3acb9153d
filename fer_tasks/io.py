"""Small I/O helpers shared by the stages: atomic writes and split arrays."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_tasks import IMAGE_SIZE, NUM_CLASSES


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only on success.

    Works for files and directories. A crash or exception leaves `final`
    untouched and removes the temporary path, so no half-written output exists.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def save_model(model, path: str | Path) -> None:
    """`model.save(path)` with no volatile metadata: the same model gives the same bytes.

    Keras writes the save time into the archive's metadata.json and a timestamp on
    every zip entry, so an unchanged model got a new hash on every save and made DVC
    rerun everything downstream. Both are fixed here; the rest of the archive
    (config and HDF5 weights) is already a function of the model alone.
    """
    path = Path(path)
    raw = path.with_name(f".raw.{path.name}")
    model.save(raw)
    try:
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
                dst.writestr(fixed, data)
    finally:
        raw.unlink(missing_ok=True)


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def save_split(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split as an .npz with uint8 `images` (N, 48, 48) and int64 `labels` (N,)."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{path}: images must be uint8 (N, H, W), got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images, labels=labels.astype(np.int64))


def load_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a split: uint8 images (N, 48, 48) and int64 labels in 0..6.

    Raises FileNotFoundError for a missing file and ValueError naming the file
    for anything else that is not such a split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a split .npz with images and labels ({err})") from None
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{path}: images must be uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise ValueError(
            f"{path}: {int(bad.sum())} labels outside 0..{NUM_CLASSES - 1} "
            f"(first: {int(labels[bad][0])} at index {int(np.flatnonzero(bad)[0])})"
        )
    return images, labels.astype(np.int64)
