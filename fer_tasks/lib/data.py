"""tf.data input pipelines over uint8 split arrays.

Images stay uint8 (N, 48, 48) in memory; batches are gathered, cast to float
(0-255) and augmented on the fly, so nothing the size of the data set ever
exists as float32 at input size. The training order of epoch `e` is a
stateless shuffle seeded by (seed, e): a run resumed at epoch `e` sees exactly
the batches a straight run would.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fer_tasks import NUM_CLASSES


def _affine(images: tf.Tensor, seed: tf.Tensor, shift: float, rotate: float, zoom: float):
    """Random shift (fraction of the side), rotation (degrees) and zoom, one draw per image.

    Builds the inverse maps Keras' RandomRotation/RandomTranslation/RandomZoom
    use and applies them in one `ImageProjectiveTransformV3` (bilinear, edges
    repeated), drawing from stateless RNGs so a batch is a function of its seed.
    """
    n = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)

    def draw(k: int, bound: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n], tf.stack([seed[0], seed[1] * 7 + k]), -bound, bound)

    angle = draw(3, rotate * math.pi / 180.0)
    scale = 1.0 + draw(4, zoom)  # > 1 zooms out, < 1 zooms in (inverse map)
    tx, ty = draw(5, shift) * w, draw(6, shift) * h
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # output (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation and
    # scale about the centre, then the shift
    a2 = cx - cos * cx + sin * cy - tx
    b2 = cy - sin * cx - cos * cy - ty
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def _augment(
    images: tf.Tensor, seed: tf.Tensor, shift: float = 0.0, rotate: float = 0.0, zoom: float = 0.0
) -> tf.Tensor:
    """Label-preserving augmentation: flip, brightness, contrast, and optionally
    random shift / rotation / zoom (`shift`, `rotate`, `zoom` of a phase)."""
    s1, s2, s3 = (tf.stack([seed[0], seed[1] * 3 + k]) for k in range(3))
    x = tf.image.stateless_random_flip_left_right(images, s1)
    if shift or rotate or zoom:
        x = _affine(x, seed, shift, rotate, zoom)
    x = tf.image.stateless_random_brightness(x, 20.0, s2)
    x = tf.image.stateless_random_contrast(x, 0.8, 1.2, s3)
    return tf.clip_by_value(x, 0.0, 255.0)


def _mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float):
    """Mixup (Zhang et al., 2018): each face blended with the next one of its batch.

    The weight of each pair is drawn from Beta(alpha, alpha) (as a ratio of two
    Gamma draws) and the one-hot labels are blended with the same weight. The
    draws are stateless, so a batch stays a function of its seed and a resumed
    phase sees what a straight run would; keras.layers.MixUp draws from a
    stateful generator, which would break that.
    """
    n = tf.shape(images)[0]
    g1, g2 = (
        tf.random.stateless_gamma([n], tf.stack([seed[0], seed[1] * 11 + k]), alpha) for k in (1, 2)
    )
    lam = tf.math.divide_no_nan(g1, g1 + g2)  # both draws can underflow for small alpha

    def blend(t: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return w * t + (1.0 - w) * tf.roll(t, 1, axis=0)

    return blend(images, lam[:, None, None, None]), blend(labels, lam[:, None])


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    first_epoch: int,
    last_epoch: int,
    seed: int,
    augment: bool,
    max_steps: int | None = None,
    shift: float = 0.0,
    rotate: float = 0.0,
    zoom: float = 0.0,
    mixup: float = 0.0,
) -> tuple[tf.data.Dataset, int]:
    """Batches for epochs first_epoch..last_epoch-1 (global numbering) and steps per epoch.

    `max_steps` caps the batches of every epoch (smoke runs); each epoch still
    starts from its own seeded order. `mixup` > 0 (with `augment`) blends pairs of
    faces and their labels, Beta(mixup, mixup) weights.
    """
    n = len(images)
    steps = (
        math.ceil(n / batch_size)
        if max_steps is None
        else min(max_steps, math.ceil(n / batch_size))
    )
    x_all = tf.constant(images[..., None])  # uint8, shared by every epoch
    y_all = tf.constant(labels.astype(np.int32))

    def epoch_indices(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).take(steps)
        # (epoch, step) seeds the augmentation of each batch
        return batches.enumerate().map(lambda step, idx: (idx, tf.stack([epoch, step])))

    def gather(idx: tf.Tensor, bseed: tf.Tensor):
        x = tf.cast(tf.gather(x_all, idx), tf.float32)
        y = tf.one_hot(tf.gather(y_all, idx), NUM_CLASSES)
        if augment:
            x = _augment(x, bseed, shift, rotate, zoom)
            if mixup:
                x, y = _mixup(x, y, bseed, mixup)
        return x, y

    ds = (
        tf.data.Dataset.range(first_epoch, last_epoch)
        .flat_map(epoch_indices)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return ds, steps


def eval_dataset(images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
    """Batches in file order, no augmentation; labels one-hot when given."""
    x_all = tf.constant(images[..., None])
    idx = tf.data.Dataset.range(len(images)).batch(batch_size)
    if labels is None:
        return idx.map(lambda i: tf.cast(tf.gather(x_all, i), tf.float32)).prefetch(2)
    y_all = tf.constant(labels.astype(np.int32))
    return idx.map(
        lambda i: (
            tf.cast(tf.gather(x_all, i), tf.float32),
            tf.one_hot(tf.gather(y_all, i), NUM_CLASSES),
        )
    ).prefetch(2)
