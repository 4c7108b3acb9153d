import keras
import pytest

from fer_tasks.lib.model import HEAD_NAME, build_model, unfreeze_model
from fer_tasks.lib.params import BaseModelParams


@pytest.fixture
def model(tiny_backbone):
    return build_model(keras.saving.load_model(tiny_backbone), BaseModelParams())


def test_build_model_is_the_write_up_head(model):
    head = model.get_layer(HEAD_NAME)
    assert head.activation.__name__ == "softmax" and head.units == 7
    assert model.layers[-2].rate == 0.2
    assert abs(float(head.kernel_regularizer.l2) - 1e-4) < 1e-12
    # only the head trains at first
    assert [w.path for w in model.trainable_weights] == [w.path for w in head.trainable_weights]


def test_unfreeze_count_includes_head_and_skips_batchnorm(model):
    # last 5 layers: top_conv, top_bn, max_pool, head_dropout, main_output
    unfreeze_model(model, 5)
    assert model.get_layer("top_conv").trainable
    assert not model.get_layer("top_bn").trainable
    assert not model.get_layer("block2a_conv").trainable


def test_unfreeze_block_names(model):
    unfreeze_model(model, "block2")
    assert model.get_layer("block2a_conv").trainable
    assert not model.get_layer("block1a_conv").trainable
    unfreeze_model(model, "all", unfreeze_bn=True)
    assert all(layer.trainable for layer in model.layers)


def test_unfreeze_unknown_block_raises(model):
    with pytest.raises(ValueError, match="block9"):
        unfreeze_model(model, "block9")
    with pytest.raises(ValueError, match="only"):
        unfreeze_model(model, 500)


def test_label_smoothing_softens_the_targets(model):
    import numpy as np

    from fer_tasks.lib.model import compile_model

    x = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 7, 7)
    head = model.get_layer(HEAD_NAME)  # a skewed head, so that soft and hard targets differ
    head.bias.assign(np.linspace(-2.0, 2.0, 7).astype("float32"))
    probs = model.predict(x, verbose=0)
    losses = {}
    for s in (0.0, 0.2):
        compile_model(model, 1e-3, label_smoothing=s)
        losses[s] = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    # the same cross-entropy by hand, against (1 - s) * y + s / 7, plus the head's L2 term
    l2 = float(sum(model.losses))
    for s, got in losses.items():
        target = (1 - s) * y + s / 7
        want = float(-(target * np.log(np.clip(probs, 1e-7, 1))).sum(1).mean()) + l2
        assert got == pytest.approx(want, rel=1e-4)
    assert losses[0.2] < losses[0.0] - 0.02  # most faces are not of the favoured class
