"""Tests for fer_tasks.stages.features: a tiny saved backbone over small random splits."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from fer_tasks.lib.io import save_split
from fer_tasks.lib.params import FeaturesParams
from fer_tasks.stages.features import extract_features

N = 40  # images per split
K = 6  # feature dimension of the tiny backbone


def _tiny_backbone() -> keras.Model:
    """(48, 48, 1) 0-255 -> (K,): rescale, strided conv, global max pool (like the real ones)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 48, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(K, 3, strides=2)(x)
    out = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, out, name="tiny")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "backbone.keras"
    _tiny_backbone().save(path)
    return path


def _make_data(data_dir: Path, splits=("train", "val", "test")) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for s in splits:
        images = rng.integers(0, 256, size=(N, 48, 48), dtype=np.uint8)
        labels = rng.integers(0, 7, size=N).astype(np.int64)
        save_split(data_dir / f"{s}.npz", images, labels)
        out[s] = (images, labels)
    return out


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        assert sorted(z.files) == ["features", "labels"]
        return z["features"], z["labels"]


@pytest.fixture
def data(tmp_path: Path) -> dict:
    return _make_data(tmp_path / "prepared")


def test_outputs_shapes_dtypes_and_order(tmp_path: Path, backbone: Path, data):
    out = tmp_path / "features"
    report = extract_features(backbone, tmp_path / "prepared", out, FeaturesParams(batch_size=16))
    assert sorted(p.name for p in out.iterdir()) == [
        "test.npz",
        "throughput.json",
        "train.npz",
        "val.npz",
    ]
    model = keras.saving.load_model(backbone, compile=False, safe_mode=True)
    for split, (images, labels) in data.items():
        feats, got_labels = _load(out / f"{split}.npz")
        assert feats.dtype == np.float32 and feats.shape == (N, K)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)
        # row i is the backbone output for image i (N=40 is not a multiple of 16)
        want = model.predict(images[..., None].astype(np.float32), verbose=0)
        np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)
    assert json.loads((out / "throughput.json").read_text()) == report


def test_throughput_report(tmp_path: Path, backbone: Path, data):
    report = extract_features(backbone, tmp_path / "prepared", tmp_path / "f", FeaturesParams())
    assert report["feature_dim"] == K and report["backbone"] == "tiny"
    assert report["batch_size"] == 256
    assert list(report["splits"]) == ["train", "val", "test"]
    for s in report["splits"].values():
        assert s["n"] == N and s["seconds"] >= 0 and s["images_per_s"] > 0


def test_features_are_deterministic(tmp_path: Path, backbone: Path, data):
    params = FeaturesParams(batch_size=7)
    extract_features(backbone, tmp_path / "prepared", tmp_path / "a", params)
    extract_features(backbone, tmp_path / "prepared", tmp_path / "b", params)
    for split in data:
        fa, la = _load(tmp_path / "a" / f"{split}.npz")
        fb, lb = _load(tmp_path / "b" / f"{split}.npz")
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(la, lb)


def test_only_present_splits(tmp_path: Path, backbone: Path):
    _make_data(tmp_path / "prepared", splits=("train", "test"))
    report = extract_features(backbone, tmp_path / "prepared", tmp_path / "f", FeaturesParams())
    assert list(report["splits"]) == ["train", "test"]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "test.npz",
        "throughput.json",
        "train.npz",
    ]


def test_missing_backbone_leaves_no_output(tmp_path: Path, data):
    out = tmp_path / "features"
    with pytest.raises(FileNotFoundError, match="backbone"):
        extract_features(tmp_path / "nope.keras", tmp_path / "prepared", out, FeaturesParams())
    assert not out.exists()


def test_corrupt_backbone_leaves_no_output(tmp_path: Path, data):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a keras file")
    out = tmp_path / "features"
    with pytest.raises(ValueError, match="cannot load the backbone"):
        extract_features(bad, tmp_path / "prepared", out, FeaturesParams())
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.keras", "prepared"]


