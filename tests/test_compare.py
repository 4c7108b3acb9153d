"""`fer compare`: the write-up's configurations as DVC experiments, and the comparison report."""

import csv
import json
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
    assert args.jobs == 1 and args.queue_timeout == compare.QUEUE_TIMEOUT_H
    assert _parser().parse_args(["compare", "--jobs", "2"]).jobs == 2
    with pytest.raises(compare.InputError, match="--jobs 0"):
        compare.compare(ROOT / "params.yaml", jobs=0, dry_run=True)


def test_dry_run_prints_one_dvc_command_per_configuration(capsys):
    assert compare.compare(ROOT / "params.yaml", epochs_scale=0.1, dry_run=True) == []
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 5 and all(c.startswith("dvc exp run --temp -n EFN_") for c in cmds)
    assert "'~finetune.phases'" in cmds[0] and cmds[0].endswith(" evaluate")


def test_dry_run_with_jobs_prints_queue_commands(capsys):
    compare.compare(ROOT / "params.yaml", ["EFN_base"], 0.1, dry_run=True, jobs=2)
    cmds = capsys.readouterr().out.strip().splitlines()
    assert cmds[0].startswith("dvc exp run --queue -n EFN_base ") and "--temp" not in cmds[0]
    assert cmds[1] == "dvc queue start --jobs 2"


# --- --jobs N: the queue loop against a scripted DVC queue (no DVC runs) ----------------------


class _FakeQueue:
    """dvc_adapter's queue functions over a script of `dvc queue status` answers."""

    def __init__(self, script: list[dict[str, str]], before: dict[str, str] | None = None):
        self.before = before or {}
        self.script = script  # one {name: status} per poll
        self.polls = -1  # -1: before queueing; 0: right after it
        self.queued: list[str] = []
        self.calls: list[tuple] = []

    def status(self, root):
        if self.polls < 0 and not self.queued:
            rows = self.before
        else:
            self.polls += 1
            rows = self.script[min(self.polls - 1, len(self.script) - 1)] if self.polls else {}
            rows = {**self.before, **{n: rows.get(n, "Queued") for n in self.queued}}
        return [dvc_adapter.QueueTask(self.task(n), n, st) for n, st in rows.items()]

    def task(self, name: str) -> str:
        return f"{abs(hash(name)) % 16**7:07x}" if name in self.queued else "aaaaaaa"

    def dvc(self, root, *args):
        self.calls.append(args)
        if args[:3] == ("exp", "run", "--queue"):
            name = args[args.index("-n") + 1]
            if name == "EFN_nope":
                raise dvc_adapter.DvcError("`dvc exp run --queue` exited 1: no")
            self.queued.append(name)
        return ""


class _FakeFollower:
    def __init__(self, root, task, *, on_line=None, log_path=None):
        self.proc = type("P", (), {"returncode": 0})()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("Running stage 'phase@all':\n")

    def running(self):
        return False

    def wait(self, timeout=None):
        return True

    def stop(self):
        pass

    def result(self):
        return dvc_adapter.RunResult(rc=0, wall_s=12.0, stages={"base": 2.0, "phase@all": 10.0})


@pytest.fixture
def fake_queue(monkeypatch):
    def make(script, before=None):
        q = _FakeQueue(script, before)
        monkeypatch.setattr(dvc_adapter, "queue_status", q.status)
        monkeypatch.setattr(dvc_adapter, "dvc", q.dvc)
        monkeypatch.setattr(dvc_adapter, "git", lambda root, *a: "ab" * 20)
        monkeypatch.setattr(
            dvc_adapter, "queue_start", lambda root, j, environ=None: q.calls.append(("start", j))
        )
        monkeypatch.setattr(dvc_adapter, "queue_logs", lambda root, t: f"log of {t}\n")
        monkeypatch.setattr(
            dvc_adapter, "queue_kill", lambda root, ts: q.calls.append(("kill", *ts))
        )
        monkeypatch.setattr(
            dvc_adapter, "queue_remove", lambda root, ts: q.calls.append(("rm", *ts))
        )
        monkeypatch.setattr(dvc_adapter, "QueueFollower", _FakeFollower)
        monkeypatch.setattr(compare, "remove_previous", lambda root, b, n: None)
        return q

    return make


def _resolved(*names: str) -> dict:
    return {n: overlay.resolve(BASE, n, 0.1) for n in names}


