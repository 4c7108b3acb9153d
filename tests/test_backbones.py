import subprocess
import sys
import time

import pytest

from fer_tasks.lib.params import BaseModelParams, ModelParams


@pytest.mark.slow
def test_b0_write_up_layer_counts():
    """6 / 19 / 78 layers from the end are block-top / block 7 / block 6 of EfficientNetB0."""
    from fer_tasks.lib.backbones import build_backbone
    from fer_tasks.lib.model import build_model

    model = build_model(
        build_backbone(ModelParams(backbone="efficientnet_b0", weights="none")), BaseModelParams()
    )
    names = [layer.name for layer in model.layers]
    assert names[-6] == "top_conv"
    assert names[-19].startswith("block7a") and not names[-20].startswith("block7")
    assert names[-78].startswith("block6a") and not names[-79].startswith("block6")


@pytest.mark.slow
def test_lite0_blocks_named_like_b0():
    from fer_tasks.lib.backbones import build_backbone
    from fer_tasks.lib.model import build_model, unfreeze_model

    model = build_model(build_backbone(ModelParams()), BaseModelParams())
    assert unfreeze_model(model, "block7") > 0
    assert model.get_layer("block7a_project_conv").trainable
    assert not model.get_layer("block6d_project_conv").trainable
    assert not model.get_layer("block7a_project_bn").trainable


def test_b0_imagenet_offline_fails_fast_with_remedy(tmp_path):
    """No cached file and no network: a clear error within seconds, naming the cache path."""
    code = (
        "from fer_tasks.lib.backbones import build_backbone, BackboneError\n"
        "from fer_tasks.lib.params import ModelParams\n"
        "try:\n"
        "    build_backbone(ModelParams(backbone='efficientnet_b0', weights='imagenet'))\n"
        "except BackboneError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {
        "KERAS_HOME": str(tmp_path / "keras"),
        "PATH": "/usr/bin:/bin",
        # an unreachable proxy: every HTTP(S) request is refused at once
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(tmp_path / "keras" / "models" / "efficientnetb0_notop.h5") in r.stdout
    assert "efficientnet_lite0" in r.stdout  # the offline alternative is named
    assert elapsed < 60, (
        f"took {elapsed:.0f} s"
    )  # import of TF included; the failure itself is fast


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_b0"])
@pytest.mark.parametrize("size", [48, 96])
def test_base_layer_counts_that_validation_uses(backbone, size):
    """params.BASE_LAYERS lets `fer validate` check an unfreeze count without TensorFlow."""
    from fer_tasks.lib.backbones import build_backbone
    from fer_tasks.lib.model import build_model
    from fer_tasks.lib.params import BASE_LAYERS

    p = ModelParams(backbone=backbone, weights="none", input_size=size)
    model = build_model(build_backbone(p), BaseModelParams())
    assert len(model.layers) == BASE_LAYERS[backbone] + (size != 48)


@pytest.mark.slow
def test_a_random_backbone_is_the_same_in_every_process(tmp_path):
    """model.weights: none: the stage seeds the random weights, so two processes write the
    same file (fer compare's EFN_base_init: the same values run serially or queued)."""
    import os
    from pathlib import Path

    code = (
        "import sys; from pathlib import Path; from fer_tasks.lib.params import ModelParams\n"
        "from fer_tasks.stages.backbone import resolve_backbone\n"
        "resolve_backbone(Path(sys.argv[1]), ModelParams(weights='none'))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    for i in (1, 2):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"{i}.keras")], check=True, env=env
        )
    assert (tmp_path / "1.keras").read_bytes() == (tmp_path / "2.keras").read_bytes()
