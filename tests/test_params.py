import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_tasks.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.finetune.final in p.finetune.phases
    assert p.model.pooling == "max" and p.base.dropout == 0.2 and p.base.l2_coef == 1e-4


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, lambda d: d["rebalance"].update(methd="x"))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert "rebalance.methd" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("svm", "C", -1),
        ("base", "dropout", 1.5),
        ("model", "input_size", 8),
        ("rebalance", "method", "smote"),
        ("prepare", "on_bad_row", "ignore"),
    ],
)
def test_out_of_range_names_key(tmp_path, section, key, value):
    path = _write(tmp_path, lambda d: d[section].update({key: value}))
    with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
        load_params(path)


def test_phase_chain_checks(tmp_path):
    def bad_after(d):
        d["finetune"]["phases"]["top"]["after"] = "nowhere"

    with pytest.raises(ParamsError, match="unknown phase 'nowhere'"):
        load_params(_write(tmp_path, bad_after))

    def bad_final(d):
        d["finetune"]["final"] = "top"  # top is continued by another phase

    with pytest.raises(ParamsError, match="finetune.final"):
        load_params(_write(tmp_path, bad_final))


def test_phase_order_and_start_epochs():
    p = load_params(ROOT / "params.yaml").finetune
    order = p.order()
    assert order[0] == "top"
    assert p.start_epoch(order[1]) == p.phases["top"].epochs


def test_cli_validate_fails_without_tensorflow(tmp_path):
    path = _write(tmp_path, lambda d: d["rebalance"].update(methd="x"))
    code = (
        "import sys; from fer_tasks.cli import main; rc = main(['validate', '--params', "
        "sys.argv[1]]); assert 'tensorflow' not in sys.modules; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "rebalance.methd: unknown key" in r.stderr and str(path) in r.stderr
