"""Shared fixtures: tiny generated data and a tiny backbone with B0-style layer names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One intra-op thread per test process (and the dvc/fer subprocesses it starts):
# the tests compare runs for equality (a resumed phase against a straight one,
# a killed stage against an unkilled one), and a kernel split over a thread
# pool may sum in an order that varies from run to run. On CI's host the top
# phase of tests/test_phase.py once trained to a different loss in the second
# of two identical runs in one process. xdist already gives each of the two
# cores its own worker, so this costs little. A user's `deterministic: true`
# run keeps TensorFlow's default pool (docs/reliability.md).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


def make_splits(root: Path, n_train: int = 210, n_val: int = 70, seed: int = 0) -> dict[str, Path]:
    """Learnable tiny splits: the class sets the brightness of a band; noise elsewhere."""
    from fer_tasks.lib.io import save_split, write_json

    rng = np.random.default_rng(seed)
    paths = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        y = np.arange(n) % 7
        x = rng.integers(0, 80, (n, 48, 48))
        for c in range(7):
            x[y == c, 6 * c : 6 * c + 6, :] += 150
        paths[split] = root / f"{split}.npz"
        save_split(paths[split], np.clip(x, 0, 255).astype(np.uint8), y)
    paths["class_weights"] = root / "class_weights.json"
    write_json(paths["class_weights"], {"weights": {str(i): 1.0 for i in range(7)}})
    return paths


def make_tiny_backbone(path: Path, seed: int = 1) -> Path:
    """A few-layer CNN with B0-style names (stem, block1a, block2a, top_) saved as .keras."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((48, 48, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="block1a_conv")(x)
    x = keras.layers.BatchNormalization(name="block1a_bn")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="block2a_conv")(x)
    x = keras.layers.Conv2D(16, 1, name="top_conv")(x)
    x = keras.layers.BatchNormalization(name="top_bn")(x)
    x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    keras.Model(inp, x, name="tiny").save(path)
    return path


@pytest.fixture
def splits(tmp_path: Path) -> dict[str, Path]:
    return make_splits(tmp_path / "data")


@pytest.fixture
def tiny_backbone(tmp_path: Path) -> Path:
    return make_tiny_backbone(tmp_path / "backbone.keras")


def band_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled, learnable images: the class sets which horizontal band is bright."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 7).astype(np.int64)
    x = rng.integers(0, 90, (n, 48, 48))
    for c in range(7):
        x[y == c, 6 * c : 6 * c + 6, :] += 140
    return np.clip(x, 0, 255).astype(np.uint8), y


def train_tiny_classifier(x, y, epochs: int, width: int = 8, batchnorm: bool = False):
    """A small CNN with the pipeline's model contract ((48, 48, 1) 0-255 -> 7 softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((48, 48, 1), name="image")
    h = keras.layers.Rescaling(1 / 255)(inp)
    h = keras.layers.Conv2D(width, 3, strides=2, activation="relu")(h)
    if batchnorm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2D(width, 3, strides=2, activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(7, activation="softmax", name="main_output")(h)
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[..., None].astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)
    return model


# The files that run DVC or Prefect end to end, longest first (worker-seconds summed
# from a `--junitxml` report of the whole suite under `make test`). `make test` gives
# pytest-xdist whole files in collection order (--dist loadfile --no-loadscope-reorder),
# so starting with these, longest first, keeps the two workers busy to the end instead
# of leaving one of them alone with test_flows.py.
LONGEST_FILES = (
    "test_flows.py",
    "test_pipeline.py",
    "test_compare.py",
    "test_phase.py",
    "test_strategy.py",
    "test_dvc_adapter.py",
    "test_precision.py",
    "test_backbones.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: others keep order
