"""`model.precision`: a mixed-precision backbone trains, keeps a float32 head, and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_splits


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16"])
def test_mixed_precision_backbone_through_phase_and_export(tmp_path: Path, precision) -> None:
    import keras

    from fer_tasks.lib.params import BaseModelParams, ExportParams, ModelParams, PhaseParams
    from fer_tasks.stages.backbone import resolve_backbone
    from fer_tasks.stages.base import build_base
    from fer_tasks.stages.export import export_tflite
    from fer_tasks.stages.phase import train_phase

    d = make_splits(tmp_path / "data", n_train=70, n_val=35)
    m = tmp_path / "models"
    resolve_backbone(m / "backbone.keras", ModelParams(weights="none", precision=precision))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    build_base(m / "backbone.keras", m / "base", BaseModelParams())
    phase = PhaseParams(after="base", unfreeze="top", epochs=1, batch_size=35, on_collapse="warn")
    train_phase(
        "top",
        m / "base",
        d["train"],
        d["class_weights"],
        d["val"],
        m / "top",
        m / "ckpt",
        tmp_path / "live",
        phase,
    )

    model = keras.saving.load_model(m / "top" / "model.keras", compile=False)
    compute = {layer.dtype_policy.compute_dtype for layer in model.layers}
    assert precision.split("_")[1] in compute  # the trunk kept the mixed policy
    head = model.get_layer("main_output")
    assert head.dtype_policy.name == "float32"
    probs = model.predict(np.zeros((2, 48, 48, 1), "float32"), verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    report = export_tflite(
        m / "top" / "model.keras",
        None,  # no calibration recipe: T = 1, no TTA
        d["train"],
        d["val"],
        m / "export",
        tmp_path / "export.json",
        ExportParams(max_int8_drop=100.0, latency_runs=2),
    )
    assert (m / "export" / "model_int8.tflite").stat().st_size > 0
    assert report["variants"]["float32"]["agreement_with_keras"] >= 0.9


def test_precision_must_be_a_known_policy() -> None:
    from fer_tasks.lib.params import ModelParams

    with pytest.raises(ValueError, match="precision"):
        ModelParams(precision="float16")