def test_queued_runs_report_success_and_failure_as_they_finish(tmp_path, fake_queue, capsys):
    q = fake_queue(
        [
            {"EFN_base": "Running"},
            {"EFN_base": "Running", "EFN_2StepsToAll": "Running"},
            {"EFN_base": "Success", "EFN_2StepsToAll": "Running"},
            {"EFN_base": "Success", "EFN_2StepsToAll": "Failed"},
        ],
        before={"EFN_base": "Success"},  # an earlier run's task: done, so no obstacle
    )
    done: dict[str, dict] = {}
    total = compare.run_queued(
        tmp_path, _resolved("EFN_base", "EFN_2StepsToAll"), "evaluate", tmp_path / "logs", 2,
        lambda n, run: done.setdefault(n, run), poll_s=0,
    )  # fmt: skip
    assert list(done) == ["EFN_base", "EFN_2StepsToAll"] and total >= 0
    assert ("start", 2) in q.calls
    queued = [c for c in q.calls if c[:3] == ("exp", "run", "--queue")]
    assert [c[c.index("-n") + 1] for c in queued] == ["EFN_base", "EFN_2StepsToAll"]
    assert all(c[-1] == "evaluate" and "--temp" not in c for c in queued)
    ok, bad = done["EFN_base"], done["EFN_2StepsToAll"]
    assert ok["rc"] == 0 and ok["queue_status"] == "Success"
    assert ok["wall_s"] == 12.0 and ok["train_s"] == 10.0 and ok["baseline"] == "ab" * 20
    assert bad["rc"] == 1 and bad["queue_status"] == "Failed"
    log = (tmp_path / "logs" / "EFN_2StepsToAll.log").read_text()
    assert log.startswith(f"$ dvc queue logs {q.task('EFN_2StepsToAll')}  # Failed")
    out = capsys.readouterr().out
    assert "[EFN_base] Success: 12 s (1 of 2 done" in out and "(2 of 2 done" in out
    rec = {
        "config": "EFN_2StepsToAll",
        "overrides": _resolved("EFN_2StepsToAll")["EFN_2StepsToAll"],
    }
    row, _ = compare._row(tmp_path, BASE, {**rec, **bad})
    assert row["status"] == "failed (dvc queue: Failed, logs/EFN_2StepsToAll.log)"


def test_queued_refuses_names_already_waiting_in_the_queue(tmp_path, fake_queue):
    fake_queue([], before={"EFN_base": "Running"})
    with pytest.raises(compare.InputError, match="already in DVC's queue.*EFN_base"):
        compare.run_queued(
            tmp_path, _resolved("EFN_base"), "evaluate", tmp_path, 2, lambda *a: None, poll_s=0
        )


def test_queued_timeout_kills_running_and_removes_queued(tmp_path, fake_queue):
    q = fake_queue([{"EFN_base": "Running", "EFN_2StepsToAll": "Queued"}])
    done: dict[str, dict] = {}
    compare.run_queued(
        tmp_path, _resolved("EFN_base", "EFN_2StepsToAll"), "final", tmp_path / "logs", 2,
        lambda n, run: done.setdefault(n, run), timeout_s=0, poll_s=0,
    )  # fmt: skip
    assert ("kill", q.task("EFN_base")) in q.calls and ("rm", q.task("EFN_2StepsToAll")) in q.calls
    assert {n: r["queue_status"] for n, r in done.items()} == dict.fromkeys(done, "timed out")
    assert "timed out" in (tmp_path / "logs" / "EFN_base.log").read_text()


# --- end to end: two configurations as DVC experiments in a tiny temporary project ------------

TINY = {"synthesize": {"n_samples": 420}, "svm": {"max_iter": 500, "pca_components": 64}}


ARGS = (
    "--configs", "EFN_base", "EFN_2StepsToBlock7",
    "--epochs-scale", "0.05",
    "--phase-set", "steps_per_epoch=2",
    "--target", "final",
)  # fmt: skip
# --target final: train the phases only (no features/SVM/evaluate) to stay quick
SAME = ("config", "phases", "epochs", "val_accuracy", "val_loss", "val_macro_f1",
        "max_class_share", "collapsed", "test_accuracy")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    """A tiny project and `fer compare` of two configurations in it, one after the other."""
    repo = tmp_path_factory.mktemp("compare") / "project"
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
    run(sys.executable, "-m", "fer_tasks", "compare", *ARGS)
    out = repo / "reports" / "compare"
    table = {r["config"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    return repo, run, table


@pytest.mark.slow
def test_fer_compare_end_to_end(tiny_compare):
    repo, run, table = tiny_compare
    out = repo / "reports" / "compare"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
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


@pytest.mark.slow
def test_fer_compare_jobs_2_through_dvc_queue_gives_the_serial_values(tiny_compare):
    """--jobs 2: both configurations queued and run at once, the same table values."""
    repo, run, serial = tiny_compare
    before = {
        r.rsplit("/", 1)[1]: r
        for r in run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
        if not r.startswith("refs/exps/celery")
    }
    r = run(sys.executable, "-m", "fer_tasks", "compare", *ARGS, "--jobs", "2", "--out", "q")
    out = repo / "q"
    queued = {r["config"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert list(queued) == list(serial)
    for n, row in queued.items():
        assert row["status"].startswith(f"ok (exp {n}, "), row
        assert {k: row[k] for k in SAME} == {k: serial[n][k] for k in SAME}, n
        assert float(row["wall_s"]) >= float(row["train_s"]) > 0  # from the followed log
        log = (out / "logs" / f"{n}.log").read_text()
        assert log.startswith("$ dvc queue logs ") and "Running stage 'phase@" in log
        assert json.loads((out / "runs" / f"{n}.json").read_text())["queue_status"] == "Success"
    assert "1 of 2 done" in r.stdout and "2 of 2 done" in r.stdout
    assert "dvc queue start --jobs 2" in (out / "comparison.md").read_text()
    refs = run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
    after = {r.rsplit("/", 1)[1]: r for r in refs if not r.startswith("refs/exps/celery")}
    assert after.keys() == before.keys() == set(serial)  # the same names, replaced
    assert yaml.safe_load((repo / "params.yaml").read_text()) == overlay.apply(BASE, TINY)
