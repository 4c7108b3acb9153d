"""The write-up's model: `build_model` (frozen backbone + head) and `unfreeze_model`;
its logits and a temperature-scaled version of it (`logit_model`, `temperature_model`)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from fer_tasks import IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.params import BaseModelParams

log = logging.getLogger(__name__)

HEAD_NAME = "main_output"


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    label_smoothing: float = 0.0,
    use_ema: bool = False,
    ema_momentum: float = 0.99,
) -> None:
    """Adam + categorical cross-entropy + accuracy, as in the write-up.

    `label_smoothing` > 0 trains towards (1 - s) on the true class and s / 7 spread
    over all classes (Keras' CategoricalCrossentropy); 0 is the write-up's plain loss.
    `use_ema` keeps an exponential moving average of the trainable weights in the
    optimizer (saved with it); `fit` ends by copying it into the model.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=learning_rate, use_ema=use_ema, ema_momentum=ema_momentum
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def build_model(backbone: keras.Model, params: BaseModelParams) -> keras.Model:
    """Backbone (every layer frozen) -> Dropout -> softmax Dense `main_output` with L2."""
    for layer in backbone.layers:
        layer.trainable = False
    x = keras.layers.Dropout(params.dropout, name="head_dropout", seed=params.seed)(backbone.output)
    out = keras.layers.Dense(
        NUM_CLASSES,
        activation="softmax",
        kernel_regularizer=keras.regularizers.L2(params.l2_coef),
        name=HEAD_NAME,
        dtype="float32",  # softmax and loss in float32 under a mixed-precision backbone
    )(x)
    # Built on the backbone's own tensors, so its layers sit flat in this model
    # and `model.layers[-n:]` counts the way the write-up's counts do.
    model = keras.Model(backbone.input, out, name=f"{backbone.name}_fer")
    compile_model(model, params.learning_rate)
    return model


def _first_index(model: keras.Model, unfreeze: int | str) -> int:
    """Index of the first layer to unfreeze: a count from the end or a block name."""
    layers = model.layers
    if isinstance(unfreeze, int):
        if unfreeze > len(layers):
            raise InputError(f"unfreeze={unfreeze} but the model has only {len(layers)} layers")
        return len(layers) - unfreeze
    name = unfreeze.lower()
    if name == "all":
        return 0
    prefix = "top_" if name == "top" else name
    for i, layer in enumerate(layers):
        # "block7" must match block7a_… but never block70…; "top" matches top_conv.
        if layer.name.startswith(prefix) and (
            prefix.endswith("_") or layer.name[len(prefix)].isalpha()
        ):
            return i
    blocks = sorted(
        {layer.name.split("_")[0][:6] for layer in layers if layer.name.startswith("block")}
    )
    raise InputError(
        f"unfreeze={unfreeze!r} matches no layer of {model.name}; "
        f"use a layer count, 'all', 'top' or one of {blocks}"
    )


def unfreeze_model(model: keras.Model, unfreeze: int | str, unfreeze_bn: bool = False) -> int:
    """Make the last layers trainable (BatchNorm stays frozen unless asked).

    Returns how many layers were made trainable. The caller must recompile.
    """
    start = _first_index(model, unfreeze)
    opened = 0
    for layer in model.layers[start:]:
        if isinstance(layer, keras.layers.BatchNormalization) and not unfreeze_bn:
            continue
        if not layer.trainable:
            opened += 1
        layer.trainable = True
    log.info(
        "unfreeze=%r: layers %d..%d (%s..%s), %d newly trainable, %d trainable weights",
        unfreeze,
        start,
        len(model.layers) - 1,
        model.layers[start].name,
        model.layers[-1].name,
        opened,
        len(model.trainable_weights),
    )
    return opened


def _float32_config(cfg):
    """A copy of a model config with every mixed dtype policy replaced by float32."""
    if isinstance(cfg, dict):
        if cfg.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(
            cfg.get("config"), dict
        ):
            return {**cfg, "config": {**cfg["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_float32_config(v) for v in cfg]
    if isinstance(cfg, str) and cfg.startswith("mixed_"):
        return "float32"
    return cfg


def as_float32(model: keras.Model) -> keras.Model:
    """`model` itself when it computes in float32, else a float32 copy with the same weights.

    A model trained under `model.precision: mixed_*` computes in float16/bfloat16;
    the TFLite converter and CPUs want float32 (the variables already are).
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model
    clone = model.__class__.from_config(_float32_config(model.get_config()))
    clone.set_weights(model.get_weights())
    log.info("converted %s from mixed precision to float32", model.name)
    return clone


def load_fer_model(path: Path) -> keras.Model:
    """A `.keras` FER classifier (safe mode, not compiled): (48, 48, 1) -> 7, or InputError."""
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    if tuple(model.input_shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1) or (
        model.output_shape[-1] != NUM_CLASSES
    ):
        raise InputError(
            f"{path}: expected input (None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) and "
            f"{NUM_CLASSES} outputs, got {model.input_shape} -> {model.output_shape}"
        )
    return model


def logit_model(model: keras.Model) -> keras.Model:
    """The model up to its head's logits (before the softmax), sharing its layers.

    The head `main_output` is a softmax Dense; its kernel and bias are copied into
    a linear Dense named `logits` on the same input, so the logits are exact
    (not recovered from probabilities that may have underflowed).
    """
    try:
        head = model.get_layer(HEAD_NAME)
    except ValueError:
        raise InputError(f"{model.name}: no {HEAD_NAME!r} layer to take logits from") from None
    if not isinstance(head, keras.layers.Dense) or head.activation.__name__ != "softmax":
        raise InputError(f"{model.name}: {HEAD_NAME!r} is not a softmax Dense layer")
    logits = keras.layers.Dense(NUM_CLASSES, name="logits", dtype="float32")
    out = keras.Model(model.input, logits(head.input), name=f"{model.name}_logits")
    logits.set_weights(head.get_weights())
    return out


def temperature_model(model: keras.Model, temperature: float) -> keras.Model:
    """`model` with softmax(logits / temperature) as its output (named `main_output`)."""
    if temperature == 1.0:
        return model
    lg = logit_model(model)
    x = keras.layers.Rescaling(1.0 / temperature, name="temperature", dtype="float32")(lg.output)
    out = keras.layers.Softmax(name=HEAD_NAME, dtype="float32")(x)
    return keras.Model(lg.input, out, name=f"{model.name}_calibrated")


def predict_logits(
    model: keras.Model, images: np.ndarray, batch_size: int, tta_flip: bool
) -> np.ndarray:
    """Logits (passes, N, 7) in float64: the faces, then (with `tta_flip`) their mirror images."""
    from fer_tasks.lib.data import eval_dataset

    lg = logit_model(model)
    views = [images, images[:, :, ::-1]] if tta_flip else [images]
    out = np.stack(
        [
            lg.predict(eval_dataset(np.ascontiguousarray(v), None, batch_size), verbose=0)
            for v in views
        ]
    ).astype(np.float64)
    if not np.isfinite(out).all():
        raise InputError(f"{model.name}: the model gives non-finite logits")
    return out
