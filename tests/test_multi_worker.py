"""The two-worker demonstration (bench/multi_worker.py): its checks fire, and a short run passes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import multi_worker  # noqa: E402


def test_the_flow_summary_line_is_read_from_a_worker_log():
    log = (
        "12:00:00 | INFO | Flow run 'x' - ran: svm, summary; cached: prepare, base; "
        "experiment ruddy-fox\n12:00:01 | INFO | Flow run 'x' - Finished in state Completed()\n"
    )
    assert multi_worker.run_summary(log) == {
        "ran": ["svm", "summary"],
        "cached": ["prepare", "base"],
        "experiment": "ruddy-fox",
    }
    assert multi_worker.run_summary("x - ran: nothing; cached: svm\n")["ran"] == []
    with pytest.raises(SystemExit, match="no run summary"):
        multi_worker.run_summary("Finished in state Completed()\n")


def _results(**changes) -> dict:
    runs = [
        {"flow_run": "1", "experiment": "a", "ran": ["prepare", "phase@top"], "cached": []},
        {"flow_run": "2", "experiment": "b", "ran": [], "cached": ["prepare", "phase@top"]},
        {"flow_run": "3", "experiment": "c", "ran": ["validate", "svm", "summary"], "cached": []},
    ]
    results = {
        "runs": runs,
        "completed": ["3", "2", "1"],
        "third": {"experiments": ["a", "b", "c"], "after_apply_would_run": []},
        "remote": {"damaged": []},
    }
    for key, value in changes.items():
        run, field = key.split("__")
        results["runs"][int(run)][field] = value
    return results


def test_the_checks_pass_a_good_demonstration_and_fire_on_each_failure():
    assert multi_worker.check(_results()) == []
    assert "trained no phase" in multi_worker.check(_results(**{"0__ran": ["prepare"]}))[0]
    assert "worker B ran stages" in multi_worker.check(_results(**{"1__ran": ["phase@top"]}))[0]
    problems = multi_worker.check(_results(**{"2__ran": ["validate", "svm", "summary", "base"]}))
    assert "not svm and summary alone" in problems[0]
    missing = _results()
    missing["third"]["experiments"] = ["a", "c"]
    assert "lacks ['b']" in multi_worker.check(missing)[0]
    stale = _results()
    stale["third"]["after_apply_would_run"] = ["phase@top"]
    assert "would run ['phase@top']" in multi_worker.check(stale)[0]
    damaged = _results()
    damaged["remote"]["damaged"] = ["files/md5/ab/cd"]
    assert "damaged objects" in multi_worker.check(damaged)[0]
    unfinished = _results()
    unfinished["completed"] = ["1", "2"]
    assert "COMPLETED" in multi_worker.check(unfinished)[0]


def test_remote_objects_are_checked_against_their_names(tmp_path):
    good, text = tmp_path / "files" / "md5", b"weights"
    digest = hashlib.md5(text).hexdigest()
    (good / digest[:2]).mkdir(parents=True)
    (good / digest[:2] / digest[2:]).write_bytes(text)
    (good / digest[:2] / f"{digest[2:]}.dir").write_bytes(text)  # a listing, hashed the same way
    assert multi_worker.remote_damage(tmp_path) == []
    (good / digest[:2] / digest[2:]).write_bytes(text[:3])  # cut short
    assert multi_worker.remote_damage(tmp_path) == [f"files/md5/{digest[:2]}/{digest[2:]}"]


@pytest.mark.slow
@pytest.mark.long
def test_two_workers_share_one_origin_and_one_dvc_remote(tmp_path):
    """Worker A trains, worker B reuses A's run and runs nothing, B's svm.C experiment
    runs svm and summary alone, and a third clone lists all three runs.

    Opt-in (make test-long, about 10 minutes). CI's bounded version, without Prefect
    workers: tests/test_flows.py::test_a_run_shared_through_origin_is_reused_by_a_shallow_clone.
    """
    out = tmp_path / "demo.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "multi_worker.py"), "--short", "--out", str(out)]
        + ["--port", "4251"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["problems"] == []
    assert results["remote"]["objects"] > 0 and results["remote"]["damaged"] == []
    a, b, c = results["runs"]
    assert {"phase@top", "svm"} <= set(a["ran"])
    assert b["ran"] == [] and "phase@top" in b["cached"]
    assert set(c["ran"]) - {"validate"} == {"svm", "summary"}
    assert {a["experiment"], b["experiment"], c["experiment"]} <= set(
        results["third"]["experiments"]
    )
