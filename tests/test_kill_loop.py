"""The kill loop (bench/kill_loop.py): its checks fire on damage, and a short loop passes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import kill_loop  # noqa: E402


def _phase_outputs(root: Path) -> Path:
    top = root / "models" / "phases" / "top"
    top.mkdir(parents=True)
    import zipfile

    with zipfile.ZipFile(top / "model.keras", "w") as z:
        z.writestr("config.json", "{}" * 1000)
    (top / "state.json").write_text(json.dumps({"epoch_end": 2}))
    return top


def test_whole_outputs_pass_the_checks(tmp_path) -> None:
    _phase_outputs(tmp_path)
    assert kill_loop.check_whole(tmp_path, "phase@top") == []
    assert kill_loop.leftovers(tmp_path) == []


def test_a_truncated_model_or_a_lone_state_is_found(tmp_path) -> None:
    top = _phase_outputs(tmp_path)
    data = (top / "model.keras").read_bytes()
    (top / "model.keras").write_bytes(data[: len(data) // 2])
    assert any("model.keras: unreadable" in p for p in kill_loop.check_whole(tmp_path, "phase@top"))
    (top / "model.keras").unlink()
    assert kill_loop.check_whole(tmp_path, "phase@top") == [
        "models/phases/top: model.keras and state.json not both present"
    ]


def test_half_written_json_and_temporary_siblings_are_found(tmp_path) -> None:
    svm = tmp_path / "reports" / "svm"
    svm.mkdir(parents=True)
    (svm / "metrics.json").write_text('{"test": {"accuracy": 0.')
    (svm / ".metrics.json.tmp-1234").mkdir()
    (tmp_path / "models" / ".svm.old-ab").mkdir(parents=True)
    (tmp_path / ".dvc" / "tmp" / ".lock.tmp-1").mkdir(parents=True)  # DVC's own: not ours
    assert any("metrics.json: unreadable" in p for p in kill_loop.check_whole(tmp_path, "svm"))
    assert kill_loop.leftovers(tmp_path) == [
        "models/.svm.old-ab",
        "reports/svm/.metrics.json.tmp-1234",
    ]


@pytest.mark.slow
@pytest.mark.long
def test_a_short_kill_loop_recovers_every_time(tmp_path) -> None:
    """One SIGKILL in each long stage (the bench runs N >= 20); opt-in (make test-long).

    CI's bounded versions: a SIGKILL of `fer phase` under `dvc repro`
    (test_pipeline), mid-epoch (test_phase) and inside an output swap (test_io).
    """
    res = kill_loop.kill_loop(tmp_path, kills=4, seed=1, log=lambda *_: None)
    assert res["problems"] == []
    assert res["by_stage"] == dict.fromkeys(kill_loop.STAGES, 1)
    assert res["recoveries"] == 4
    assert res["compared"] == len(kill_loop.SAME_BYTES) + len(kill_loop.SAME_JSON)


def test_timings_are_left_out_of_the_comparison_and_results_kept() -> None:
    report = {
        "accuracy": 0.5,
        "fit_seconds": 3.0,
        "float32": {"accuracy": 0.4, "latency_ms_median": 1.2, "size_bytes": 10},
        "latency": {"runs": 5},
        "splits": {"train": {"n": 9, "images_per_s": 30.0, "cpu_seconds": 1.0}},
    }
    assert kill_loop._strip(report) == {
        "accuracy": 0.5,
        "float32": {"accuracy": 0.4, "size_bytes": 10},
        "splits": {"train": {"n": 9}},
    }
