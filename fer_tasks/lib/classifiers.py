"""FER classifiers behind one interface: uint8 (N, 48, 48) faces -> (N, 7) probabilities.

`TFLiteClassifier` runs a `.tflite` file on LiteRT (`ai_edge_litert`) and never
imports TensorFlow; `KerasClassifier` loads a `.keras` file in safe mode.
`load_classifier` picks one by suffix. Either can apply a temperature (the
Keras one to its exact logits, the TFLite one to its output probabilities,
`lib.calibration.temper`), and `predict_tta` runs a classifier with flip
test-time augmentation: each face and its mirror image in one batch, their
probabilities averaged. Used by the export stage (accuracy parity, latency)
and by `fer predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_tasks import IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.calibration import flip, temper
from fer_tasks.lib.errors import FerError


class ModelError(FerError, RuntimeError):
    """A model file that is missing, of an unknown kind, or not a 48x48x1 -> 7 classifier."""


class TFLiteClassifier:
    """A `.tflite` FER classifier on LiteRT: uint8 (N, 48, 48) pixels -> float (N, 7) probabilities.

    Quantized inputs get ``round(pixel / scale + zero_point)`` (identity for the
    int8 export's scale 1 / zero point 0); float inputs get float 0-255. A
    `temperature` other than 1 rescales the output probabilities (`temper`); the
    export's files carry their temperature inside and take none here.
    Never imports TensorFlow.
    """

    def __init__(
        self, path: str | Path, num_threads: int | None = None, temperature: float = 1.0
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.temperature = Path(path), temperature
        try:
            self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{self.path}: not a loadable TFLite model ({err})") from None
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{self.path}: expected one input and one output, "
                f"got {len(inputs)} and {len(outputs)}"
            )
        self._in, self._out = inputs[0], outputs[0]
        if tuple(self._in["shape"][1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1):
            raise ModelError(
                f"{self.path}: input shape {self._in['shape'].tolist()} is not "
                f"[N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1]"
            )
        if self._out["shape"][-1] != NUM_CLASSES:
            raise ModelError(
                f"{self.path}: output shape {self._out['shape'].tolist()} "
                f"does not end in {NUM_CLASSES} classes"
            )
        self._batch = int(self._in["shape"][0])
        self._interp.allocate_tensors()

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._in["dtype"])

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(self._out["dtype"])

    @property
    def input_quantization(self) -> tuple[float, int]:
        """(scale, zero_point) of the input; (0.0, 0) for a float input."""
        scale, zero = self._in["quantization"]
        return float(scale), int(zero)

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, IMAGE_SIZE, IMAGE_SIZE, 1])
            self._interp.allocate_tensors()
            self._batch = n

    def _input(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)[..., None]
        dtype = self.input_dtype
        if dtype.kind == "f":
            return x.astype(dtype)
        scale, zero = self.input_quantization
        if dtype == np.uint8 and x.dtype == np.uint8 and scale == 1.0 and zero == 0:
            return x
        if scale == 0.0:
            raise ModelError(f"{self.path}: integer input {dtype} without quantization parameters")
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _output(self) -> np.ndarray:
        y = self._interp.get_tensor(self._out["index"])
        if self.output_dtype.kind != "f":
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32, copy=False).reshape(-1, NUM_CLASSES)

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities (N, 7) for uint8 images (N, 48, 48)."""
        images = np.asarray(images)
        out = np.empty((len(images), NUM_CLASSES), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            self._resize(len(chunk))
            self._interp.set_tensor(self._in["index"], self._input(chunk))
            self._interp.invoke()
            out[start : start + len(chunk)] = self._output()
        return out if self.temperature == 1.0 else temper(out, self.temperature).astype(np.float32)

    def latency_ms(self, images: np.ndarray, runs: int, warmup: int = 5) -> float:
        """Median wall time (ms) of `runs` invokes on one image (H, W) or one batch (K, H, W)."""
        import time

        x = np.asarray(images)
        x = x[None] if x.ndim == 2 else x
        self._resize(len(x))
        self._interp.set_tensor(self._in["index"], self._input(x))
        for _ in range(warmup):
            self._interp.invoke()
        times = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter_ns()
            self._interp.invoke()
            times[i] = time.perf_counter_ns() - t0
        return float(np.median(times) / 1e6)


class KerasClassifier:
    """A `.keras` FER classifier loaded in safe mode (imports TensorFlow); a `temperature`
    other than 1 divides its logits (`lib.model.temperature_model`)."""

    def __init__(self, path: str | Path, temperature: float = 1.0) -> None:
        self.path, self.temperature = Path(path), temperature
        try:
            import keras
        except ImportError as err:
            raise ModelError(
                f"{self.path}: .keras models need TensorFlow/Keras ({err}); "
                f"install the full package or predict with a .tflite export"
            ) from None
        try:
            self._model = keras.saving.load_model(self.path, compile=False, safe_mode=True)
        except Exception as err:  # Keras raises many types for a bad file
            raise ModelError(f"{self.path}: not a loadable .keras model ({err})") from None
        in_shape, out_shape = tuple(self._model.input_shape[1:]), self._model.output_shape
        if in_shape != (IMAGE_SIZE, IMAGE_SIZE, 1) or out_shape[-1] != NUM_CLASSES:
            raise ModelError(
                f"{self.path}: expected input (None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) and "
                f"{NUM_CLASSES} outputs, got {self._model.input_shape} -> {out_shape}"
            )
        if temperature != 1.0:
            from fer_tasks.lib.model import temperature_model

            try:
                self._model = temperature_model(self._model, temperature)
            except ValueError as err:  # no softmax head to take logits from
                raise ModelError(f"{self.path}: cannot apply a temperature ({err})") from None

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        import keras

        x = np.asarray(images, dtype=np.float32)[..., None]
        out = [
            keras.ops.convert_to_numpy(self._model(x[i : i + batch_size], training=False))
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)


def load_classifier(
    model_path: str | Path, num_threads: int | None = None, temperature: float = 1.0
):
    """A `TFLiteClassifier` or `KerasClassifier` by suffix; `ModelError` when unusable."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.suffix == ".tflite":
        return TFLiteClassifier(path, num_threads=num_threads, temperature=temperature)
    if path.suffix == ".keras":
        return KerasClassifier(path, temperature=temperature)
    raise ModelError(f"{path}: unknown model kind {path.suffix!r} (use a .keras or .tflite file)")


def predict_tta(
    clf, images: np.ndarray, batch_size: int = 64, tta_flip: bool = False
) -> np.ndarray:
    """Probabilities (N, 7); with `tta_flip` the mean of each face's and its mirror image's,
    both run in one batch (the batched pair), each already calibrated by `clf`."""
    images = np.asarray(images)
    if not tta_flip:
        return clf.predict(images, batch_size)
    out = np.empty((len(images), NUM_CLASSES), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        k = len(chunk)
        p = clf.predict(np.concatenate([chunk, flip(chunk)]), 2 * k)
        out[start : start + k] = (p[:k] + p[k:]) / 2
    return out
