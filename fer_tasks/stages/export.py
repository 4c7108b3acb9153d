"""`export` stage: TFLite float32, float16 and full-integer int8 versions of the final model.

The models are calibrated: the temperature of the `calibrate` stage's recipe
(models/calibration.json) is built into each of them (their softmax takes the
logits divided by T, `lib.model.temperature_model`), so even the int8 model
quantizes the calibrated probabilities. Flip TTA cannot live inside a model
without a custom layer; `inference.json` beside the files tells their users
(`fer predict`, `lib.classifiers.predict_tta`) whether to average each face
with its mirror image: ``{"temperature": T, "tta_flip": bool,
"temperature_in_model": true}``.

`export_tflite` exports the `.keras` model once as a SavedModel (Keras'
`Model.export`) and converts that with `tf.lite.TFLiteConverter.from_saved_model`
three ways (`from_keras_model` writes the same SavedModel again for every
variant, the larger part of its time), writing, in `out_dir`:

``model_float32.tflite``
    No optimisation: float32 weights and activations.
``model_float16.tflite``
    float16 weights (dequantized to float32 at load); float32 input and output.
``model_int8.tflite``
    Full-integer quantization (``TFLITE_BUILTINS_INT8`` only, so conversion
    fails rather than leave a float op behind), calibrated on
    ``export.representative_samples`` training images drawn with
    ``export.seed``. Input: **uint8 raw pixels** (scale 1, zero point 0: the
    representative set always spans 0-255, see `representative_images`), so a
    caller feeds the 48x48 grayscale image bytes unchanged. Output: **float32
    probabilities** -- the converter keeps a final dequantize of the 7 softmax
    values, which costs nothing measurable and spares every consumer the
    output scale/zero point (a uint8 softmax output would have scale 1/256).

Every model is run on LiteRT (`ai_edge_litert`, one thread) over the test
split, with TTA when the recipe says so (each face and its mirror image as
one batch of two); the report (`report_path`, e.g. reports/export.json) holds the Keras
model's test accuracy and, per variant, the file size, its test accuracy, the
difference from the Keras accuracy in points, the share of test images on
which it predicts the same class as the Keras model, the median latency of
one face's prediction (one image, or the pair with TTA) over
``export.latency_runs`` invokes, and the input/output types. The
stage raises -- after writing the models and the report, so the figures can be
read -- when the int8 accuracy is more than ``export.max_int8_drop`` points
below the Keras accuracy (an int8 model that scores *better* always passes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_tasks.lib.calibration import Recipe, center_zoom, flip, read_recipe
from fer_tasks.lib.classifiers import TFLiteClassifier, predict_tta
from fer_tasks.lib.errors import FerError, InputError
from fer_tasks.lib.io import atomic_path, load_split, write_json
from fer_tasks.lib.params import ExportParams

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "int8")
EVAL_BATCH = 64


class Int8AccuracyError(FerError, RuntimeError):
    """The int8 model loses more accuracy than `export.max_int8_drop` allows."""


def representative_images(train_images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` training images drawn without replacement (all when fewer), seeded, as uint8.

    The first image gets one pixel set to 0 and one to 255 (top-left corner) so
    the calibrated input range is exactly 0-255 whatever the sample: the int8
    model's uint8 input then has scale 1, zero point 0, i.e. takes raw pixels.
    """
    if len(train_images) == 0:
        raise InputError("the training split is empty: no representative images")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train_images), size=min(n, len(train_images)), replace=False)
    sample = np.array(train_images[np.sort(idx)], dtype=np.uint8)
    sample[0, 0, 0], sample[0, 0, 1] = 0, 255
    return sample


