"""The DVC adapter against the installed DVC: the pin, and every output format it parses.

fer_tasks/lib/dvc_adapter.py reads DVC's command-line output ("Running stage
'x':", `dvc dag --dot` edges, `dvc status --json`). If a DVC release changes
any of them, these tests fail, naming what moved, before a flow or a
comparison misreads a run.
"""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from fer_tasks.lib import dvc_adapter as dvc

ROOT = Path(__file__).resolve().parents[1]


def test_installed_dvc_is_within_the_pinned_minor_range():
    (pin,) = [
        line.strip().strip('",')
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.strip().startswith('"dvc>=')
    ]
    low, high = re.fullmatch(r"dvc>=([\d.]+),<([\d.]+)", pin).groups()

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3])

    got = version("dvc")
    assert key(low) <= key(got) < key(high), (
        f"DVC {got} is outside the tested range {pin}: rerun tests/test_dvc_adapter.py "
        "and tests/test_flows.py with it, then move the pin in pyproject.toml"
    )


STAGES = {
    "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
    "b": {"cmd": "cat a.txt > b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    "d": {"cmd": "echo d > d.txt", "outs": ["d.txt"]},
    "c": {"cmd": "cat b.txt d.txt > c.txt", "deps": ["b.txt", "d.txt"], "outs": ["c.txt"]},
}


def _project(path: Path, stages: dict) -> Path:
    path.mkdir()
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc.dvc(path, "init", "-q")
    return path


@pytest.mark.slow
def test_plan_and_stage_lines_match_what_dvc_prints(tmp_path):
    root = _project(tmp_path / "p", STAGES)
    p = dvc.plan(root)  # nothing run yet: every stage changed and new
    assert p.order == ["a", "b", "d", "c"]  # dvc repro's depth-first order
    assert p.upstream == {"a": [], "b": ["a"], "d": [], "c": ["b", "d"]}
    assert p.stale == p.new == {"a", "b", "c", "d"}

    lines: list[str] = []
    res = dvc.stream(root, ["repro"], on_line=lines.append)
    assert res.rc == 0 and res.ran == ["a", "b", "d", "c"], lines
    assert all(s >= 0 for s in res.stages.values())
    assert dvc.plan(root).stale == set() and dvc.plan(root).new == set()

    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {**STAGES, "d": {**STAGES["d"], "cmd": "echo e > d.txt"}}})
    )
    assert dvc.plan(root).stale == {"d", "c"}  # d changed; c reads its output
    res = dvc.stream(root, ["repro"])
    assert res.ran == ["d", "c"]

    res = dvc.stream(root, ["repro", "--single-item", "zzz"])
    assert res.rc != 0 and res.ran == [] and any("zzz" in line for line in res.tail)


@pytest.mark.slow
def test_run_cache_restores_are_reported_as_restored(tmp_path):
    x = {"cmd": "cat in.txt > x.txt", "deps": ["in.txt"], "outs": ["x.txt"]}
    root = _project(tmp_path / "p", {"x": x})
    (root / "in.txt").write_text("in\n")
    assert dvc.stream(root, ["repro"]).ran == ["x"]
    (root / "x.txt").unlink()
    (root / "dvc.lock").unlink()  # as on a fresh clone: only the run-cache knows this run
    res = dvc.stream(root, ["repro"])
    assert res.rc == 0 and res.ran == [] and res.restored == ["x"], res.tail
    assert (root / "x.txt").read_text() == "in\n"


@pytest.mark.slow
def test_default_remote_and_failures_name_the_command(tmp_path):
    root = _project(tmp_path / "p", STAGES)
    assert dvc.default_remote(root) is None
    dvc.dvc(root, "remote", "add", "-d", "store", str(tmp_path / "store"))
    assert dvc.default_remote(root) == "store"
    try:
        dvc.dvc(root, "repro", "nope")
    except dvc.DvcError as err:
        assert "dvc repro nope" in str(err) and "exited" in str(err)
    else:
        raise AssertionError("a failing dvc command must raise DvcError")


def test_exp_run_arguments():
    args = dvc.exp_run_args("n", ["++svm.C=0.5"], ["evaluate"], temp=True)
    assert args == ["exp", "run", "--temp", "-n", "n", "-S", "++svm.C=0.5", "evaluate"]
    assert dvc.exp_run_args(None, [], queue=True) == ["exp", "run", "--queue"]
    assert dvc.exp_ref("abcdef", "x") == "refs/exps/ab/cdef/x"


