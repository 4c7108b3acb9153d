"""Tests for fer_tasks.stages.rebalance on tiny generated training splits."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.io import load_split, save_split
from fer_tasks.lib.params import RebalanceParams
from fer_tasks.stages.rebalance import _effective_weights, rebalance

COUNTS = [30, 3, 20, 50, 25, 15, 28]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _make_split(path: Path, counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random-noise faces with the given per-class counts, in a mixed order."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    save_split(path, images, labels)
    return images, labels


@pytest.fixture
def train(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path / "prepared" / "train.npz"
    images, labels = _make_split(path, COUNTS)
    return path, images, labels


def _run(train_path: Path, out_dir: Path, **params) -> tuple[dict, dict, Path]:
    """Run rebalance into out_dir; return (returned report, class-weights JSON, out dir)."""
    report = rebalance(
        train_path,
        out_dir / "train.npz",
        out_dir / "class_weights.json",
        out_dir / "report.json",
        out_dir / "report.png",
        RebalanceParams(**params),
    )
    weights = json.loads((out_dir / "class_weights.json").read_text())
    return report, weights, out_dir


def _counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=NUM_CLASSES).tolist()


def _weight_vector(weights_json: dict) -> np.ndarray:
    return np.array([weights_json["weights"][str(c)] for c in range(NUM_CLASSES)])


def _source_rows(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


# --------------------------------------------------------------------------- methods


def test_none_keeps_split_and_unit_weights(train, tmp_path):
    path, images, labels = train
    report, weights, out = _run(path, tmp_path / "out", method="none")
    got_images, got_labels = load_split(out / "train.npz")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64
    assert weights["method"] == "none"
    assert _weight_vector(weights).tolist() == [1.0] * NUM_CLASSES
    assert report["before"] == report["after"] == dict(zip(CLASS_NAMES, COUNTS, strict=True))


def test_class_weight_balanced_matches_sklearn(train, tmp_path):
    path, images, labels = train
    report, weights, out = _run(path, tmp_path / "out", method="class_weight")
    expected = compute_class_weight("balanced", classes=np.arange(NUM_CLASSES), y=labels)
    w = _weight_vector(weights)
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    # n / (k * n_c): every weighted class total equals n / k
    totals = w * np.array(COUNTS)
    np.testing.assert_allclose(totals, len(labels) / NUM_CLASSES, rtol=1e-12)
    # the split itself is untouched
    got_images, got_labels = load_split(out / "train.npz")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert report["weighting"] == "balanced"
    assert report["weights"] == {n: weights["weights"][str(c)] for c, n in enumerate(CLASS_NAMES)}


def test_class_weights_json_shape(train, tmp_path):
    path, _, _ = train
    _, weights, _ = _run(path, tmp_path / "out", method="class_weight")
    assert set(weights) == {"method", "weights", "names"}
    assert weights["method"] == "class_weight"
    assert list(weights["weights"]) == [str(c) for c in range(NUM_CLASSES)]
    assert weights["names"] == {str(c): n for c, n in enumerate(CLASS_NAMES)}
    # the trainer's conversion
    as_int = {int(k): float(v) for k, v in weights["weights"].items()}
    assert sorted(as_int) == list(range(NUM_CLASSES))


def test_effective_weights_follow_cui_et_al(train, tmp_path):
    path, _, _ = train
    beta = 0.9
    _, weights, _ = _run(
        path, tmp_path / "out", method="class_weight", weighting="effective", beta=beta
    )
    w = _weight_vector(weights)
    counts = np.array(COUNTS, dtype=float)
    raw = (1 - beta) / (1 - beta**counts)
    np.testing.assert_allclose(w, raw / raw.sum() * NUM_CLASSES, rtol=1e-10)
    assert w.sum() == pytest.approx(NUM_CLASSES)


def test_effective_weights_tend_to_uniform_as_beta_goes_to_zero(train, tmp_path):
    path, _, _ = train
    _, weights, _ = _run(
        path, tmp_path / "out", method="class_weight", weighting="effective", beta=1e-9
    )
    np.testing.assert_allclose(_weight_vector(weights), 1.0, atol=1e-6)
    spreads = [np.ptp(_effective_weights(np.array(COUNTS), b)) for b in (0.9, 0.5, 0.1, 1e-3)]
    assert spreads == sorted(spreads, reverse=True)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99, 0.999, 0.9999])
def test_effective_weights_decrease_with_class_size(beta):
    counts = np.array([1, 2, 3, 5, 10, 100, 1000])
    w = _effective_weights(counts, beta)
    assert np.all(np.diff(w) <= 0)
    # strictly decreasing wherever beta**n_c is not lost to float rounding against 1
    resolvable = beta ** counts[:-1].astype(float) > 1e-12
    assert np.all(np.diff(w)[resolvable] < 0)
    assert w.sum() == pytest.approx(len(counts))


def test_effective_weights_near_one_tend_to_inverse_frequency():
    counts = np.array(COUNTS)
    w = _effective_weights(counts, 1 - 1e-9)
    inv = 1.0 / counts
    np.testing.assert_allclose(w, inv / inv.sum() * NUM_CLASSES, rtol=1e-5)


@pytest.mark.parametrize("augment", [True, False])
def test_oversample_raises_every_class_to_the_largest(train, tmp_path, augment):
    path, images, _ = train
    report, weights, out = _run(path, tmp_path / "out", method="oversample", augment=augment)
    got_images, got_labels = load_split(out / "train.npz")
    assert _counts(got_labels) == [max(COUNTS)] * NUM_CLASSES
    assert _weight_vector(weights).tolist() == [1.0] * NUM_CLASSES
    assert report["added"] == NUM_CLASSES * max(COUNTS) - sum(COUNTS)
    # every original image is still there, exactly once per original occurrence
    originals = _source_rows(images)
    kept = sum(img.tobytes() in originals for img in got_images)
    if augment:
        assert kept == len(images)  # duplicates all differ from every source
    else:
        assert kept == len(got_images)  # duplicates are exact copies


def test_oversampled_duplicates_are_augmented_per_class(train, tmp_path):
    path, images, labels = train
    _, _, out = _run(path, tmp_path / "out", method="oversample", augment=True)
    got_images, got_labels = load_split(out / "train.npz")
    for c in range(NUM_CLASSES):
        sources = _source_rows(images[labels == c])
        new = [img for img in got_images[got_labels == c] if img.tobytes() not in sources]
        assert len(new) == max(COUNTS) - COUNTS[c]
        # still look like their sources: same size/dtype, not blank, not saturated
        for img in new:
            assert img.shape == (48, 48) and img.dtype == np.uint8
            assert 20 < img.mean() < 235


def test_oversample_without_augment_copies_within_class(train, tmp_path):
    path, images, labels = train
    _, _, out = _run(path, tmp_path / "out", method="oversample", augment=False)
    got_images, got_labels = load_split(out / "train.npz")
    for c in range(NUM_CLASSES):
        sources = _source_rows(images[labels == c])
        assert all(img.tobytes() in sources for img in got_images[got_labels == c])
    # the 47 disgust duplicates are spread evenly over its 3 images (15 or 16 each, + original)
    per_image = np.unique(
        [img.tobytes() for img in got_images[got_labels == 1]], return_counts=True
    )[1]
    assert sorted(per_image.tolist()) == [16, 17, 17]


def test_oversample_target_ratio(train, tmp_path):
    path, _, _ = train
    report, _, out = _run(path, tmp_path / "out", method="oversample", target_ratio=0.5)
    _, got_labels = load_split(out / "train.npz")
    # target = 0.5 * 50 = 25; larger classes keep their own count
    expected = [max(n, 25) for n in COUNTS]
    assert _counts(got_labels) == expected
    assert list(report["after"].values()) == expected


def test_oversample_ratio_above_one_grows_the_largest_class_too(train, tmp_path):
    path, _, _ = train
    _, _, out = _run(path, tmp_path / "out", method="oversample", target_ratio=1.5)
    _, got_labels = load_split(out / "train.npz")
    assert _counts(got_labels) == [75] * NUM_CLASSES


@pytest.mark.parametrize("ratio", [1.0, 2.0, 5.0, 0.5])
def test_undersample_never_exceeds_cap(train, tmp_path, ratio):
    path, images, labels = train
    report, weights, out = _run(path, tmp_path / "out", method="undersample", target_ratio=ratio)
    got_images, got_labels = load_split(out / "train.npz")
    cap = max(1, int(np.floor(ratio * min(COUNTS) + 0.5)))
    assert report["cap"] == cap
    assert _counts(got_labels) == [min(n, cap) for n in COUNTS]
    assert _weight_vector(weights).tolist() == [1.0] * NUM_CLASSES
    # a subset without replacement: no image appears twice, each with its own label
    rows = [img.tobytes() for img in got_images]
    assert len(set(rows)) == len(rows)
    source_label = {img.tobytes(): int(lab) for img, lab in zip(images, labels, strict=True)}
    assert all(source_label[r] == int(lab) for r, lab in zip(rows, got_labels, strict=True))


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["oversample", "undersample"])
def test_same_seed_same_arrays(train, tmp_path, method):
    path, _, _ = train
    _run(path, tmp_path / "a", method=method, seed=7)
    _run(path, tmp_path / "b", method=method, seed=7)
    _run(path, tmp_path / "c", method=method, seed=8)
    a_images, a_labels = load_split(tmp_path / "a" / "train.npz")
    b_images, b_labels = load_split(tmp_path / "b" / "train.npz")
    c_images, c_labels = load_split(tmp_path / "c" / "train.npz")
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(a_images, c_images)


def test_resampled_output_is_shuffled(train, tmp_path):
    path, _, _ = train
    _, _, out = _run(path, tmp_path / "out", method="oversample")
    _, got_labels = load_split(out / "train.npz")
    # not grouped by class: the labels change often along the array
    assert np.count_nonzero(np.diff(got_labels)) > len(got_labels) // 2


# --------------------------------------------------------------------------- reports


@pytest.mark.parametrize("method", ["none", "class_weight", "oversample", "undersample"])
def test_report_matches_outputs(train, tmp_path, method):
    path, _, labels = train
    report, weights, out = _run(path, tmp_path / "out", method=method)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    _, got_labels = load_split(out / "train.npz")
    assert report["method"] == method
    assert report["before"] == dict(zip(CLASS_NAMES, _counts(labels), strict=True))
    assert report["after"] == dict(zip(CLASS_NAMES, _counts(got_labels), strict=True))
    assert report["total_before"] == len(labels)
    assert report["total_after"] == len(got_labels)
    assert list(report["weights"].values()) == _weight_vector(weights).tolist()
    png = (out / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_png_is_a_valid_image(train, tmp_path):
    from PIL import Image

    path, _, _ = train
    _, _, out = _run(path, tmp_path / "out", method="oversample")
    with Image.open(out / "report.png") as im:
        im.verify()
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_no_temporary_files_left(train, tmp_path):
    path, _, _ = train
    _, _, out = _run(path, tmp_path / "out", method="oversample")
    assert sorted(p.name for p in out.iterdir()) == [
        "class_weights.json",
        "report.json",
        "report.png",
        "train.npz",
    ]


# --------------------------------------------------------------------------- errors


def _with_empty_class(tmp_path: Path) -> Path:
    path = tmp_path / "train_empty.npz"
    _make_split(path, [30, 0, 20, 50, 25, 15, 28])
    return path


def test_oversample_empty_class_is_an_error(tmp_path):
    path = _with_empty_class(tmp_path)
    with pytest.raises(ValueError, match=r"train_empty\.npz.*disgust"):
        _run(path, tmp_path / "out", method="oversample")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_undersample_empty_class_is_an_error(tmp_path):
    path = _with_empty_class(tmp_path)
    with pytest.raises(ValueError, match=r"train_empty\.npz.*disgust"):
        _run(path, tmp_path / "out", method="undersample")


@pytest.mark.parametrize("weighting", ["balanced", "effective"])
def test_class_weight_empty_class_gets_zero_weight(tmp_path, caplog, weighting):
    path = _with_empty_class(tmp_path)
    counts = np.array([30, 0, 20, 50, 25, 15, 28])
    with caplog.at_level(logging.WARNING, logger="fer_tasks.stages.rebalance"):
        report, weights, _ = _run(
            path, tmp_path / "out", method="class_weight", weighting=weighting
        )
    w = _weight_vector(weights)
    assert w[1] == 0.0
    assert np.all(w[counts > 0] > 0)
    assert "disgust" in caplog.text
    assert report["after"]["disgust"] == 0
    if weighting == "balanced":  # over the 6 present classes: totals n / 6
        np.testing.assert_allclose((w * counts)[counts > 0], counts.sum() / 6)
    else:  # present classes' weights sum to the number of present classes
        assert w.sum() == pytest.approx(6)


def test_none_accepts_an_empty_class(tmp_path):
    path = _with_empty_class(tmp_path)
    report, weights, _ = _run(path, tmp_path / "out", method="none")
    assert report["after"]["disgust"] == 0
    assert _weight_vector(weights).tolist() == [1.0] * NUM_CLASSES


def test_bad_labels_name_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    save_split(path, np.zeros((3, 48, 48), np.uint8), np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"bad\.npz.*outside 0\.\.6"):
        _run(path, tmp_path / "out", method="none")


def test_empty_split_names_the_file(tmp_path):
    path = tmp_path / "empty.npz"
    save_split(path, np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"empty\.npz.*empty"):
        _run(path, tmp_path / "out", method="class_weight")


def test_missing_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        _run(tmp_path / "nope.npz", tmp_path / "out", method="none")


def test_not_an_npz_names_the_file(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"garbage\.npz"):
        _run(path, tmp_path / "out", method="none")


# --------------------------------------------------------------------------- import cost


def test_import_is_cheap():
    code = (
        "import sys, fer_tasks.stages.rebalance\n"
        "heavy = [m for m in ('tensorflow', 'matplotlib.pyplot', 'matplotlib', 'sklearn', "
        "'scipy.ndimage') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert res.stdout.strip() == ""
