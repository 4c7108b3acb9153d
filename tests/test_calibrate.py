"""Temperature scaling and its measures (lib/calibration.py) and the `calibrate` stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fer_tasks.lib.calibration import (
    ECE_BINS,
    Recipe,
    ece,
    fit_temperature,
    nll,
    read_recipe,
    reliability,
    softmax,
    temper,
    tta_probs,
)


def _row(cls: int, p: float) -> list[float]:
    """Probabilities with `p` on class `cls` and the rest spread evenly."""
    row = [(1 - p) / 6] * 7
    row[cls] = p
    return row


def test_ece_matches_a_hand_computed_case():
    # confidences 0.9, 0.9, 0.6, 0.6; right, wrong, right, wrong
    probs = np.array([_row(0, 0.9), _row(1, 0.9), _row(2, 0.6), _row(3, 0.6)])
    labels = np.array([0, 0, 2, 0])
    # bin of 0.9: accuracy 1/2, confidence 0.9 -> |0.5 - 0.9| = 0.4, weight 2/4
    # bin of 0.6: accuracy 1/2, confidence 0.6 -> |0.5 - 0.6| = 0.1, weight 2/4
    assert ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    # a perfectly calibrated bin scores 0: two faces at 0.5, one right
    assert ece(np.array([_row(0, 0.5), _row(1, 0.5)]), np.array([0, 0])) == pytest.approx(0.0)


def test_bins_are_equal_width_and_closed_on_the_right():
    # 0.4 = 6/15 is the upper edge of bin 5 (index from 0); 0.41 falls in bin 6
    r = reliability(np.array([_row(0, 0.4), _row(0, 0.41), _row(0, 1.0)]), np.array([0, 1, 0]))
    assert len(r["count"]) == ECE_BINS and np.allclose(r["edges"], np.arange(16) / 15)
    assert r["count"][5] == r["count"][6] == r["count"][14] == 1 and r["count"].sum() == 3
    assert r["accuracy"][5] == 1.0 and r["accuracy"][6] == 0.0


def test_nll_matches_a_hand_computed_case():
    probs = np.array([_row(0, 0.5), _row(1, 0.25)])
    assert nll(probs, np.array([0, 1])) == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_measures_refuse_mismatched_or_empty_input():
    with pytest.raises(ValueError, match=r"\(N, 7\)"):
        nll(np.ones((3, 6)) / 6, np.zeros(3, int))
    with pytest.raises(ValueError, match="empty"):
        ece(np.ones((0, 7)), np.zeros(0, int))


def test_tta_probs_is_the_mean_of_each_pass_calibrated_softmax():
    rng = np.random.default_rng(0)
    passes = rng.normal(0, 3, (2, 5, 7))
    expected = (softmax(passes[0], 2.0) + softmax(passes[1], 2.0)) / 2
    assert np.allclose(tta_probs(passes, 2.0), expected)
    assert np.allclose(tta_probs(passes[:1], 1.0), softmax(passes[0]))


def test_temper_on_probabilities_equals_temperature_on_logits():
    logits = np.random.default_rng(1).normal(0, 4, (6, 7))
    assert np.allclose(temper(softmax(logits), 1.7), softmax(logits, 1.7))
    assert np.allclose(temper(softmax(logits), 1.0), softmax(logits))


def _overconfident(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated at T = `scale` (labels drawn from softmax(z / scale))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, 7)) * scale
    p = softmax(z, scale)
    labels = np.array([rng.choice(7, p=row) for row in p])
    return z, labels


@pytest.mark.parametrize(("scale", "seed"), [(3.0, 0), (0.5, 1), (1.0, 2)])
def test_fit_recovers_the_temperature_and_never_raises_the_nll(scale, seed):
    z, labels = _overconfident(4000, scale, seed)
    t = fit_temperature(z[None], labels)
    assert t == pytest.approx(scale, rel=0.15)
    assert nll(softmax(z, t), labels) <= nll(softmax(z), labels)


@pytest.mark.parametrize("seed", range(5))
def test_fit_with_flip_passes_does_not_raise_the_val_nll(seed):
    z, labels = _overconfident(500, 2.5, seed)
    noise = np.random.default_rng(seed + 10).normal(0, 1.0, z.shape)
    passes = np.stack([z, z + noise])  # a mirror image sees a slightly different face
    t = fit_temperature(passes, labels)
    assert nll(tta_probs(passes, t), labels) <= nll(tta_probs(passes, 1.0), labels)
    assert t > 1.2  # the over-confidence was found


def test_fit_keeps_t_1_when_the_search_does_worse(monkeypatch):
    """The guard: a search result with a higher NLL than T = 1 is not used."""
    import scipy.optimize

    z, labels = _overconfident(300, 3.0, 0)

    class Bad:
        x, fun = math.log(15.0), 1e9  # far off, and worse than T = 1

    monkeypatch.setattr(scipy.optimize, "minimize_scalar", lambda *a, **k: Bad())
    assert fit_temperature(z[None], labels) == 1.0


def test_recipe_file_is_checked(tmp_path: Path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.5, "tta_flip": True, "split": "val"}))
    assert read_recipe(path) == Recipe(1.5, True, False)
    for bad, message in (
        ({"temperature": 0, "tta_flip": True}, "temperature must be a positive number"),
        ({"temperature": True, "tta_flip": True}, "temperature must be a positive number"),
        ({"tta_flip": True}, "temperature must be a positive number"),
        ({"temperature": 1.0, "tta_flip": "yes"}, "tta_flip must be true or false"),
        ({"temperature": 1.0, "center_crop": 9}, "center_crop must be a whole number"),
        ({"temperature": 1.0, "center_crop": -1}, "center_crop must be a whole number"),
        ({"temperature": 1.0, "center_crop": True}, "center_crop must be a whole number"),
        ({"temperature": 1.0, "center_crop": 2.0}, "center_crop must be a whole number"),
        ([1.0], "expected a JSON object"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message) as e:
            read_recipe(path)
        assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="calibration file not found"):
        read_recipe(tmp_path / "missing.json")
    path.write_text(json.dumps({"temperature": 1.5, "center_crop": 2}))
    assert read_recipe(path) == Recipe(1.5, False, False, center_crop=2)


def test_center_zoom_cuts_the_border_and_scales_the_centre_back():
    from fer_tasks.lib.calibration import center_zoom

    faces = np.full((3, 48, 48), 200, np.uint8)
    faces[:, :2], faces[:, -2:], faces[:, :, :2], faces[:, :, -2:] = 0, 0, 0, 0  # a 2 px frame
    faces[1, 14:34, 14:34] = 50  # a dark centre square, 20 px wide
    assert center_zoom(faces, 0) is faces
    closer = center_zoom(faces, 2)
    assert closer.shape == faces.shape and closer.dtype == np.uint8
    assert closer[0].min() == closer[0].max() == 200  # the frame is gone
    dark = np.flatnonzero(closer[1, 24] < 125)  # the square grows by 48 / 44 to 21.8 px
    assert 21 <= len(dark) <= 23 and abs(dark.mean() - 23.5) < 0.6
    assert np.array_equal(center_zoom(faces[:0], 2), faces[:0])
    with pytest.raises(ValueError, match="leaves nothing"):
        center_zoom(faces, 24)


# ----------------------------------------------------------------------------- stage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from conftest import band_split, train_tiny_classifier

    from fer_tasks.lib.io import save_split

    root = tmp_path_factory.mktemp("calibrate")
    x, y = band_split(280, seed=1)
    train_tiny_classifier(x, y, epochs=6).save(root / "model.keras")
    save_split(root / "val.npz", *band_split(140, seed=3))
    return {"model": root / "model.keras", "val": root / "val.npz", "root": root}


@pytest.mark.slow
def test_calibrate_stage_writes_the_recipe_and_its_val_figures(tiny):
    from fer_tasks.lib.params import CalibrateParams
    from fer_tasks.stages.calibrate import calibrate

    out = tiny["root"] / "models" / "calibration.json"
    report = calibrate(tiny["model"], tiny["val"], out, CalibrateParams(batch_size=32))
    assert json.loads(out.read_text()) == report
    assert list(report)[:3] == ["temperature", "tta_flip", "temperature_in_model"]
    assert read_recipe(out) == Recipe(report["temperature"], True, False)
    assert report["split"] == "val" and report["n"] == 140 and report["ece_bins"] == 15
    assert report["temperature"] != 1.0
    assert report["after"]["nll"] <= report["before"]["nll"]  # never worse on val
    assert set(report["accuracy"]) == {"plain", "tta_flip"}


@pytest.mark.slow
def test_calibrate_switches(tiny):
    from fer_tasks.lib.params import CalibrateParams
    from fer_tasks.stages.calibrate import calibrate

    out = tiny["root"] / "off.json"
    off = calibrate(tiny["model"], tiny["val"], out, CalibrateParams(temperature=False))
    assert off["temperature"] == 1.0 and off["before"] == off["after"]
    plain = calibrate(tiny["model"], tiny["val"], out, CalibrateParams(tta_flip=False))
    assert plain["tta_flip"] is False and plain["after"]["nll"] <= plain["before"]["nll"]
    assert "accuracy_uncropped" not in plain and plain["center_crop"] == 0


@pytest.mark.slow
def test_calibrate_with_a_centre_crop_fits_on_the_closer_view(tiny):
    """The recipe names the crop; the fit sees the cropped faces; the whole faces' accuracy
    is reported beside, equal to a run without the crop at the same T."""
    from fer_tasks.lib.calibration import center_zoom
    from fer_tasks.lib.io import load_split
    from fer_tasks.lib.model import load_fer_model, predict_logits
    from fer_tasks.lib.params import CalibrateParams
    from fer_tasks.stages.calibrate import calibrate

    out = tiny["root"] / "crop.json"

    report = calibrate(tiny["model"], tiny["val"], out, CalibrateParams(center_crop=3))
    assert read_recipe(out) == Recipe(report["temperature"], True, False, center_crop=3)
    x, y = load_split(tiny["val"])
    model = load_fer_model(tiny["model"])
    cropped = predict_logits(model, center_zoom(x, 3), 64, True)
    assert report["temperature"] == pytest.approx(fit_temperature(cropped, y), rel=1e-6)
    whole = predict_logits(model, x, 64, True)
    t = report["temperature"]

    def acc(passes: np.ndarray) -> float:
        return float(np.mean(tta_probs(passes, t).argmax(axis=1) == y))

    assert report["accuracy_uncropped"] == {"plain": acc(whole[:1]), "tta_flip": acc(whole)}
    assert report["accuracy"] == {"plain": acc(cropped[:1]), "tta_flip": acc(cropped)}
    assert report["before"]["nll"] == pytest.approx(nll(tta_probs(cropped, 1.0), y))
    assert report["before"]["nll"] != pytest.approx(nll(tta_probs(whole, 1.0), y))


@pytest.mark.slow
def test_calibrate_refuses_an_empty_val_split(tiny, tmp_path):
    from fer_tasks.lib.io import save_split
    from fer_tasks.lib.params import CalibrateParams
    from fer_tasks.stages.calibrate import calibrate

    save_split(tmp_path / "empty.npz", np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="validation split is empty"):
        calibrate(tiny["model"], tmp_path / "empty.npz", tmp_path / "c.json", CalibrateParams())
    assert not (tmp_path / "c.json").exists()
