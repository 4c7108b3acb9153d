"""`features` stage: run the frozen backbone over every split and save feature vectors.

Input: the backbone `.keras` file of the `backbone` stage ((48, 48, 1) 0-255 ->
pooled features) and the prepared split directory. For each of ``train.npz``,
``val.npz`` and ``test.npz`` that exists, writes ``<split>.npz`` holding

* ``features``: float32 (N, D), row i the backbone output for image i;
* ``labels``: int64 (N,), the split's labels in the same (file) order;

plus ``throughput.json`` (images/s per split). The whole output directory is
written atomically: on any error no directory, or the previous one, remains.

Inference runs `fer_tasks.lib.data.eval_dataset` batches through the backbone
traced once as a `tf.function` (``jit_compile=False``; a batch-size-agnostic
input signature, so the short last batch does not retrace) and then frozen
(variables -> constants, see `_infer_fn`). Measured on the 2-core CPU, per CPU
second: the frozen graph ~1.3x the plain traced call; the plain traced call
about equal to `predict_on_batch` and faster than `Model.predict`; XLA
(``jit_compile=True``) ~15x slower at this input size.

``throughput.json`` holds wall-clock timings, so it differs from run to run
even when the features are bit-identical.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fer_tasks import IMAGE_SIZE
from fer_tasks.lib.errors import InputError, MissingInput
from fer_tasks.lib.io import atomic_path, load_split, write_json
from fer_tasks.lib.params import FeaturesParams

__all__ = ["SPLITS", "extract_features"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _infer_fn(model):
    """The backbone as one inference function over float (B, 48, 48, 1) batches; frozen flag.

    The traced graph is frozen (variables -> constants) so Grappler can fold the
    BatchNormalization arithmetic into the convolutions: ~25-30 % less CPU per
    image for EfficientNet-B0/Lite0 at 48x48. The converter lives under
    `tensorflow.python` (not public API): if it fails, or the frozen graph's
    output on a probe batch differs from the traced model's, the plain traced
    function is used instead (same features, more CPU).
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 1), tf.float32)
    traced = tf.function(
        lambda x: model(x, training=False), input_signature=[spec], jit_compile=False
    )
    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        frozen_fn = convert_variables_to_constants_v2(traced.get_concrete_function())

        def frozen(x):
            out = frozen_fn(tf.convert_to_tensor(x, tf.float32))
            return out[0] if isinstance(out, list | tuple) else out

        # the frozen graph must compute what the model computes, or it is not used
        probe = np.random.default_rng(0).uniform(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 1))
        probe = tf.constant(probe, tf.float32)
        want, got = traced(probe).numpy(), frozen(probe).numpy()
        tol = 1e-4 * max(float(np.abs(want).max()), 1e-30)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=tol):
            raise InputError("frozen graph output differs from the model's")
    except Exception as err:  # private API: degrade, do not fail
        log.warning(
            "features: could not freeze the backbone graph (%s: %s); running it as is",
            type(err).__name__,
            err,
        )
        return traced, False
    return frozen, True


def _layer_model(model, layer: str, path: Path):
    """The backbone cut at `layer`, its feature map flattened (spatial layout kept)."""
    import keras

    try:
        out = model.get_layer(layer).output
    except ValueError:
        blocks = sorted({n.name for n in model.layers if n.name.endswith("_add")})
        raise InputError(
            f"features.layer: {path} has no layer {layer!r} (residual outputs: {blocks})"
        ) from None
    flat = keras.layers.Flatten(name=f"{layer}_flat")(out)
    return keras.Model(model.input, flat, name=f"{model.name}_{layer}")


def _run_split(infer, images: np.ndarray, dim: int, batch_size: int, desc: str):
    """Features (N, dim) float32 for `images` in order; wall and CPU seconds of the pass."""
    from tqdm.auto import tqdm

    from fer_tasks.lib.data import eval_dataset

    out = np.empty((len(images), dim), dtype=np.float32)
    cpu_start = time.process_time()
    start = time.perf_counter()
    i = 0
    with tqdm(
        total=len(images), desc=f"features {desc}", unit="img", leave=False, disable=None
    ) as bar:
        for batch in eval_dataset(images, None, batch_size):
            feats = infer(batch).numpy()
            out[i : i + len(feats)] = feats
            i += len(feats)
            bar.update(len(feats))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if i != len(images):  # eval_dataset covers every image exactly once
        raise RuntimeError(f"{desc}: backbone produced {i} feature rows for {len(images)} images")
    return out, seconds, cpu_seconds


def extract_features(
    backbone_path: Path, data_dir: Path, out_dir: Path, params: FeaturesParams
) -> dict:
    """Backbone features for every split in `data_dir`, written to `out_dir`; returns throughput.

    The returned dict (also `out_dir/throughput.json`)::

        {"backbone": name, "feature_dim": D, "batch_size": B, "frozen_graph": bool,
         "splits": {"train": {"n": N, "seconds": s, "images_per_s": r,
                              "cpu_seconds": c}, ...}}
    """
    backbone_path, data_dir, out_dir = Path(backbone_path), Path(data_dir), Path(out_dir)
    if not backbone_path.is_file():
        raise MissingInput(f"{backbone_path}: backbone file not found")
    present = [s for s in SPLITS if (data_dir / f"{s}.npz").is_file()]
    if not present:
        raise MissingInput(f"{data_dir}: none of {', '.join(s + '.npz' for s in SPLITS)}")

    import keras

    try:
        model = keras.saving.load_model(backbone_path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, OSError, zip errors, ...
        raise InputError(f"{backbone_path}: cannot load the backbone ({err})") from err
    if params.layer is not None:
        model = _layer_model(model, params.layer, backbone_path)
    out_shape = tuple(model.output.shape) if not isinstance(model.output, list) else None
    if out_shape is None or len(out_shape) != 2 or out_shape[-1] is None:
        raise InputError(
            f"{backbone_path}: expected a pooled feature extractor with output (None, D), "
            f"got {out_shape if out_shape is not None else 'several outputs'}"
        )
    dim = int(out_shape[-1])
    infer, frozen = _infer_fn(model)
    # run once before timing, so throughput is the steady-state rate
    infer(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32))

    report = {
        "backbone": model.name,
        "feature_dim": dim,
        "batch_size": params.batch_size,
        "frozen_graph": frozen,
        "splits": {},
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in present:
            images, labels = load_split(data_dir / f"{split}.npz")
            feats, seconds, cpu_seconds = _run_split(infer, images, dim, params.batch_size, split)
            if not np.isfinite(feats).all():
                raise InputError(f"{split}: backbone produced non-finite features")
            with open(tmp / f"{split}.npz", "wb") as fh:
                np.savez(fh, features=feats, labels=labels)
            rate = len(images) / seconds if seconds > 0 and len(images) else 0.0
            report["splits"][split] = {
                "n": len(images),
                "seconds": round(seconds, 3),
                "images_per_s": round(rate, 1),
                "cpu_seconds": round(cpu_seconds, 3),
            }
            log.info(
                "features %s: %d x %d in %.1f s (%.0f img/s)",
                split,
                len(images),
                dim,
                seconds,
                rate,
            )
        write_json(tmp / "throughput.json", report)
    return report
