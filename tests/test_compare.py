"""`fer compare`: the write-up's configurations as DVC experiments, and the comparison report."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_tasks.lib import dvc_adapter, overlay
from fer_tasks.lib.params import parse_params
from fer_tasks.tools import compare, compare_report

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
WRITE_UP = ["EFN_base_init", "EFN_base", "EFN_2StepsToBlock7", "EFN_2StepsToAll", "EFN_3StepsToAll"]


def _total(ft: dict) -> int:
    return sum(p["epochs"] for p in ft["phases"].values())


def test_the_five_configurations_ship_in_write_up_order():
    assert overlay.available()[:5] == WRITE_UP


@pytest.mark.parametrize("name", WRITE_UP)
def test_each_configuration_merges_into_params_yaml_and_validates(name):
    over = overlay.load(name)
    assert set(over) <= {"model", "finetune"}, "only the keys that differ"
    p = parse_params(overlay.apply(BASE, over))
    assert set(p.finetune.phases) == set(over["finetune"]["phases"]), "phases replaced, not merged"
    chain = p.finetune.order()
    assert chain[-1] == p.finetune.final
    assert (
        p.finetune.start_epoch(p.finetune.final) + p.finetune.phases[p.finetune.final].epochs == 30
    )
    assert all(ph.on_collapse == "warn" for ph in p.finetune.phases.values())
    units = [p.finetune.phases[n].unfreeze for n in chain]
    expected = {
        "EFN_base_init": ["all"],
        "EFN_base": ["all"],
        "EFN_2StepsToBlock7": ["top", "block7"],
        "EFN_2StepsToAll": ["top", "all"],
        "EFN_3StepsToAll": ["top", "block7", "all"],
    }[name]
    assert units == expected
    if name == "EFN_base_init":
        assert p.model.weights == "none" and p.finetune.phases["all"].unfreeze_bn
    else:
        assert p.model.weights == "imagenet"
        assert not any(ph.unfreeze_bn for ph in p.finetune.phases.values())


@pytest.mark.parametrize(
    ("factor", "totals"),
    [(1.0, [30] * 5), (0.1, [3] * 5), (0.05, [2, 2, 2, 2, 3]), (0.01, [1, 1, 2, 2, 3])],
)
def test_epochs_scale_keeps_the_budget_and_at_least_one_epoch(factor, totals):
    got = []
    for name in WRITE_UP:
        over = overlay.resolve(BASE, name, factor, {"steps_per_epoch": 2})
        parse_params(overlay.apply(BASE, over))
        assert all(
            p["epochs"] >= 1 and p["steps_per_epoch"] == 2
            for p in over["finetune"]["phases"].values()
        )
        got.append(_total(over["finetune"]))
    assert got == totals


def test_bad_phase_set_and_bad_scale_and_unknown_config_fail_early():
    with pytest.raises(ValueError, match="phase params"):
        overlay.parse_phase_set(["stepz=2"])
    with pytest.raises(ValueError, match="epochs-scale"):
        overlay.resolve(BASE, "EFN_base", 0.0)
    with pytest.raises(ValueError, match="overlay .EFN_nope. not found"):
        overlay.load("EFN_nope")
    with pytest.raises(ValueError, match="epochs"):
        overlay.resolve(BASE, "EFN_base", 1.0, overlay.parse_phase_set(["epochs=0"]))


@pytest.mark.parametrize("name", WRITE_UP)
def test_set_params_args_make_dvc_write_exactly_the_merged_params(tmp_path, name):
    """`dvc exp run -S` as DVC applies it: the phase mapping is replaced, the rest kept."""
    from dvc.utils.hydra import apply_overrides

    over = overlay.resolve(BASE, name, 0.1, {"steps_per_epoch": 2})
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, overlay.to_set_params(over))
    assert yaml.safe_load(path.read_text()) == overlay.apply(BASE, over)


@pytest.mark.parametrize("value", ['a"b', "c\\d", "e\\", 'f\\"g', "it's", "none", "1e-3", "true"])
def test_hydra_strings_round_trip(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={overlay._hydra(value)}").value()
    assert parsed == value


def test_stage_seconds_from_dvc_output():
    lines = [
        (0.0, "Stage 'synthesize' is cached - skipping run, checking out outputs\n"),
        (1.0, "Running stage 'base':\n"),
        (4.0, "Updating lock file 'dvc.lock'\n"),
        (5.0, "Running stage 'phase@top':\n"),
        (15.0, "Epoch 1/1\n"),
        (25.0, "Updating lock file 'dvc.lock'\n"),
        (26.0, "Running stage 'phase@all':\n"),
    ]
    assert dvc_adapter.stage_seconds(lines, end=36.0) == {
        "base": 3.0,
        "phase@top": 20.0,
        "phase@all": 10.0,
    }


def _fake_history(phases: list[tuple[str, int]], seed: float) -> list[dict]:
    rows, epoch = [], 0
    for phase, n in phases:
        for _ in range(n):
            epoch += 1
            rows.append(
                {
                    "epoch": epoch,
                    "phase": phase,
                    "val_loss": 2.0 / epoch + seed,
                    "val_accuracy": 0.2 + 0.02 * epoch - seed,
                }
            )
    return rows


def test_write_comparison_table_and_curves(tmp_path):
    curves = {
        "EFN_base": _fake_history([("all", 6)], 0.0),
        "EFN_3StepsToAll": _fake_history([("top", 2), ("block7", 2), ("all", 2)], 0.05),
    }
    rows = [
        {
            "config": name,
            "phases": "x",
            "epochs": 6,
            "val_accuracy": 0.3,
            "val_loss": 1.5,
            "val_macro_f1": 0.25,
            "max_class_share": 0.95 if name == "EFN_3StepsToAll" else 0.4,
            "collapsed": "all (95%)" if name == "EFN_3StepsToAll" else "no",
            "test_accuracy": None,
            "wall_s": 12.3,
            "train_s": 10.0,
            "status": "ok",
        }
        for name in curves
    ] + [{"config": "EFN_base_init", "wall_s": 3.0, "status": "failed (rc 1)"}]
    paths = compare_report.write_comparison(rows, curves, tmp_path / "out", ["a note"])
    assert (
        paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and paths["png"].stat().st_size > 10_000
    )
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["config"] for r in table] == ["EFN_base", "EFN_3StepsToAll", "EFN_base_init"]
    assert table[1]["collapsed"] == "all (95%)" and table[2]["val_accuracy"] == ""
    md = paths["md"].read_text()
    assert "a note" in md
    md_rows = [line for line in md.splitlines() if line.startswith("| EFN_")]
    assert len(md_rows) == 3 and "| 0.3000 | 1.5000 | 0.2500 |" in md_rows[0]
    assert "failed (rc 1)" in md_rows[2]


def test_cli_has_compare():
    from fer_tasks.cli import _parser

    args = _parser().parse_args(["compare", "--configs", "EFN_base", "--epochs-scale", "0.1"])
    assert args.configs == ["EFN_base"] and args.epochs_scale == 0.1


def test_dry_run_prints_one_dvc_command_per_configuration(capsys):
    assert compare.compare(ROOT / "params.yaml", epochs_scale=0.1, dry_run=True) == []
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 5 and all(c.startswith("dvc exp run --temp -n EFN_") for c in cmds)
    assert "'~finetune.phases'" in cmds[0] and cmds[0].endswith(" evaluate")


# --- end to end: two configurations as DVC experiments in a tiny temporary project ------------

TINY = {"synthesize": {"n_samples": 420}, "svm": {"max_iter": 500, "pca_components": 64}}


@pytest.mark.slow
def test_fer_compare_end_to_end(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(
        ROOT / "fer_tasks", repo / "fer_tasks", ignore=shutil.ignore_patterns("__pycache__")
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(overlay.apply(BASE, TINY), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{args}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return r

    run("git", "init", "-q")
    run("git", "config", "user.name", "test")
    run("git", "config", "user.email", "test@example.com")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "tiny project")

    # --target final: train the phases only (no features/SVM/evaluate) to stay quick
    run(
        sys.executable, "-m", "fer_tasks", "compare",
        "--configs", "EFN_base", "EFN_2StepsToBlock7",
        "--epochs-scale", "0.05",
        "--phase-set", "steps_per_epoch=2",
        "--target", "final",
    )  # fmt: skip

    out = repo / "reports" / "compare"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    table = {r["config"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert list(table) == ["EFN_base", "EFN_2StepsToBlock7"]
    for r in table.values():
        assert r["status"].startswith("ok"), r
        assert r["epochs"] == "2"  # 30 * 0.05, rounded; 15 + 15 -> 1 + 1
        assert 0.0 <= float(r["val_accuracy"]) <= 1.0 and float(r["val_loss"]) > 0
        assert float(r["wall_s"]) >= float(r["train_s"]) > 0
    assert table["EFN_2StepsToBlock7"]["phases"] == "top:1 -> block7:1"
    md = (out / "comparison.md").read_text()
    assert "| EFN_base |" in md and "| EFN_2StepsToBlock7 |" in md
    refs = run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
    assert sorted(r.rsplit("/", 1)[1] for r in refs) == ["EFN_2StepsToBlock7", "EFN_base"]
    assert yaml.safe_load((repo / "params.yaml").read_text()) == overlay.apply(BASE, TINY)

    # the report rebuilds from the recorded runs and the experiment commits alone
    (out / "comparison.csv").unlink()
    (out / "curves.png").unlink()
    run(sys.executable, "-m", "fer_tasks", "compare", "--report-only",
        "--configs", "EFN_base", "EFN_2StepsToBlock7")  # fmt: skip
    again = {r["config"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert again == table
    assert (out / "curves.png").is_file()
