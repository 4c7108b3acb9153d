"""`backbone` stage: resolve the pretrained weights once and save the feature extractor.

DVC caches the output, so later stages load a local `.keras` file and never
touch the network or the weight sources again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fer_tasks.lib.backbones import build_backbone
from fer_tasks.lib.io import atomic_path, save_model
from fer_tasks.lib.params import ModelParams

log = logging.getLogger(__name__)


def resolve_backbone(out_path: Path, params: ModelParams) -> dict:
    """Build the backbone for `params` with its weights and save it to `out_path` (.keras)."""
    model = build_backbone(params)
    with atomic_path(out_path) as tmp:
        save_model(model, tmp)
    log.info("saved %s (%d parameters) to %s", model.name, model.count_params(), out_path)
    return {
        "backbone": params.backbone,
        "parameters": int(model.count_params()),
        "features": int(model.output.shape[-1]),
    }
