"""The shipped presets are valid overlays of params.yaml and say what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from fer_tasks.preset import preset_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "fer_tasks" / "presets").glob("*.yaml"))


def _load(path: Path):
    return preset_params(path.stem, ROOT / "params.yaml")


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


def test_fer_preset_writes_a_valid_merged_params_file(tmp_path: Path, capsys) -> None:
    from fer_tasks.cli import main
    from fer_tasks.params import load_params

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    rc = main(["preset", "fer2013-cpu", "--params", str(params), "--source", "data/raw/f.csv"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "model.input_size: 48 -> 96" in out
    assert "finetune.phases.block5: removed" in out
    p = load_params(params)
    assert p.model.input_size == 96 and p.prepare.source == "data/raw/f.csv"
    assert p.finetune.order() == ["top", "all"]  # the preset's schedule replaces the old one
    assert p.svm.C == load_params(ROOT / "params.yaml").svm.C  # untouched sections stay


def test_fer_preset_unknown_name_fails_and_leaves_params_alone(tmp_path: Path, capsys) -> None:
    from fer_tasks.cli import main

    params = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    params.write_text(text)
    assert main(["preset", "fer2013-tpu", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "fer2013-tpu" in err and "fer2013-cpu" in err
    assert params.read_text() == text
    assert list(tmp_path.iterdir()) == [params]