def test_a_lock_table_cut_by_a_kill_is_reset_only_when_no_dvc_runs(tmp_path):
    import fcntl
    import json

    tmp = tmp_path / ".dvc" / "tmp"
    tmp.mkdir(parents=True)
    rwlock = tmp / "rwlock"
    rwlock.write_text('{"read": {}, "wri')  # what a SIGKILL mid-write leaves
    # a running DVC process holds the repository lock, or (while a stage's command
    # runs with the repository lock released) the lock table's guard while it edits it
    for name in ("lock", "rwlock.lock"):
        with open(tmp / name, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            assert dvc.repair_rwlock(tmp_path) is False, name
            assert rwlock.read_text() == '{"read": {}, "wri'
    assert dvc.repair_rwlock(tmp_path) is True
    assert json.loads(rwlock.read_text()) == {"read": {}, "write": {}}
    rwlock.write_text('{"read": {"a": 1}, "write": {}}')  # whole: left alone
    assert dvc.repair_rwlock(tmp_path) is False
    assert json.loads(rwlock.read_text()) == {"read": {"a": 1}, "write": {}}


# --- DVC's experiment queue (`fer compare --jobs N`) -------------------------------------------

QUEUE_STAGE = {
    "a": {
        # x=3 fails; x=9 runs until killed
        "cmd": 'sh -c \'grep -q "x: 9" params.yaml && sleep 300; cp params.yaml a.txt; '
        '! grep -q "x: 3" params.yaml\'',
        "params": ["x"],
        "outs": ["a.txt"],
    }
}


def test_queue_status_rows_parse():
    out = (
        "Task     Name    Created       Status\n"
        "4f39653  one     10:36 PM      Running\n"
        "7a74062          Dec 01, 2025  Failed\n"
        "39da538  a b     -             Queued\n"
        "\nWorker status: 1 active, 0 idle\n"
    )
    rows = [m.groupdict() for line in out.splitlines() if (m := dvc._QUEUE_ROW.match(line))]
    assert [(r["task"], r["name"], r["status"]) for r in rows] == [
        ("4f39653", "one", "Running"),
        ("7a74062", None, "Failed"),
        ("39da538", "a b", "Queued"),
    ]


def _wait(root: Path, until, timeout: float = 240.0) -> list[dvc.QueueTask]:
    """Poll `dvc queue status` until `until({name: task})` holds. A task moving between
    DVC's lists can be missing from one status (fer compare allows for it too), so a
    KeyError means "not there yet", and the poll goes on until the timeout."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        tasks = dvc.queue_status(root)
        try:
            if until({t.name: t for t in tasks}):
                return tasks
        except KeyError:
            pass
        time.sleep(2)
    raise AssertionError(f"the queue did not get there in {timeout} s: {tasks}")


def _has_log(root: Path, task: str) -> bool:
    try:
        return bool(dvc.queue_logs(root, task))
    except dvc.DvcError:  # "No output logs found" until its process starts
        return False


@pytest.mark.slow
def test_queue_status_logs_follow_kill_and_remove_as_dvc_prints_them(tmp_path):
    """Everything `fer compare --jobs N` reads from DVC's queue, against the installed DVC."""
    root = _project(tmp_path / "p", QUEUE_STAGE)
    (root / "params.yaml").write_text("x: 1\n")
    for args in (["add", "-A"], ["commit", "-qm", "p"]):
        dvc.git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", *args)
    baseline = dvc.git(root, "rev-parse", "HEAD")
    for name, x in (("ok", 2), ("bad", 3), ("slow", 9), ("later", 4)):
        dvc.dvc(root, *dvc.exp_run_args(name, [f"x={x}"], ["a"], queue=True))
    tasks = {t.name: t for t in dvc.queue_status(root)}
    assert {n: t.status for n, t in tasks.items()} == dict.fromkeys(
        ("ok", "bad", "slow", "later"), "Queued"
    )
    assert all(re.fullmatch(r"[0-9a-f]{7}", t.task) for t in tasks.values())
    dvc.queue_remove(root, [tasks["later"].task])  # by task id, still queued
    assert "later" not in {t.name for t in dvc.queue_status(root)}

    dvc.queue_start(root, 2)
    _wait(root, lambda s: s["slow"].status == "Running" or s["slow"].done)
    _wait(root, lambda s: _has_log(root, tasks["slow"].task))  # its process has started
    slow = dvc.QueueFollower(root, tasks["slow"].task)  # attached while it runs
    _wait(root, lambda s: s["ok"].done and s["bad"].done)
    assert not slow.wait(1), "slow sleeps until killed"
    dvc.queue_kill(root, [tasks["slow"].task])
    final = {t.name: t.status for t in _wait(root, lambda s: s["slow"].done)}
    assert final == {"ok": "Success", "bad": "Failed", "slow": "Failed"}
    assert slow.wait(60) and slow.proc.returncode == 0, "follow ends with the killed run"
    res = slow.result()
    assert "a" in res.stages and res.wall_s >= res.stages["a"] > 0, slow.lines
    assert not any(line.startswith("Following logs") for _, line in slow.lines)

    ok = dvc.QueueFollower(root, tasks["ok"].task)  # a done task: its whole log at once
    assert ok.wait(60) and ok.proc.returncode == 0
    assert ok.result().ran == ["a"]
    assert "Running stage 'a':" in dvc.queue_logs(root, tasks["ok"].task)
    assert "failed to reproduce 'a'" in dvc.queue_logs(root, tasks["bad"].task)
    dvc.git(root, "rev-parse", "--verify", dvc.exp_ref(baseline, "ok"))
