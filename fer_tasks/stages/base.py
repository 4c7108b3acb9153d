"""`base` stage: the write-up's `build_model` on the resolved backbone, saved untrained.

Its directory has the same layout as a phase's (`model.keras`, `state.json`),
so the first phase continues from `base` exactly as later phases continue
from their predecessor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from fer_tasks.lib.io import atomic_group, save_model, write_json
from fer_tasks.lib.model import build_model
from fer_tasks.lib.params import BaseModelParams

log = logging.getLogger(__name__)


def build_base(backbone_path: Path, out_dir: Path, params: BaseModelParams) -> dict:
    """Frozen backbone + Dropout + L2 softmax head, compiled; writes model.keras + state.json."""
    keras.utils.set_random_seed(params.seed)
    backbone = keras.saving.load_model(backbone_path, compile=False, safe_mode=True)
    model = build_model(backbone, params)
    state = {
        "phase": "base",
        "epoch_end": 0,
        "layers": len(model.layers),
        "trainable_weights": len(model.trainable_weights),
        "history": [],
    }
    with atomic_group(out_dir) as tmp:  # the pair a phase reads, published together
        save_model(model, tmp / "model.keras")
        write_json(tmp / "state.json", state)
    log.info(
        "base model: %d layers, %d trainable weights",
        len(model.layers),
        len(model.trainable_weights),
    )
    return state
