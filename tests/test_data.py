"""tf.data input: seeded order and augmentation, including the geometric part."""

from __future__ import annotations

import numpy as np
import pytest

from fer_tasks.lib.data import _affine, train_dataset


def _box_image() -> np.ndarray:
    x = np.zeros((1, 48, 48, 1), np.float32)
    x[0, 20:28, 10:18] = 255.0
    return x


def _bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img[..., 0] > 127)
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_zero_affine_is_the_identity() -> None:
    x = _box_image()
    out = _affine(x, np.array([3, 4], np.int64), 0.0, 0.0, 0.0).numpy()
    np.testing.assert_array_equal(out, x)


def test_shift_moves_the_face_within_bound_and_keeps_its_size() -> None:
    x = np.repeat(_box_image(), 64, axis=0)
    out = _affine(x, np.array([3, 4], np.int64), 0.1, 0.0, 0.0).numpy()
    moved = 0
    for img in out:
        y0, y1, x0, x1 = _bbox(img)
        # a pure shift keeps the 8x8 box (bilinear sub-pixel shifts may add a row)
        assert y1 - y0 in (7, 8) and x1 - x0 in (7, 8)
        assert abs(y0 - 20) <= 5 and abs(x0 - 10) <= 5  # 0.1 * 48 = 4.8 px
        moved += (y0, x0) != (20, 10)
    assert moved > 48  # almost every image moves


def test_small_rotation_keeps_a_centred_face_centred() -> None:
    x = np.zeros((1, 48, 48, 1), np.float32)
    x[0, 16:32, 16:32] = 255.0
    out = _affine(x, np.array([0, 1], np.int64), 0.0, 5.0, 0.0).numpy()
    assert abs(out.sum() - x.sum()) / x.sum() < 0.1  # rotation keeps the mass
    assert out[0, 24, 24, 0] == pytest.approx(255.0)


def test_augmented_batches_repeat_for_the_same_seed_and_differ_across_epochs() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (96, 48, 48), dtype=np.uint8)
    labels = np.arange(96) % 7
    kw = dict(batch_size=32, seed=0, augment=True, shift=0.1, rotate=10.0, zoom=0.1)

    def run(first, last):
        ds, steps = train_dataset(imgs, labels, first_epoch=first, last_epoch=last, **kw)
        return [b[0].numpy() for b in ds]

    a, b = run(0, 2), run(0, 2)
    assert len(a) == 6 and all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(np.array_equal(p, q) for p, q in zip(a[3:], run(1, 2), strict=True))  # resume
    assert not np.array_equal(a[0], a[3])
    assert min(x.min() for x in a) >= 0.0 and max(x.max() for x in a) <= 255.0


def test_geometric_augmentation_changes_pixels_but_not_labels() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (32, 48, 48), dtype=np.uint8)
    labels = np.arange(32) % 7
    common = dict(batch_size=32, first_epoch=0, last_epoch=1, seed=0, augment=True)
    ((xa, ya),) = list(train_dataset(imgs, labels, **common)[0])
    ((xb, yb),) = list(train_dataset(imgs, labels, shift=0.1, rotate=10.0, **common)[0])
    np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert np.abs(xa.numpy() - xb.numpy()).mean() > 5.0


def test_mixup_blends_faces_and_labels_with_one_weight() -> None:
    # constant faces (class c has grey level 30 * c), so a blend's weight can be read off
    # the pixels; no other augmentation (the _mixup helper alone)
    import tensorflow as tf

    from fer_tasks.lib.data import _mixup

    labels = np.arange(64) % 7
    x = np.broadcast_to((30.0 * labels)[:, None, None, None], (64, 48, 48, 1)).astype(np.float32)
    y = np.eye(7, dtype=np.float32)[labels]
    seed = np.array([2, 5], np.int64)
    mx, my = (t.numpy() for t in _mixup(tf.constant(x), tf.constant(y), seed, 0.4))
    mx2, _ = (t.numpy() for t in _mixup(tf.constant(x), tf.constant(y), seed, 0.4))
    np.testing.assert_array_equal(mx, mx2)  # stateless: same seed, same batch
    np.testing.assert_allclose(my.sum(1), 1.0, rtol=1e-6)
    prev = np.roll(labels, 1)
    for i in range(64):
        if labels[i] == prev[i]:
            continue
        lam = my[i, labels[i]]
        # the pixel blend uses the label weight: lam * own + (1 - lam) * previous face
        assert mx[i, 0, 0, 0] == pytest.approx(30.0 * (lam * labels[i] + (1 - lam) * prev[i]))
        assert my[i, prev[i]] == pytest.approx(1 - lam, abs=1e-6)
    assert ((my > 0.05) & (my < 0.95)).any(axis=1).mean() > 0.3  # most labels really blend


def test_mixup_is_off_without_augment_and_on_with_it() -> None:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 255, (32, 48, 48), dtype=np.uint8)
    labels = np.arange(32) % 7
    common = dict(batch_size=32, first_epoch=0, last_epoch=1, seed=0, mixup=0.4)
    ((_, y_off),) = list(train_dataset(imgs, labels, augment=False, **common)[0])
    ((_, y_on),) = list(train_dataset(imgs, labels, augment=True, **common)[0])

    def one_hot(y):  # rows are one-hot (the batch order is shuffled)
        return set(np.unique(y)) <= {0.0, 1.0} and np.all(y.sum(1) == 1.0)

    assert one_hot(y_off.numpy()) and not one_hot(y_on.numpy())
