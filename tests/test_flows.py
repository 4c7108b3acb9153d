"""The Prefect flow over the DVC stage graph: caching, overrides, failures, locking, deployments."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from test_pipeline import IDENTITY, ROOT, TINY, Repo, _merge, tiny_project

from fer_tasks.lib import dvc_adapter
from fer_tasks.lib.dvc_adapter import plan
from fer_tasks.lib.params import ParamsError
from fer_tasks.lib.reports import files
from flows import pipeline
from flows.pipeline import (
    StageFailed,
    dvc_stage,
    fer_pipeline,
    override_params,
    read_report_metrics,
    render_report,
    workspace_lock,
)
from flows.serve import build_deployments

# the tiny FER config of test_pipeline, with a cheaper export stage whose int8 parity
# check cannot fail on noise (one of ~65 test faces is 1.5 points)
FLOW_TINY = _merge(
    TINY, {"export": {"representative_samples": 20, "latency_runs": 3, "max_int8_drop": 100.0}}
)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every flow run of the session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _tiny_project(path: Path) -> Repo:
    """A git + DVC copy of the pipeline with a shrunk params.yaml, committed, not reproduced."""
    return tiny_project(path, FLOW_TINY)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server) -> Repo:
    """The tiny project after its first flow run (which must run every stage)."""
    repo = _tiny_project(tmp_path_factory.mktemp("flow") / "project")
    repo.expected_order = _dvc_repro_order(repo.path)
    repo.first = fer_pipeline(workspace=repo.path, return_state=True)
    return repo


def _dvc_repro_order(path: Path) -> list[str]:
    """The order in which `dvc repro` visits the stages (DVC's own planning functions)."""
    from dvc.repo import Repo as DvcRepo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    with DvcRepo(str(path)) as dvc:
        stages = collect_stages(dvc, [str(path / "dvc.yaml")])
        return [s.name for s in plan_repro(get_active_graph(dvc.index.graph), stages)]


def _lock(repo: Repo) -> bytes:
    return (repo.path / "dvc.lock").read_bytes()


# --- the flow on the tiny project ---------------------------------------------------------


@pytest.mark.slow
def test_first_run_runs_every_stage_and_writes_the_lock_dvc_would(project):
    summary = project.first.result()
    assert summary["ran"] == project.expected_order  # every stage, in `dvc repro`'s order
    assert {"svm", "phase@top", "phase@block7"} <= set(summary["ran"])
    lock = yaml.safe_load(_lock(project))
    assert list(lock["stages"]) == project.expected_order  # the order `dvc repro` writes
    assert project.changed() == set()
    before = _lock(project)
    assert project.ran(project.dvc("repro")) == set()  # dvc agrees: nothing to do
    assert _lock(project) == before

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = project.first.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    (report,) = [a for a in artifacts if a.key == "fer-pipeline-report"]
    assert "| svm | ran |" in report.data and "recall happy" in report.data
    assert "svm baseline (test)" in summary["metrics"]


@pytest.mark.slow
def test_second_run_recomputes_nothing_and_starts_no_stage(project, monkeypatch):
    def no_stage(*args, **kwargs):
        raise AssertionError(f"a cached pipeline started a stage: {args}")

    monkeypatch.setattr(dvc_adapter, "stream", no_stage)
    before = _lock(project)
    summary = fer_pipeline(workspace=project.path)
    assert summary["ran"] == []
    assert summary["cached"] == project.expected_order
    assert _lock(project) == before


@pytest.mark.slow
def test_override_runs_only_dependents_as_an_experiment(project):
    # as a user does before experimenting: commit the finished run, which is what
    # `dvc exp run --temp` starts from (with uncommitted edits to tracked files)
    project.run("git", "add", "dvc.lock")
    project.run("git", *IDENTITY, "commit", "-qm", "first run")
    params_before, lock_before = (project.path / "params.yaml").read_bytes(), _lock(project)
    summary = fer_pipeline(
        workspace=project.path,
        overrides=["svm.C=0.5", "export.latency_runs=2"],
        experiment_name="svm-c05",
    )
    # svm and export are independent branches; summary reads the svm metrics (evaluate,
    # which loads the model, does not); validate checks any edit of params.yaml. The
    # fine-tuning phases stay cached.
    assert set(summary["ran"]) == {"validate", "svm", "summary", "export"}
    assert summary["experiment"] == "svm-c05"
    # the workspace is untouched ...
    assert (project.path / "params.yaml").read_bytes() == params_before
    assert _lock(project) == lock_before
    assert project.changed() == set()
    # ... and the experiment is a DVC experiment with its own params and lock
    refs = project.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    (ref,) = [r for r in refs if r.endswith("/svm-c05")]
    exp_lock = yaml.safe_load(project.run("git", "show", f"{ref}:dvc.lock").stdout)
    assert exp_lock["stages"]["svm"]["params"]["params.yaml"]["svm"]["C"] == 0.5
    assert "svm-c05" in project.dvc("exp", "list", "--name-only").stdout
    # the report's metrics are the experiment's, read from its commit, and so are
    # evaluate's pictures (DVC outputs of that commit, not files of the workspace)
    assert summary["metrics"]["svm baseline (test)"]["accuracy"] is not None
    assert summary["pictures"] == "svm-c05"
    assert render_report(summary).count("data:image/png;base64,") == 3


@pytest.mark.slow
def test_sweep_queues_one_experiment_per_override_list(project):
    """`sweep` goes through DVC's queue, two at once: each experiment has its own params
    and reruns only what its overrides touch. (C values no other test uses: DVC would
    restore an svm stage another experiment ran from its run-cache, and not run it.)"""
    if not _tracked_lock(project):
        project.run("git", "add", "dvc.lock")
        project.run("git", *IDENTITY, "commit", "-qm", "first run")
    lock_before = _lock(project)
    summary = fer_pipeline(
        workspace=project.path,
        sweep=[["svm.C=0.3"], ["svm.C=0.2"]],
        jobs=2,
        experiment_name="sweep",
    )
    rows = {r["experiment"]: r for r in summary["sweep"]}
    assert set(rows) == {"sweep-1", "sweep-2"}
    for name, c in (("sweep-1", 0.3), ("sweep-2", 0.2)):
        assert rows[name]["queue_status"] == "Success"
        assert set(rows[name]["stages"]) - {"validate"} == {"svm", "summary"}, rows[name]
        refs = project.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout
        (ref,) = [r for r in refs.split() if r.endswith(f"/{name}")]
        exp_lock = yaml.safe_load(project.run("git", "show", f"{ref}:dvc.lock").stdout)
        assert exp_lock["stages"]["svm"]["params"]["params.yaml"]["svm"]["C"] == c
        assert rows[name]["metrics"]["svm baseline (test)"]["accuracy"] is not None
    assert _lock(project) == lock_before  # the workspace is untouched


def _tracked_lock(repo: Repo) -> bool:
    return (
        bool(repo.run("git", "ls-files", "dvc.lock").stdout.strip())
        and not repo.run("git", "status", "--porcelain", "dvc.lock").stdout.strip()
    )


def test_sweep_and_overrides_together_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        fer_pipeline.fn(
            workspace=_params_file(tmp_path).parent, overrides=["svm.C=0.5"], sweep=[["svm.C=1"]]
        )
    with pytest.raises(ParamsError, match=r"svm\.C"):
        fer_pipeline.fn(workspace=tmp_path, sweep=[["svm.C=0.5"], ["svm.C=-1"]])


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_message(project):
    state = fer_pipeline(
        workspace=project.path, overrides=["svm.pca_components=5000"], return_state=True
    )
    assert state.is_failed()
    assert "stage 'svm' failed" in state.message
    with pytest.raises(StageFailed, match="svm.pca_components: 5000 exceeds"):
        state.result()
    assert project.changed() == set()  # the workspace is untouched


@pytest.mark.slow
def test_two_runs_on_one_workspace_queue_and_leave_it_intact(project, tmp_path):
    from prefect.settings import PREFECT_API_URL

    with (project.path / "params.yaml").open("a") as fh:
        fh.write("# touched: the validate stage is stale\n")
    env = {**project.env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(project.path)]
    # Hold the workspace ourselves until both runs are waiting for it, so they
    # overlap for certain (process start-up alone can otherwise serialise them).
    with pipeline.workspace_lock(project.path, timeout_s=60):
        runs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        drained = [(_drain(p.stdout), _drain(p.stderr)) for p in runs]
        streams = [(out, err) for (out, _), (err, _) in drained]
        deadline = time.monotonic() + 300
        while not all(b"is busy" in b"".join(err) for _, err in streams):
            assert time.monotonic() < deadline, "the runs never waited for the workspace"
            assert all(p.poll() is None for p in runs), "a run ended while the workspace was held"
            time.sleep(0.2)
    for p in runs:
        p.wait(timeout=600)
    for (_, out_reader), (_, err_reader) in drained:
        out_reader.join(timeout=60)
        err_reader.join(timeout=60)
    outs = [(b"".join(out), b"".join(err)) for out, err in streams]
    assert [p.returncode for p in runs] == [0, 0], [e.decode()[-3000:] for _, e in outs]
    ran = sorted(json.loads(o.decode().splitlines()[-1])["ran"] for o, _ in outs)
    assert ran == [[], ["validate"]]  # one after the other: the second found it done
    assert project.changed() == set()
    assert project.ran(project.dvc("repro")) == set()


def _drain(stream) -> tuple[list[bytes], threading.Thread]:
    """Collect a pipe's output in a thread (so the child never blocks on a full pipe)."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(stream.readline, b"")))
    reader.start()
    return chunks, reader


@pytest.mark.slow
def test_remote_pull_first_push_last(project, tmp_path):
    remote = tmp_path / "remote"
    project.dvc("remote", "add", "--local", "-d", "store", str(remote))
    try:
        summary = fer_pipeline(workspace=project.path)  # pushes everything
        assert summary["remote"] == "store" and summary["ran"] == []
        assert "new" not in project.dvc("status", "--cloud").stdout
        # a fresh machine: no cache, no outputs; the pull restores them, nothing reruns
        shutil.rmtree(project.path / ".dvc" / "cache")
        shutil.rmtree(project.path / "models" / "svm")
        summary = fer_pipeline(workspace=project.path)
        assert summary["ran"] == []
        assert (project.path / "models" / "svm").is_dir()
        assert project.changed() == set()
    finally:
        project.dvc("remote", "remove", "--local", "store")


@pytest.mark.slow
def test_a_run_shared_through_origin_is_reused_by_a_shallow_clone(project, tmp_path):
    """CI's bounded version of bench/multi_worker.py (make test-long), in-process.

    Host A (the finished project) commits its code without dvc.lock, as a worker finds
    it, and shares its run with `share="origin"`. Host B is a `--depth 1` clone (as
    Prefect's git_clone makes): it pulls A's experiment, applies it and runs no stage.
    """
    head0 = project.run("git", "rev-parse", "HEAD").stdout.strip()
    origin, store = tmp_path / "origin.git", tmp_path / "store"
    project.run("git", "init", "-q", "--bare", str(origin))
    project.run("git", "remote", "add", "origin", str(origin))
    project.dvc("remote", "add", "--local", "-d", "store", str(store))
    try:
        project.run("git", "rm", "-q", "--cached", "--ignore-unmatch", "dvc.lock")
        project.run("git", *IDENTITY, "commit", "-q", "--allow-empty", "-m", "code only")
        project.run("git", "push", "-q", "origin", "HEAD:refs/heads/main")
        a = fer_pipeline(workspace=project.path, share="origin", experiment_name="host-a")
        assert a["ran"] == [] and a["experiment"] == "host-a"

        host_b = Repo(tmp_path / "host-b")
        project.run(
            "git", "clone", "-q", "--depth", "1", "-b", "main", f"file://{origin}", str(host_b.path)
        )
        assert not (host_b.path / "dvc.lock").exists()
        host_b.dvc("remote", "add", "--local", "-d", "store", str(store))
        b = fer_pipeline(workspace=host_b.path, share="origin", experiment_name="host-b")
        assert b["reused"] == "host-a"
        assert render_report(b).count("data:image/png;base64,") == 3  # B's applied pictures
        assert b["ran"] == [] and b["cached"] == project.expected_order
        assert host_b.changed() == set()
        assert host_b.run("git", "rev-parse", "--is-shallow-repository").stdout.strip() == "false"
        assert (host_b.path / "models" / "phases" / "block7" / "model.keras").is_file()
        refs = project.run("git", "-C", str(origin), "for-each-ref", "--format=%(refname)")
        assert {r.rsplit("/", 1)[-1] for r in refs.stdout.split()} >= {"host-a", "host-b"}
    finally:
        project.run("git", "reset", "-q", head0)  # index and HEAD back; files untouched
        project.run("git", "remote", "remove", "origin")
        project.dvc("remote", "remove", "--local", "store")


@pytest.mark.slow
def test_deployment_applies_with_its_schedule(prefect_server):
    from prefect.client.orchestration import get_client

    (retrain,) = build_deployments(only=["retrain"])
    deployment_id = retrain.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    (schedule,) = stored.schedules
    assert schedule.slug == "weekly-retrain"
    assert schedule.schedule.cron == "0 3 * * 1"
    assert schedule.schedule.timezone == "Europe/Berlin"


# --- units: no server, no DVC run -----------------------------------------------------------


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_override_is_parsed_like_dvc_exp_run_and_validated(tmp_path):
    over = override_params(_params_file(tmp_path), ["svm.C=0.5", "params.yaml:rebalance.seed=3"])
    assert over == {"svm": {"C": 0.5}, "rebalance": {"seed": 3}}


def test_invalid_override_fails_before_any_work_naming_the_key(tmp_path):
    with pytest.raises(ParamsError, match=r"svm\.C: .*greater than 0"):
        override_params(_params_file(tmp_path), ["svm.C=-1"])
    with pytest.raises(ValueError, match="svm.CC"):
        override_params(_params_file(tmp_path), ["svm.CC=1"])  # a typo: not in params.yaml


def test_cached_stage_is_reported_without_a_process(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.dvc, "stream", None)
    state = dvc_stage.fn("svm", tmp_path, stale=False)
    assert state.name == "Cached" and state.is_completed()
    assert state.result().status == "cached"


def test_workspace_lock_makes_a_second_holder_wait(tmp_path):
    events: list[str] = []

    def second() -> None:
        with workspace_lock(tmp_path, timeout_s=30):
            events.append("second in")

    with workspace_lock(tmp_path, timeout_s=30):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(1.0)
        events.append("first out")
    t.join(timeout=30)
    assert events == ["first out", "second in"]
    with workspace_lock(tmp_path, 1), pytest.raises(TimeoutError, match="still busy"):  # noqa: SIM117
        with workspace_lock(tmp_path, timeout_s=0.2):
            pass


def test_metrics_and_report(tmp_path):
    per_class = {"angry": {"recall": 0.5}, "happy": {"recall": 0.75}}
    (tmp_path / "reports" / "svm").mkdir(parents=True)
    (tmp_path / "reports" / "svm" / "metrics.json").write_text(
        json.dumps({"test": {"accuracy": 0.625, "macro_f1": 0.5, "per_class": per_class}})
    )
    (tmp_path / "reports" / "phases" / "top").mkdir(parents=True)
    (tmp_path / "reports" / "phases" / "top" / "metrics.json").write_text(
        json.dumps({"val_macro_f1": 0.25, "step": 3})
    )
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # phases top, block5
    metrics = read_report_metrics(files(tmp_path))
    recall = {"angry": 0.5, "happy": 0.75}
    assert metrics["svm baseline (test)"] == {"accuracy": 0.625, "macro_f1": 0.5, "recall": recall}
    assert metrics["phase@top (val)"]["macro_f1"] == 0.25
    stages = [
        {"stage": "svm", "status": "ran", "seconds": 1.5},
        {"stage": "base", "status": "cached", "seconds": 0.0},
    ]
    md = render_report({"stages": stages, "metrics": metrics, "overrides": ["svm.C=0.5"]})
    assert "| svm | ran | 1.5000 |" in md
    assert "Cached: base." in md
    assert "| svm baseline (test) | 0.6250 | 0.5000 | 0.5000 | 0.7500 |" in md


def _stage(name: str, section: str, after: str | None = None) -> dict:
    return {
        "cmd": f"python -c \"open('{name}.txt', 'w').write('{section}')\"",
        "deps": [f"{after}.txt"] if after else [],
        "params": [section],
        "outs": [f"{name}.txt"],
    }


# two branches (a -> b -> c and d -> e) that meet in f, reading sections of the real params
TRIVIAL = {
    "a": _stage("a", "synthesize"),
    "b": _stage("b", "svm", "a"),
    "c": _stage("c", "base", "b"),
    "d": _stage("d", "base"),
    "e": _stage("e", "synthesize", "d"),
}
TRIVIAL["f"] = {**_stage("f", "synthesize", "c"), "deps": ["c.txt", "e.txt"]}


def _params(**edits: dict) -> dict:
    return _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), edits)


def _trivial_project(path: Path, stages: dict) -> Repo:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    Repo(path).set_params(_params())
    repo = Repo(path)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    return repo


@pytest.mark.slow
def test_plan_marks_changed_stages_and_their_dependents_stale(tmp_path):
    repo = _trivial_project(tmp_path, TRIVIAL)
    repo.dvc("repro")
    p = plan(tmp_path)
    assert (p.stale, p.new) == (set(), set())
    assert p.upstream["f"] == ["c", "e"] and p.upstream["a"] == []
    assert p.order == _dvc_repro_order(tmp_path)

    repo.set_params(_params(svm={"C": 0.5}))
    assert plan(tmp_path).stale == {"b", "c", "f"}  # b changed; c, f read its output
    with_g = {**TRIVIAL, "g": _stage("g", "svm")}  # a new stage: no dvc.lock entry yet
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": with_g}))
    p = plan(tmp_path)
    assert (p.stale, p.new) == ({"b", "c", "f", "g"}, {"g"})


@pytest.mark.slow
def test_flow_writes_the_same_dvc_lock_bytes_as_dvc_repro(tmp_path, prefect_server):
    by_dvc = _trivial_project(tmp_path / "dvc", TRIVIAL)
    by_flow = _trivial_project(tmp_path / "flow", TRIVIAL)
    for params in (_params(), _params(svm={"C": 0.5}, base={"seed": 3})):  # fresh, then edited
        by_dvc.set_params(params)
        by_flow.set_params(params)
        by_dvc.dvc("repro")
        summary = fer_pipeline(workspace=by_flow.path)
        assert _lock(by_flow) == _lock(by_dvc)
    # svm (b) and base (c, d) changed; e and f were candidates, but their inputs came out
    # byte-identical, so DVC skipped them, as `dvc repro` did
    assert set(summary["ran"]) == {"b", "c", "d"}
    assert {r["stage"]: r["status"] for r in summary["stages"]}["f"] == "cached"


def test_deployment_definitions_load_and_carry_the_schedule():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)  # Prefect's own schema for prefect.yaml
    by_name = {d.name: d for d in model.deployments}
    assert set(by_name) == {"retrain", "experiment"}
    for d in model.deployments:
        path, name = d.entrypoint.split(":")
        assert load_flow_from_entrypoint(str(ROOT / path) + ":" + name).name == "fer-pipeline"
    (spec,) = raw["deployments"][0]["schedules"]
    schedule = _schedule_config_to_deployment_schedule(spec)  # what `prefect deploy` sends
    assert schedule["slug"] == "weekly-retrain"
    assert schedule["schedule"].cron == "0 3 * * 1"
    assert schedule["schedule"].timezone == "Europe/Berlin"
    assert by_name["experiment"].parameters == {"overrides": []}

    served = {d.name: d for d in build_deployments()}
    (s,) = served["retrain"].schedules
    assert (s.slug, s.schedule.cron, s.schedule.timezone) == (
        "weekly-retrain",
        "0 3 * * 1",
        "Europe/Berlin",
    )
    assert served["retrain"].concurrency_limit == 1
    assert served["experiment"].schedules == []
    (fast,) = build_deployments(interval_s=10, only=["retrain"])
    assert fast.schedules[0].schedule.interval.total_seconds() == 10


# --- sharing runs between hosts (share=<git remote>): the git side, no DVC run -------------


def _git_repo_with_experiments(tmp_path: Path, params: dict[str, str]) -> Path:
    """A git repo whose HEAD has one experiment ref per entry: name -> params.yaml text,
    created oldest first one second apart (for-each-ref sorts by committer date)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", *IDENTITY]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "params.yaml").write_text("svm:\n  C: 1.0\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True)
    head = dvc_adapter.git(repo, "rev-parse", "HEAD")
    for i, (name, text) in enumerate(params.items()):
        blob = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo,
            input=text,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        tree = subprocess.run(
            ["git", "mktree"],
            cwd=repo,
            input=f"100644 blob {blob}\tparams.yaml\n",
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        date = f"{1_700_000_000 + i} +0000"
        commit = subprocess.run(
            [*git, "commit-tree", tree, "-p", head, "-m", name],
            cwd=repo,
            text=True,
            capture_output=True,
            check=True,
            env={**os.environ, "GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date},
        ).stdout.strip()
        subprocess.run(
            ["git", "update-ref", dvc_adapter.exp_ref(head, name), commit], cwd=repo, check=True
        )
    return repo


def test_shared_runs_are_listed_newest_first_and_matched_on_params(tmp_path):
    repo = _git_repo_with_experiments(
        tmp_path,
        {
            "old-same": "svm:\n  C: 1.0\n",
            "new-same": "svm: {C: 1.0}\n",
            "newest-other": "svm:\n  C: 0.5\n",
        },
    )
    runs = pipeline.shared_runs(repo)
    assert runs == ["newest-other", "new-same", "old-same"]
    # the newest with equal params (compared as YAML, not as text) is picked
    assert pipeline.pick_shared_run(repo, runs) == "new-same"
    (repo / "params.yaml").write_text("svm:\n  C: 0.5\n")
    assert pipeline.pick_shared_run(repo, runs) == "newest-other"
    (repo / "params.yaml").write_text("svm:\n  C: 2.0\n")  # no run has these params
    assert pipeline.pick_shared_run(repo, runs) is None
    assert pipeline.pick_shared_run(repo, ["not-an-experiment"]) is None


def test_run_names_are_unique_and_git_ref_safe(monkeypatch):
    assert pipeline.run_name("given", ["given"]) == "given"  # an explicit name is the user's
    assert re.fullmatch(r"run-\d{8}-\d{6}", pipeline.run_name(None, []))  # outside a flow run
    monkeypatch.setattr(pipeline.time, "strftime", lambda fmt: "run-1")
    assert pipeline.run_name(None, ["run-1", "run-1-2"]) == "run-1-3"
