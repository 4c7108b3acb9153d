"""Overlays: the shipped ones are valid and say what they promise; keys are checked;
`-S key=value` parses into an overlay and back into what `dvc exp run -S` applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from fer_tasks.lib import overlay
from fer_tasks.lib.params import ParamsError, read_yaml
from fer_tasks.tools.preset import preset_params

ROOT = Path(__file__).resolve().parents[1]
BASE = read_yaml((ROOT / "params.yaml").read_text())


def _load(name: str):
    return preset_params(name, ROOT / "params.yaml")


def test_presets_and_write_up_configurations_ship_in_one_folder() -> None:
    names = overlay.available()
    assert names[:5] == list(overlay.WRITEUP)
    assert {"fer2013-cpu", "fer2013-gpu"} <= set(names)
    assert all(overlay.describe(n) for n in names)  # each says what it is for


@pytest.mark.parametrize("name", overlay.available())
def test_overlay_is_valid_with_one_chain(name: str) -> None:
    p = _load(name)
    order = p.finetune.order()
    assert order[-1] == p.finetune.final
    # one chain from base to final: every phase continues the previous one
    assert [p.finetune.phases[n].after for n in order] == ["base", *order[:-1]]


def test_gpu_preset_is_larger_longer_and_mixed() -> None:
    cpu, gpu = (_load(f"fer2013-{k}") for k in ("cpu", "gpu"))
    assert gpu.model.input_size > cpu.model.input_size
    assert gpu.model.precision == "mixed_float16" and cpu.model.precision == "float32"

    def total(p):
        return sum(ph.epochs for ph in p.finetune.phases.values())

    assert total(gpu) > total(cpu)


def test_fer_preset_writes_a_valid_merged_params_file(tmp_path: Path, capsys) -> None:
    from fer_tasks.cli import main
    from fer_tasks.lib.params import load_params

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


def test_a_key_params_yaml_lacks_is_refused_with_its_path() -> None:
    with pytest.raises(ParamsError, match=r"svm\.CC: not a params key"):
        overlay.check_keys({"svm": {"CC": 1}}, "x.yaml")
    with pytest.raises(ParamsError, match=r"finetune\.phases\.top\.epochz: not a params key"):
        overlay.check_keys({"finetune": {"phases": {"top": {"epochz": 1}}}}, "x.yaml")
    overlay.check_keys({"svm": {"C": 1}, "finetune": {"phases": {"top": {"epochs": 2}}}}, "ok")


def test_apply_merges_sections_but_replaces_the_phase_chain() -> None:
    over = {"svm": {"C": 0.5}, "finetune": {"phases": {"one": {"after": "base"}}, "final": "one"}}
    merged = overlay.apply(BASE, over)
    assert merged["svm"]["C"] == 0.5 and merged["svm"]["kernel"] == BASE["svm"]["kernel"]
    assert list(merged["finetune"]["phases"]) == ["one"]
    assert overlay.changes(BASE, merged)[0].startswith("svm.C: ")


def test_set_strings_parse_to_an_overlay_with_yaml_values() -> None:
    over = overlay.parse_set(["svm.C=0.5", "params.yaml:rebalance.seed=3", "model.weights=null"])
    assert over == {"svm": {"C": 0.5}, "rebalance": {"seed": 3}, "model": {"weights": None}}
    for bad in ("svm.C", "+svm.C=1", "~svm", "=1"):
        with pytest.raises(ParamsError, match="expected key=value"):
            overlay.parse_set([bad])
    with pytest.raises(ParamsError, match="svm.CC: not a params key"):
        overlay.parse_set(["svm.CC=1"])


def test_fast_cpu_preset_is_the_cpu_preset_at_80px_with_fourteen_epochs() -> None:
    """fer2013-cpu-fast is the configuration measured in docs/results.md: fer2013-cpu
    with these three keys changed and nothing else (a drift would orphan its figures);
    both apply the 2 px centre crop chosen on val."""
    cpu, fast = (_load(n).model_dump() for n in ("fer2013-cpu", "fer2013-cpu-fast"))
    assert fast["calibrate"]["center_crop"] == cpu["calibrate"]["center_crop"] == 2
    assert fast["model"]["input_size"] == 80 and cpu["model"]["input_size"] == 96
    for key, value in (("epochs", 14), ("lr_horizon", 14)):
        assert fast["finetune"]["phases"]["all"][key] == value
        fast["finetune"]["phases"]["all"][key] = cpu["finetune"]["phases"]["all"][key]
    fast["model"]["input_size"] = cpu["model"]["input_size"]
    assert fast == cpu
