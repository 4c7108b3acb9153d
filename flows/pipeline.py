"""The DVC stage graph as a Prefect flow: one task run per stage; DVC decides what is stale.

`fer_pipeline` asks DVC once, in-process, for `dvc repro`'s plan (the stages of
`dvc.yaml`, read from it, never listed here) and for what changed
(`Repo.status()`, what `dvc status` prints). A changed stage and
everything downstream of it is *possibly stale* and runs as
`dvc --wait-for-lock repro --single-item <stage>`, so DVC re-checks it (it may
still skip it, or restore it from the run-cache), runs its command and writes
`dvc.lock` exactly as `dvc repro` does. Every other stage is reported as a
`Cached` task run without starting a process, so a fully cached pipeline costs
one status check. Independent branches (the SVM baseline next to fine-tuning)
run side by side; stages with no `dvc.lock` entry yet run in `dvc repro`'s own
order, so a freshly written lock file matches byte for byte.

Parameter overrides use `dvc exp run -S` syntax (`key=value`, applied by DVC's
own `-S` code) and run as a DVC experiment, like `dvc exp run --temp -S ...`:
in a temporary clone of the workspace (HEAD plus uncommitted changes) that
shares its DVC cache, saved with `dvc exp save` and fetched back as an
experiment ref (`dvc exp show`, `dvc exp apply <name>`). The workspace, its
`params.yaml` and `dvc.lock` are left untouched.

One run at a time per workspace: an exclusive file lock (`.dvc/tmp/fer-flow.lock`)
makes a second run wait (experiments hold it only while pulling and copying).

    python -m flows.pipeline                      # like `dvc repro`
    python -m flows.pipeline -S svm.C=0.5         # like `dvc exp run --temp -S svm.C=0.5`
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from fer_tasks.params import parse_params, read_yaml

LOCK_FILE = ".dvc/tmp/fer-flow.lock"  # under .dvc/tmp: ignored by git and DVC
EXPERIMENTS_DIR = ".dvc/tmp/fer-flows"  # temporary experiment workspaces
MAX_PARALLEL = 2  # stage processes at once (independent branches only)
TAIL_LINES = 40  # output lines of a failing stage carried in its exception
# only tasks that talk to remote storage retry: 10 s, 20 s, 40 s (+-20 %)
REMOTE_RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.2,
    cache_policy=NO_CACHE,  # DVC is the cache of record, not Prefect
)


class StageFailed(RuntimeError):
    """A stage's `dvc repro` exited non-zero; the message ends with its output's tail."""


@dataclass(frozen=True)
class StageResult:
    stage: str
    status: str  # ran | cached | restored (from the DVC run-cache) | failed | skipped
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    order: list[str]  # `dvc repro`'s order: every stage after the stages it depends on
    upstream: dict[str, list[str]]
    stale: set[str]  # changed according to DVC, plus everything downstream of those
    new: set[str]  # pipeline stages without an entry in dvc.lock yet


# --- DVC, in-process and as subprocesses --------------------------------------------------


def plan_stages(workspace: Path) -> Plan:
    """Ask DVC once, in-process, for `dvc repro`'s plan and which of its stages changed."""
    import networkx as nx
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo, lock_repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage import PipelineStage

    with Repo(str(workspace)) as repo, lock_repo(repo):  # one index for plan and status
        project_file = os.path.join(repo.root_dir, PROJECT_FILE)  # what bare `dvc repro` runs
        graph = get_active_graph(repo.index.graph)  # edge: stage -> stage making its dep
        steps = plan_repro(graph, collect_stages(repo, [project_file]))  # `dvc repro`'s order
        changed = repo.status(targets=[project_file], with_deps=True)  # keys: cwd-relative
        graph = graph.subgraph(steps)
        name = {s: _address(s, Path(repo.root_dir)) for s in steps}
        stale = {
            name[d] for s in steps if s.addressing in changed for d in {s, *nx.ancestors(graph, s)}
        }
        locks: dict[Path, dict] = {}
        new = set()
        for s in steps:
            if isinstance(s, PipelineStage):
                lock = Path(s.path).with_name("dvc.lock")
                if lock not in locks:
                    locks[lock] = yaml.safe_load(lock.read_text()) if lock.exists() else None
                if s.name not in ((locks[lock] or {}).get("stages") or {}):
                    new.add(name[s])
        return Plan(
            order=[name[s] for s in steps],
            upstream={name[s]: sorted(name[u] for u in graph.successors(s)) for s in steps},
            stale=stale,
            new=new,
        )


