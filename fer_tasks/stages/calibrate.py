"""`calibrate` stage: how the final model is applied, fixed on the validation split.

Runs the final phase's model on val (each face and its mirror image), fits
the temperature (`fer_tasks.lib.calibration`, Guo et al., 2017) for the
chosen `calibrate.tta_flip` when `calibrate.temperature` is on, and writes
one JSON file (models/calibration.json), atomically::

    {"temperature": 1.43, "tta_flip": true, "temperature_in_model": false,
     "center_crop": 0, "split": "val", "n": 525, "ece_bins": 15,
     "accuracy": {"plain": 0.84, "tta_flip": 0.85},
     "before": {"nll": 0.52, "ece": 0.06}, "after": {"nll": 0.45, "ece": 0.02}}

The first four keys are the recipe `evaluate`, `export` and `fer predict`
follow; the rest are the fit's figures on val, where every choice is made:
``accuracy`` gives both settings of TTA (at the fitted temperature), so TTA
on or off can be decided here; with `calibrate.center_crop` set, every pass
sees the zoomed-in faces and ``accuracy_uncropped`` gives the same two
figures for the whole faces (at the same T), so the crop is decided here too;
``before``/``after`` are NLL and ECE at T = 1 and at the fitted T, with the
chosen TTA setting. The test split is not read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fer_tasks.lib.calibration import (
    ECE_BINS,
    Recipe,
    center_zoom,
    fit_temperature,
    measures,
    tta_probs,
)
from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import load_split, write_json
from fer_tasks.lib.params import CalibrateParams

log = logging.getLogger(__name__)


def calibration_report(
    passes: np.ndarray,
    labels: np.ndarray,
    params: CalibrateParams,
    uncropped: np.ndarray | None = None,
) -> dict:
    """The recipe and its fit figures from val logits `passes` (2, N, 7): faces, mirrored
    (the `center_crop` views when it is set; `uncropped`: the whole faces' logits)."""
    used = passes if params.tta_flip else passes[:1]
    t = fit_temperature(used, labels) if params.temperature else 1.0
    recipe = Recipe(temperature=t, tta_flip=params.tta_flip, center_crop=params.center_crop)

    def accuracy(p: np.ndarray) -> dict:
        def acc(q: np.ndarray) -> float:
            return float(np.mean(tta_probs(q, t).argmax(axis=1) == labels))

        return {"plain": acc(p[:1]), "tta_flip": acc(p)}

    report = {
        **recipe.to_json(),
        "split": "val",
        "n": int(len(labels)),
        "ece_bins": ECE_BINS,
        "accuracy": accuracy(passes),
        "before": measures(tta_probs(used, 1.0), labels),
        "after": measures(tta_probs(used, t), labels),
    }
    if uncropped is not None:
        report["accuracy_uncropped"] = accuracy(uncropped)
    return report


def calibrate(model_path: Path, val_path: Path, out_path: Path, params: CalibrateParams) -> dict:
    """`fer calibrate`: write the recipe and its val figures to `out_path`; return them."""
    from fer_tasks.lib.model import load_fer_model, predict_logits

    images, labels = load_split(val_path)
    if len(images) == 0:
        raise InputError(f"{val_path}: the validation split is empty: nothing to calibrate on")
    model = load_fer_model(Path(model_path))
    closer = center_zoom(images, params.center_crop)
    passes = predict_logits(model, closer, params.batch_size, tta_flip=True)
    whole = predict_logits(model, images, params.batch_size, True) if params.center_crop else None
    report = calibration_report(passes, labels, params, whole)
    write_json(out_path, report)
    log.info(
        "val (n=%d): T = %.3f, TTA %s, centre crop %d px; NLL %.4f -> %.4f, ECE %.4f -> %.4f; "
        "accuracy %.4f plain, %.4f with flip TTA%s",
        report["n"],
        report["temperature"],
        "on" if report["tta_flip"] else "off",
        report["center_crop"],
        report["before"]["nll"],
        report["after"]["nll"],
        report["before"]["ece"],
        report["after"]["ece"],
        report["accuracy"]["plain"],
        report["accuracy"]["tta_flip"],
        (
            "; whole faces {plain:.4f} plain, {tta_flip:.4f} with flip TTA".format(
                **report["accuracy_uncropped"]
            )
            if "accuracy_uncropped" in report
            else ""
        ),
    )
    return report