def test_failure_midway_keeps_previous_output(tmp_path: Path, backbone: Path, data):
    out = tmp_path / "features"
    extract_features(backbone, tmp_path / "prepared", out, FeaturesParams())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npz"}
    (tmp_path / "prepared" / "test.npz").write_bytes(b"garbage")  # train, val fine; test not
    with pytest.raises(ValueError, match="test.npz"):
        extract_features(backbone, tmp_path / "prepared", out, FeaturesParams())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npz"} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "prepared"]  # no temp dir


def test_no_splits(tmp_path: Path, backbone: Path):
    (tmp_path / "prepared").mkdir()
    with pytest.raises(FileNotFoundError, match="train.npz"):
        extract_features(backbone, tmp_path / "prepared", tmp_path / "f", FeaturesParams())
    assert not (tmp_path / "f").exists()


def test_unpooled_backbone_rejected(tmp_path: Path, data):
    inputs = keras.Input((48, 48, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    path = tmp_path / "unpooled.keras"
    model.save(path)
    with pytest.raises(ValueError, match="pooled"):
        extract_features(path, tmp_path / "prepared", tmp_path / "f", FeaturesParams())
    assert not (tmp_path / "f").exists()


def test_cli_features_then_svm(tmp_path: Path, backbone: Path, data):
    """`fer features` and `fer svm` as dvc.yaml calls them, on one params file."""
    from fer_tasks.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(
        textwrap.dedent("""\
        prepare:
          source: data/raw/fer.csv
        model:
          weights: none
        features:
          batch_size: 16
        svm:
          C: 0.1
        finetune:
          phases:
            head: {after: base, epochs: 1}
          final: head
    """)
    )
    p = ["--params", str(params)]  # a subcommand option
    feat, data_dir = tmp_path / "feat", tmp_path / "prepared"
    assert main(["features", *p, "--backbone", str(backbone), "--data", str(data_dir),
                 "--out", str(feat)]) == 0  # fmt: skip
    assert main(["svm", *p, "--features", str(feat), "--out", str(tmp_path / "svm"),
                 "--reports", str(tmp_path / "reports")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["n_train"] == N and metrics["test"]["n"] == N
    assert (tmp_path / "svm" / "model.joblib").is_file()
    assert (tmp_path / "reports" / "confusion.png").is_file()


@pytest.mark.slow
def test_b0_random_weights(tmp_path: Path, data):
    """The real B0 backbone (random weights, no download) through the stage."""
    from fer_tasks.lib.backbones import build_backbone
    from fer_tasks.lib.params import ModelParams

    path = tmp_path / "b0.keras"
    params = ModelParams(backbone="efficientnet_b0", weights="none", input_size=48)
    build_backbone(params).save(path)
    report = extract_features(path, tmp_path / "prepared", tmp_path / "f", FeaturesParams())
    assert report["feature_dim"] == 1280
    feats, _ = _load(tmp_path / "f" / "train.npz")
    assert feats.shape == (N, 1280) and np.isfinite(feats).all()


def test_layer_option_flattens_that_feature_map(tmp_path, tiny_backbone, splits):
    """features.layer cuts the backbone at a layer and keeps its spatial layout."""
    from fer_tasks.lib.io import load_split

    data = splits["train"].parent
    extract_features(tiny_backbone, data, tmp_path / "f", FeaturesParams(layer="block2a_conv"))
    with np.load(tmp_path / "f" / "train.npz") as z:
        # tiny backbone: 48 -> 23 -> 11 -> 5 spatial, 16 channels at block2a_conv
        assert z["features"].shape == (len(load_split(splits["train"])[1]), 5 * 5 * 16)
    with pytest.raises(ValueError, match="features.layer"):
        extract_features(tiny_backbone, data, tmp_path / "g", FeaturesParams(layer="block9x"))
    assert not (tmp_path / "g").exists()