def _address(stage: Any, root: Path) -> str:
    """`dvc repro` target of a stage, relative to the repository root (not to the cwd)."""
    from dvc.stage import PipelineStage

    rel = Path(os.path.relpath(stage.path, root)).as_posix()
    if isinstance(stage, PipelineStage):
        return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"
    return rel


def default_remote(workspace: Path) -> str | None:
    """The workspace's default DVC remote (`dvc remote default`), or None."""
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        return repo.config["core"].get("remote")


def _env() -> dict[str, str]:
    # stage commands call `fer` and `dvc` from this interpreter's environment
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


def _run(cwd: Path, *args: str) -> str:
    """Run a command, return its stdout; raise with its output's tail when it fails."""
    r = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-TAIL_LINES:])
        raise RuntimeError(f"`{' '.join(args)}` exited {r.returncode} in {cwd}:\n{tail}")
    return r.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


# --- tasks -----------------------------------------------------------------------------


@task(task_run_name="{stage}", cache_policy=NO_CACHE)
def dvc_stage(stage: str, workspace: Path, stale: bool) -> StageResult | State:
    """Reproduce one stage with `dvc repro --single-item`, or report it as cached."""
    if not stale:
        return Completed(
            name="Cached", message="up to date in dvc.lock", data=StageResult(stage, "cached")
        )
    log = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    status, start = "cached", time.perf_counter()
    with subprocess.Popen(
        cmd, cwd=workspace, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info(line)
            if line.startswith("Running stage '"):
                status = "ran"
            elif "is cached - skipping run" in line:
                status = "restored"
    result = StageResult(stage, status, round(time.perf_counter() - start, 2))
    if proc.returncode:
        raise StageFailed(
            f"stage {stage!r} failed: `dvc repro --single-item {stage}` exited "
            f"{proc.returncode} in {workspace}; last output:\n" + "\n".join(tail)
        )
    if status == "ran":
        return result
    message = "restored from the DVC run-cache" if status == "restored" else "DVC: unchanged"
    return Completed(name="Cached", message=message, data=result)


@task(**REMOTE_RETRIES)
def dvc_pull(workspace: Path, remote: str) -> None:
    """Fetch inputs and cached outputs from the DVC remote (network I/O: retried)."""
    get_run_logger().info(_dvc(workspace, "pull", "--allow-missing", "--remote", remote))


@task(**REMOTE_RETRIES)
def dvc_push(workspace: Path, remote: str) -> None:
    """Upload the run's outputs to the DVC remote (network I/O: retried)."""
    get_run_logger().info(_dvc(workspace, "push", "--remote", remote))


# --- workspace lock, parameter overrides, experiment workspaces ---------------------------


@contextmanager
def workspace_lock(workspace: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on the workspace; a second run waits here for the first."""
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        waiting = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    fh.seek(0)
                    _log(f"workspace {workspace} is busy ({fh.read().strip()}); waiting for it")
                    waiting = True
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"workspace {workspace} still busy after {timeout_s} s"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"held by pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def override_params(params_file: Path, overrides: list[str]) -> str:
    """`params.yaml` with `-S key=value` overrides applied as `dvc exp run -S` does, validated."""
    keys = [o.removeprefix(f"{params_file.name}:") for o in overrides]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / params_file.name
        shutil.copyfile(params_file, copy)
        if keys:
            from dvc.utils.hydra import apply_overrides

            try:
                apply_overrides(copy, keys)
            except Exception as err:  # DVC wraps Hydra's message; surface both
                cause = f": {err.__cause__}" if err.__cause__ else ""
                raise ValueError(f"-S {' '.join(overrides)}: {err}{cause}") from None
        text = copy.read_text()
    where = f"{params_file} with -S {' '.join(overrides)}" if overrides else params_file
    parse_params(read_yaml(text), where, text)  # the same checks as `fer validate`
    return text


@dataclass(frozen=True)
class Snapshot:
    path: Path
    untracked: list[str]  # files git does not track that came from the workspace


def snapshot_workspace(workspace: Path, params_text: str) -> Snapshot:
    """A temporary clone of the workspace (HEAD + uncommitted changes) sharing its DVC cache."""
    from dvc.repo import Repo

    git_head = ["git", "rev-parse", "--verify", "-q", "HEAD"]
    head = subprocess.run(git_head, cwd=workspace, capture_output=True, text=True).stdout.strip()
    if not head:
        raise RuntimeError(
            f"{workspace}: parameter overrides run as a DVC experiment, which needs a git "
            "commit to start from (like `dvc exp run`); commit first"
        )
    with Repo(str(workspace)) as repo:
        cache_dir = repo.cache.local_cache_dir
        # outputs with `cache: false` (phase checkpoints) cannot be checked out: copy them
        uncached = [
            Path(out.fs_path).relative_to(repo.root_dir)
            for stage in repo.index.stages
            for out in stage.outs
            if not out.use_cache
        ]
    root = workspace / EXPERIMENTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="exp-", dir=root))
    try:
        _run(root, "git", "clone", "-q", "--shared", "--no-checkout", str(workspace), str(path))
        _run(path, "git", "checkout", "-q", "--detach", head)
        changed = _run(workspace, "git", "ls-files", "-z", "--modified", "--exclude-standard")
        untracked = _run(workspace, "git", "ls-files", "-z", "--others", "--exclude-standard")
        for rel in {*changed.split("\0"), *untracked.split("\0"), ".dvc/config.local"} - {""}:
            src, dst = workspace / rel, path / rel
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            elif not src.exists():
                dst.unlink(missing_ok=True)
        for rel in uncached:
            if (workspace / rel).is_dir():
                shutil.copytree(workspace / rel, path / rel, dirs_exist_ok=True)
            elif (workspace / rel).is_file():
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(workspace / rel, path / rel)
        (path / "params.yaml").write_text(params_text)
        _dvc(path, "config", "--local", "cache.dir", cache_dir)
        _dvc(path, "checkout", "--allow-missing", "--quiet")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Snapshot(path, sorted(set(untracked.split("\0")) - {""}))


def save_experiment(snapshot: Snapshot, workspace: Path, name: str | None) -> str:
    """`dvc exp save` in the clone, then fetch the experiment ref into the workspace."""
    args = ["exp", "save", "--json", *(["--name", name] if name else [])]
    for rel in snapshot.untracked:
        args += ["--include-untracked", rel]
    sha = json.loads(_dvc(snapshot.path, *args))["ref"]  # the experiment's commit
    refs = _run(snapshot.path, "git", "for-each-ref", "--format=%(refname)", "--points-at", sha)
    (ref,) = [r for r in refs.split() if r.startswith("refs/exps/") and r.count("/") == 4]
    _run(workspace, "git", "fetch", "-q", str(snapshot.path), f"{ref}:{ref}")
    return ref.rsplit("/", 1)[-1]  # refs/exps/<baseline[:2]>/<baseline[2:]>/<name>


# --- report ------------------------------------------------------------------------------


def read_metrics(workspace: Path) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1 and per-class recall from every reports/**/metrics.json."""
    rows: dict[str, dict[str, Any]] = {}

    def visit(label: str, d: dict) -> None:
        if "accuracy" in d or "macro_f1" in d:
            per_class = d.get("per_class") or {}
            rows[label] = {
                "accuracy": d.get("accuracy"),
                "macro_f1": d.get("macro_f1"),
                "recall": {c: v["recall"] for c, v in per_class.items() if "recall" in v},
            }
        elif "val_accuracy" in d or "val_macro_f1" in d:  # a phase's dvclive summary
            rows[f"{label} val"] = {
                "accuracy": d.get("val_accuracy"),
                "macro_f1": d.get("val_macro_f1"),
                "recall": {},
            }
        for key, value in d.items():
            if isinstance(value, dict) and key != "per_class":
                visit(f"{label} {key}", value)

    for path in sorted((workspace / "reports").glob("**/metrics.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            visit(path.parent.relative_to(workspace / "reports").as_posix(), data)
    return rows


def render_report(summary: dict[str, Any]) -> str:
    """The run as Markdown: what ran, what was cached, and the metrics."""

    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "" if x is None else str(x)

    lines = ["# FER pipeline run", ""]
    if summary.get("experiment"):
        lines += [f"DVC experiment **{summary['experiment']}** (`dvc exp apply` to use it)", ""]
    if summary.get("overrides"):
        lines += ["Overrides: " + ", ".join(f"`{o}`" for o in summary["overrides"]), ""]
    lines += ["| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {fmt(r['seconds'])} |" for r in summary["stages"]]
    by = {s: [r["stage"] for r in summary["stages"] if r["status"] == s] for s in ("ran", "cached")}
    lines += ["", f"Ran: {', '.join(by['ran']) or 'nothing'}."]
    lines += [f"Cached: {', '.join(by['cached']) or 'nothing'}.", ""]
    metrics = summary.get("metrics") or {}
    if metrics:
        classes = list(dict.fromkeys(c for m in metrics.values() for c in m["recall"]))
        lines += ["| metrics | accuracy | macro-F1 | " + " | ".join(f"recall {c}" for c in classes)]
        lines[-1] += " |"
        lines += ["|---" * (3 + len(classes)) + "|"]
        for label, m in metrics.items():
            cells = [label, fmt(m["accuracy"]), fmt(m["macro_f1"])]
            cells += [fmt(m["recall"].get(c)) for c in classes]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No reports/**/metrics.json yet.")
    return "\n".join(lines) + "\n"


# --- the flow ----------------------------------------------------------------------------


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a run (unit tests): no run logger
        print(message, file=sys.stderr)


def _run_stages(plan: Plan, workspace: Path) -> tuple[list[StageResult], BaseException | None]:
    """Submit every stage after its upstream stages; collect results and the first failure."""
    futures: dict[str, PrefectFuture] = {}
    previous_new = None
    for stage in plan.order:
        after = [futures[u] for u in plan.upstream[stage]]
        if stage in plan.new:  # appended to dvc.lock in `dvc repro`'s order
            after += [futures[previous_new]] if previous_new else []
            previous_new = stage
        futures[stage] = dvc_stage.submit(stage, workspace, stage in plan.stale, wait_for=after)
    wait(list(futures.values()))
    results, failure = [], None
    for stage in plan.order:
        state = futures[stage].state
        if state.is_completed():
            results.append(futures[stage].result())
        elif state.is_failed():
            failure = failure or state.result(raise_on_failure=False)
            results.append(StageResult(stage, "failed"))
        else:  # NotReady: an upstream stage failed
            results.append(StageResult(stage, "skipped"))
    return results, failure


def _reproduce(
    run_dir: Path, remote: str | None, overrides: list[str], save: Callable[[], str] | None
) -> dict[str, Any]:
    """Run the stages in `run_dir`, save the experiment, push, and publish the report."""
    results, failure = _run_stages(plan_stages(run_dir), run_dir)
    summary: dict[str, Any] = {
        "workspace": str(run_dir),
        "overrides": overrides,
        "experiment": None,
        "remote": remote,
        "stages": [asdict(r) for r in results],
        "ran": [r.stage for r in results if r.status == "ran"],
        "cached": [r.stage for r in results if r.status in ("cached", "restored")],
        "metrics": read_metrics(run_dir),
    }
    if failure is None and save:
        summary["experiment"] = save()
    if failure is None and remote:
        dvc_push(run_dir, remote)
    create_markdown_artifact(
        markdown=render_report(summary), key="fer-pipeline-report", description="stages and metrics"
    )
    if failure is not None:
        raise failure
    return summary


@flow(name="fer-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL))
def fer_pipeline(
    workspace: Path = Path("."),
    overrides: list[str] | None = None,
    experiment_name: str | None = None,
    remote: str | None = None,
    lock_timeout_s: float = 24 * 3600,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline, one task run per stage; overrides run as a DVC experiment."""
    workspace = workspace.resolve()
    overrides = list(overrides or [])
    params_text = override_params(workspace / "params.yaml", overrides)  # before any work
    with workspace_lock(workspace, lock_timeout_s):
        remote = remote or default_remote(workspace)
        if remote:
            dvc_pull(workspace, remote)
        if not (overrides or experiment_name):
            return _reproduce(workspace, remote, overrides, save=None)
        snapshot = snapshot_workspace(workspace, params_text)
    # the experiment runs in its own clone: the next run may have the workspace meanwhile
    try:
        save = partial(save_experiment, snapshot, workspace, experiment_name)
        summary = _reproduce(snapshot.path, remote, overrides, save=save)
        return {**summary, "workspace": str(workspace)}
    finally:
        shutil.rmtree(snapshot.path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument(
        "-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--name", dest="experiment_name", help="experiment name (with -S)")
    parser.add_argument("--remote", help="DVC remote (default: the workspace's default remote)")
    args = parser.parse_args(argv)
    state = fer_pipeline(**vars(args), return_state=True)
    if not state.is_completed():
        print(state.message, file=sys.stderr)
        return 1
    summary = state.result()
    print(json.dumps({k: summary[k] for k in ("ran", "cached", "experiment")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