def saved_model(model, path: Path) -> Path:
    """Write the Keras `model` as a SavedModel at `path`, the converter's input: one
    serving endpoint, the 48x48x1 image in, the probabilities out, in inference mode.

    The endpoint calls the model with ``training=False`` explicitly. `Model.export`'s
    default endpoint (``model.__call__``, training unset) runs the backbone's
    `Resizing` layer, whose ``call`` defaults to ``training=True`` in Keras 3.15, and
    that mode reached the layers after it: trainable BatchNorm layers (phases with
    ``unfreeze_bn: true``, as in the fer2013-cpu preset) were traced in training
    mode. The TFLite models then normalised each batch by its own statistics and
    updated the moving averages on every call (MEAN, SQUARED_DIFFERENCE,
    ASSIGN_VARIABLE ops): on FER2013 at 64 px, float32 agreed with Keras on 81 % of
    faces and int8 lost 19 points. (`predict` and `fit`'s validation pass
    ``training=False`` themselves, so only the export was affected.)
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)],
    )
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):  # Keras prints every captured tensor
        archive.write_out(str(path), verbose=False)
    log.debug("SavedModel export output:\n%s", chatter.getvalue())
    return Path(path)


def convert(saved: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    """One TFLite flatbuffer of the SavedModel at `saved` (see `saved_model`; the module
    doc says what each variant is)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if variant == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if representative is None:
            raise InputError("int8 conversion needs representative images")

        def gen() -> Iterator[list[np.ndarray]]:
            for img in representative:
                yield [img[None, :, :, None].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
    elif variant != "float32":
        raise InputError(f"unknown TFLite variant {variant!r}")
    # the converter's own chatter goes to the debug log
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        # the uint8 input's statistics come from the representative set: nothing to add
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        blob = conv.convert()
    log.debug("converter output (%s):\n%s", variant, chatter.getvalue())
    return blob


def _keras_probs(model, images: np.ndarray, tta_flip: bool) -> np.ndarray:
    from fer_tasks.lib.data import eval_dataset

    views = [images, flip(images)] if tta_flip else [images]
    return np.mean(
        [model.predict(eval_dataset(v, None, EVAL_BATCH), verbose=0) for v in views], axis=0
    )


def export_tflite(
    model_path: Path,
    calibration_path: Path | None,
    train_path: Path,
    test_path: Path,
    out_dir: Path,
    report_path: Path,
    params: ExportParams,
) -> dict:
    """Write the three .tflite variants, inference.json and the report; raise
    `Int8AccuracyError` on a big drop. Without a recipe: T = 1, no TTA.

    Returns the report.
    """
    from fer_tasks.lib.model import as_float32, load_fer_model, temperature_model

    model_path, out_dir, report_path = Path(model_path), Path(out_dir), Path(report_path)
    recipe = read_recipe(calibration_path) if calibration_path is not None else Recipe()
    if recipe.temperature_in_model:
        raise InputError(
            f"{calibration_path}: an export's own recipe; export takes the calibrate "
            "stage's models/calibration.json"
        )
    train_images, _ = load_split(train_path)  # load_split checks uint8 (N, 48, 48)
    test_images, test_labels = load_split(test_path)
    if len(test_images) == 0:
        raise InputError(f"{test_path}: the test split is empty")
    # the recipe's closer view is numpy preprocessing before the model, as in fer predict
    test_images = center_zoom(test_images, recipe.center_crop)

    model = temperature_model(as_float32(load_fer_model(model_path)), recipe.temperature)
    keras_pred = _keras_probs(model, test_images, recipe.tta_flip).argmax(axis=1)
    keras_acc = float(np.mean(keras_pred == test_labels))
    log.info(
        "Keras model (T = %.3f, TTA %s): test accuracy %.4f (n=%d)",
        recipe.temperature,
        "on" if recipe.tta_flip else "off",
        keras_acc,
        len(test_labels),
    )
    one_face = test_images[:1]  # the latency is that of one face's prediction: the pair with TTA
    if recipe.tta_flip:
        one_face = np.concatenate([one_face, flip(one_face)])

    rep = representative_images(train_images, params.representative_samples, params.seed)
    variants: dict[str, dict] = {}
    with atomic_path(out_dir) as tmp_dir, tempfile.TemporaryDirectory() as scratch:
        tmp_dir.mkdir()
        saved = saved_model(model, Path(scratch) / "saved_model")
        for variant in VARIANTS:
            blob = convert(saved, variant, rep if variant == "int8" else None)
            file = tmp_dir / f"model_{variant}.tflite"
            file.write_bytes(blob)
            clf = TFLiteClassifier(file, num_threads=1)
            pred = predict_tta(clf, test_images, EVAL_BATCH, recipe.tta_flip).argmax(axis=1)
            acc = float(np.mean(pred == test_labels))
            latency = clf.latency_ms(one_face, params.latency_runs)
            entry = {
                "file": str(out_dir / file.name),
                "size_bytes": len(blob),
                "accuracy": acc,
                "accuracy_diff_points": 100 * (acc - keras_acc),
                # share of test images whose predicted class equals the Keras model's
                "agreement_with_keras": float(np.mean(pred == keras_pred)),
                "latency_ms_median": latency,
                "input_dtype": clf.input_dtype.name,
                "output_dtype": clf.output_dtype.name,
            }
            if clf.input_dtype.kind != "f":
                scale, zero = clf.input_quantization
                entry["input_quantization"] = {"scale": scale, "zero_point": zero}
                if (scale, zero) != (1.0, 0):  # still correct: callers quantize with these
                    log.warning(
                        "%s input is not raw pixels: scale %g, zero point %d", variant, scale, zero
                    )
            variants[variant] = entry
            log.info(
                "%s: %d bytes, accuracy %.4f (%+.2f points), %.3f ms/face",
                variant,
                len(blob),
                acc,
                entry["accuracy_diff_points"],
                latency,
            )
        inference = Recipe(
            recipe.temperature,
            recipe.tta_flip,
            temperature_in_model=True,
            center_crop=recipe.center_crop,
        )
        write_json(tmp_dir / "inference.json", inference.to_json())
    for entry in variants.values():
        entry["size_vs_float32"] = entry["size_bytes"] / variants["float32"]["size_bytes"]

    drop = -variants["int8"]["accuracy_diff_points"]
    report = {
        "keras": {"file": str(model_path), "accuracy": keras_acc},
        "n_test": int(len(test_labels)),
        "temperature": recipe.temperature,
        "tta_flip": recipe.tta_flip,
        "center_crop": recipe.center_crop,
        "variants": variants,
        "int8_drop_points": drop,
        "max_int8_drop": params.max_int8_drop,
        "int8_ok": drop <= params.max_int8_drop + 1e-9,  # float slack
        "latency": {
            "runs": params.latency_runs,
            "threads": 1,
            "runtime": "ai_edge_litert",
            "machine": platform.machine(),
        },
        "representative_samples": int(len(rep)),
        "seed": params.seed,
    }
    write_json(report_path, report)
    if not report["int8_ok"]:
        raise Int8AccuracyError(
            f"int8 model test accuracy {100 * variants['int8']['accuracy']:.2f} % is "
            f"{drop:.2f} points below the Keras model's {100 * keras_acc:.2f} % "
            f"(export.max_int8_drop = {params.max_int8_drop}); float32 TFLite scores "
            f"{100 * variants['float32']['accuracy']:.2f} % and agrees with Keras on "
            f"{100 * variants['float32']['agreement_with_keras']:.1f} % of faces, int8 on "
            f"{100 * variants['int8']['agreement_with_keras']:.1f} %; report: {report_path}"
        )
    return report
