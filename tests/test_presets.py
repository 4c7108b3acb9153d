"""The shipped presets are valid overlays of params.yaml and say what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fer_tasks.compare import merge_params
from fer_tasks.params import parse_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "fer_tasks" / "presets").glob("*.yaml"))


def _load(path: Path):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return parse_params(merge_params(base, yaml.safe_load(path.read_text())), path)


def test_both_presets_ship() -> None:
    assert {p.stem for p in PRESETS} >= {"fer2013-cpu", "fer2013-gpu"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_valid_overlay_with_one_chain(path: Path) -> None:
    p = _load(path)
    order = p.finetune.order()
    assert order[-1] == p.finetune.final
    # one chain from base to final: every phase continues the previous one
    assert [p.finetune.phases[n].after for n in order] == ["base", *order[:-1]]


def test_gpu_preset_is_larger_longer_and_mixed() -> None:
    cpu, gpu = (_load(ROOT / "fer_tasks" / "presets" / f"fer2013-{k}.yaml") for k in ("cpu", "gpu"))
    assert gpu.model.input_size > cpu.model.input_size
    assert gpu.model.precision == "mixed_float16" and cpu.model.precision == "float32"

    def total(p):
        return sum(ph.epochs for ph in p.finetune.phases.values())

    assert total(gpu) > total(cpu)
