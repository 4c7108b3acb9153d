"""`backbone` stage: resolve the pretrained weights once and save the feature extractor.

DVC caches the output, so later stages load a local `.keras` file and never
touch the network or the weight sources again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from fer_tasks.lib.backbones import build_backbone
from fer_tasks.lib.io import atomic_path, save_model
from fer_tasks.lib.params import ModelParams

log = logging.getLogger(__name__)

# `model.weights: none` starts from random weights; drawn from a fixed seed, they are
# the same in every process, so the output is too (a rerun, DVC's run-cache, `fer
# compare`'s EFN_base_init run serially or through the queue). Pretrained weights
# replace every one of them, so their backbone does not depend on it.
SEED = 0


def resolve_backbone(out_path: Path, params: ModelParams) -> dict:
    """Build the backbone for `params` with its weights and save it to `out_path` (.keras)."""
    keras.utils.set_random_seed(SEED)
    model = build_backbone(params)
    with atomic_path(out_path) as tmp:
        save_model(model, tmp)
    log.info("saved %s (%d parameters) to %s", model.name, model.count_params(), out_path)
    return {
        "backbone": params.backbone,
        "parameters": int(model.count_params()),
        "features": int(model.output.shape[-1]),
    }
