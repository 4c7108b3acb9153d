import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_tasks.lib.params import ParamsError, load_params

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


def _edit_text(tmp_path: Path, old: str, new: str) -> Path:
    """params.yaml with one piece of text replaced (keeps line numbers meaningful)."""
    text = (ROOT / "params.yaml").read_text()
    assert old in text, old
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("block9", "'block9' is not a block name"),
        ('"6"', "a layer count is a number, not a string"),
        ("100000", "100000 layers, but the efficientnet_lite0 model has 146"),
        ("0", "must be >= 1"),
    ],
)
def test_bad_unfreeze_of_a_later_phase_fails_before_any_work(tmp_path, value, message):
    path = _edit_text(tmp_path, "unfreeze: block5", f"unfreeze: {value}")
    with pytest.raises(ParamsError, match=message) as e:
        load_params(path)
    line = _line_of(path, f"unfreeze: {value}")
    assert f"line {line}: finetune.phases.block5.unfreeze: " in str(e.value)


def test_valid_unfreeze_values_pass():
    # the other direction: every block name and an in-range count validate
    from fer_tasks.lib.params import BLOCKS, PhaseParams

    for v in (*BLOCKS, "Block7", 6, 19, 146):
        assert PhaseParams(after="base", epochs=1, unfreeze=v).unfreeze == v


def test_duplicate_key_is_refused_with_both_lines(tmp_path):
    path = _edit_text(tmp_path, "      epochs: 6\n", "      epochs: 7\n      epochs: 500\n")
    first = _line_of(path, "epochs: 7")
    with pytest.raises(ParamsError, match="duplicate key 'epochs'") as e:
        load_params(path)
    assert f"first on line {first}, again on line {first + 1}" in str(e.value)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("      epochs: 6\n", "      epochs: true\n", "finetune.phases.block5.epochs"),
        ("  augment: true ", '  augment: "yes" ', "rebalance.augment"),
        ("  C: 0.001", '  C: "0.001"', "svm.C"),
        ("  n_samples: 3500", "  n_samples: 3500.0", "synthesize.n_samples"),
    ],
)
def test_types_are_strict(tmp_path, old, new, key):
    path = _edit_text(tmp_path, old, new)
    with pytest.raises(ParamsError, match=rf"line {_line_of(path, new.strip())}: {key}: "):
        load_params(path)


@pytest.mark.parametrize("key", ["prepare.source", "model.weights"])
def test_required_keys(tmp_path, key):
    section, name = key.split(".")
    path = _write(tmp_path, lambda d: d[section].pop(name))
    with pytest.raises(
        ParamsError, match=rf"{key}: required key missing \(its section starts on line \d+\)"
    ):
        load_params(path)


def test_synthesize_fractions_must_leave_training_rows(tmp_path):
    path = _write(tmp_path, lambda d: d["synthesize"].update(val_fraction=0.6, test_fraction=0.5))
    with pytest.raises(ParamsError, match=r"synthesize: .*val_fraction \+ test_fraction = 1\.1"):
        load_params(path)
    ok = _write(tmp_path, lambda d: d["synthesize"].update(val_fraction=0.4, test_fraction=0.5))
    assert load_params(ok).synthesize.test_fraction == 0.5


def test_exponent_floats_read_as_dvc_reads_them(tmp_path):
    # YAML 1.1 would make `1e-4` a string, which a strict float field refuses
    path = _edit_text(tmp_path, "  l2_coef: 0.0001", "  l2_coef: 1e-4")
    assert load_params(path).base.l2_coef == 1e-4


def test_evaluate_split_is_gone_with_a_reason(tmp_path):
    # the old way to score val as if it were test is refused, saying what replaced it
    path = _edit_text(tmp_path, "  gallery_per_class: 4", "  gallery_per_class: 4\n  split: val")
    line = _line_of(path, "split: val")
    with pytest.raises(
        ParamsError, match=rf"line {line}: evaluate.split: unknown key \(removed: .*prepare\.roles"
    ):
        load_params(path)
    assert load_params(ROOT / "params.yaml").evaluate.gallery_per_class == 4


def test_roles_are_checked(tmp_path):
    path = _edit_text(tmp_path, "    test: auto", "    test: PrivateTst")
    with pytest.raises(
        ParamsError, match=rf"line {_line_of(path, 'PrivateTst')}: prepare.roles.test"
    ):
        load_params(path)
    path = _edit_text(tmp_path, "    val: auto", "    val: PrivateTest")
    assert load_params(path).prepare.roles.val == "PrivateTest"


def test_ema_momentum_needs_use_ema(tmp_path):
    def edit(use_ema):
        def f(d):
            d["finetune"]["phases"]["block5"].update(ema_momentum=0.95)
            if use_ema:
                d["finetune"]["phases"]["block5"]["use_ema"] = True

        return f

    with pytest.raises(ParamsError, match="ema_momentum has no effect without use_ema"):
        load_params(_write(tmp_path, edit(False)))
    phase = load_params(_write(tmp_path, edit(True))).finetune.phases["block5"]
    assert phase.use_ema and phase.ema_momentum == 0.95


def test_calibrate_section_validates(tmp_path):
    p = load_params(ROOT / "params.yaml").calibrate
    assert p.tta_flip is True and p.temperature is True
    with pytest.raises(ParamsError, match="calibrate.tta_flip"):
        load_params(_write(tmp_path, lambda d: d["calibrate"].update(tta_flip="yes")))
    with pytest.raises(ParamsError, match="calibrate.bins: unknown key"):
        load_params(_write(tmp_path, lambda d: d["calibrate"].update(bins=10)))
