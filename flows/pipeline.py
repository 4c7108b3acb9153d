"""The DVC stage graph as a Prefect flow: one task run per stage; DVC decides what is stale.

`fer_pipeline` asks DVC for `dvc repro`'s plan (the stages of `dvc.yaml`, read
from it, never listed here) and for what changed (`dvc status`), through
fer_tasks/lib/dvc_adapter.py. A changed stage and everything downstream of it
is *possibly stale* and runs as `dvc --wait-for-lock repro --single-item
<stage>`, so DVC re-checks it (it may still skip it, or restore it from the
run-cache), runs its command and writes `dvc.lock` exactly as `dvc repro`
does. Every other stage is reported as a `Cached` task run without starting a
stage, so a fully cached pipeline costs three read-only DVC commands.
Independent branches (the SVM baseline next to fine-tuning) run side by side;
stages with no `dvc.lock` entry yet run in `dvc repro`'s own order, so a
freshly written lock file matches byte for byte.

Parameter overrides use `dvc exp run -S` syntax (`key=value`), are checked
like `fer validate` before any work, and run as `dvc exp run --temp -S ...`:
a DVC experiment in a temporary copy of the last commit plus uncommitted
edits to tracked files (`dvc exp show`, `dvc exp apply <name>`), one task
whose per-stage results come from DVC's output. Commit `dvc.lock` first, or
the experiment starts without it (the flow warns).
The workspace, its `params.yaml` and `dvc.lock` are left untouched.

`share=<git remote>` (the `*-anywhere` deployments of prefect-worker.yaml,
which clone the code on the worker) shares runs between workspaces and hosts
with DVC experiments: first `dvc exp pull` of the remote's experiments of
this commit and, when stages are stale, `dvc exp apply` of the newest one with
the same `params.yaml` (its `dvc.lock` and cached outputs), so only stages
whose inputs differ run; last, the run itself as an experiment (`dvc exp save`,
or the `-S` experiment) sent with `dvc exp push` (git ref + cached outputs).
Stage commands import the workspace's own `fer_tasks` (PYTHONPATH), not the
installed copy, so a worker runs the code of the ref it cloned.

`sweep=[[...], [...]]` runs one DVC experiment per list of overrides through
DVC's queue (`dvc exp run --queue`, `dvc queue start --jobs <jobs>`), as
`fer compare --jobs` does; each is named `<name>-<i>`.

One run at a time per workspace: an exclusive file lock (`.dvc/tmp/fer-flow.lock`)
makes a second run wait.

    python -m flows.pipeline                      # like `dvc repro`
    python -m flows.pipeline -S svm.C=0.5         # like `dvc exp run --temp -S svm.C=0.5`
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from fer_tasks.lib import dvc_adapter as dvc
from fer_tasks.lib import overlay
from fer_tasks.lib.params import parse_params, read_yaml
from fer_tasks.lib.reports import Reader, files, pictures_markdown, read_metrics

LOCK_FILE = ".dvc/tmp/fer-flow.lock"  # under .dvc/tmp: ignored by git and DVC
SWEEP_LOGS = ".dvc/tmp/fer-sweep"  # one log per queued experiment
MAX_PARALLEL = 2  # stage processes at once (independent branches only)
# only tasks that talk to remote storage retry: 10 s, 20 s, 40 s (+-20 %)
REMOTE_RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.2,
    cache_policy=NO_CACHE,  # DVC is the cache of record, not Prefect
)
_EXPERIMENT = re.compile(r"^Ran experiment\(s\): (\S+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class StageFailed(RuntimeError):
    """A stage's `dvc repro` exited non-zero; the message ends with its output's tail."""


@dataclass(frozen=True)
class StageResult:
    stage: str
    status: str  # ran | cached | restored (from the DVC run-cache) | failed | skipped
    seconds: float = 0.0


def stage_env() -> dict[str, str]:
    """DVC's environment: stage commands import the code of the repository they run in
    (`.` is each stage's working directory, also inside a `dvc exp run --temp` copy)."""
    return dvc.env(PYTHONPATH=os.pathsep.join(filter(None, [".", os.environ.get("PYTHONPATH")])))


# --- tasks -----------------------------------------------------------------------------


@task(task_run_name="{stage}", cache_policy=NO_CACHE)
def dvc_stage(stage: str, workspace: Path, stale: bool) -> StageResult | State:
    """Reproduce one stage with `dvc repro --single-item`, or report it as cached."""
    if not stale:
        return Completed(
            name="Cached", message="up to date in dvc.lock", data=StageResult(stage, "cached")
        )
    log = get_run_logger()
    res = dvc.stream(
        workspace,
        ["--wait-for-lock", "repro", "--single-item", stage],
        on_line=log.info,
        environ=stage_env(),
    )
    if res.rc:
        raise StageFailed(
            f"stage {stage!r} failed: `dvc repro --single-item {stage}` exited "
            f"{res.rc} in {workspace}; last output:\n" + "\n".join(res.tail)
        )
    if stage in res.stages:
        return StageResult(stage, "ran", round(res.wall_s, 2))
    restored = stage in res.restored
    message = "restored from the DVC run-cache" if restored else "DVC: unchanged"
    result = StageResult(stage, "restored" if restored else "cached", round(res.wall_s, 2))
    return Completed(name="Cached", message=message, data=result)


@task(task_run_name="dvc exp run {name}", cache_policy=NO_CACHE)
def dvc_experiment(workspace: Path, name: str | None, set_params: list[str]) -> dict:
    """`dvc exp run --temp`: the whole pipeline as one DVC experiment; per-stage seconds."""
    lines: list[str] = []
    log = get_run_logger()

    def on_line(line: str) -> None:
        lines.append(line)
        log.info(line)

    args = dvc.exp_run_args(name, set_params, temp=True)
    res = dvc.stream(workspace, args, on_line=on_line, environ=stage_env())
    if res.rc:
        failed = list(res.stages)[-1] if res.stages else "?"
        raise StageFailed(
            f"stage {failed!r} failed: `dvc exp run --temp` exited {res.rc} in {workspace}; "
            "last output:\n" + "\n".join(res.tail)
        )
    names = [m.group(1) for line in lines if (m := _EXPERIMENT.match(line))]
    return {"experiment": names[-1] if names else name, "stages": res.stages}


@task(task_run_name="dvc queue: {count} experiments, {jobs} at once", cache_policy=NO_CACHE)
def dvc_sweep(workspace: Path, experiments: dict[str, dict], jobs: int, count: int) -> dict:
    """Queue one experiment per overlay, run them `jobs` at a time; their run records."""
    from fer_tasks.tools.compare import run_queued

    log = get_run_logger()
    runs: dict[str, dict] = {}

    def done(name: str, run: dict) -> None:
        runs[name] = run
        ran = ", ".join(run["stages"]) or "nothing"
        log.info(f"{name}: {run['queue_status']} in {run['wall_s'] or 0:.0f} s; ran {ran}")

    # the queue's workers run the stages: they, too, import the workspace's code
    run_queued(
        workspace, experiments, None, workspace / SWEEP_LOGS, jobs, done, environ=stage_env()
    )
    return runs


@task(**REMOTE_RETRIES)
def dvc_pull(workspace: Path, remote: str) -> None:
    """Fetch inputs and cached outputs from the DVC remote (network I/O: retried)."""
    get_run_logger().info(dvc.dvc(workspace, "pull", "--allow-missing", "--remote", remote))


@task(**REMOTE_RETRIES)
def dvc_push(workspace: Path, remote: str) -> None:
    """Upload the outputs and the run-cache (an experiment's stages) to the DVC remote."""
    get_run_logger().info(dvc.dvc(workspace, "push", "--run-cache", "--remote", remote))


@task(**REMOTE_RETRIES)
def dvc_exp_pull(workspace: Path, git_remote: str) -> list[str]:
    """`dvc exp pull`: the git remote's experiments of this commit, with their cached outputs."""
    if dvc.git(workspace, "rev-parse", "--is-shallow-repository") == "true":
        # DVC experiments need the commit's parents (Prefect's git_clone is --depth 1)
        get_run_logger().info("shallow clone: git fetch --unshallow")
        dvc.git(workspace, "fetch", "--unshallow", "--quiet")
    get_run_logger().info(dvc.dvc(workspace, "exp", "pull", git_remote).strip())
    return shared_runs(workspace)


@task(**REMOTE_RETRIES)
def dvc_exp_push(workspace: Path, git_remote: str, name: str) -> None:
    """`dvc exp push`: the experiment's git ref to the remote, its outputs to the DVC remote."""
    get_run_logger().info(dvc.dvc(workspace, "exp", "push", git_remote, name).strip())


@task(cache_policy=NO_CACHE)
def reuse_shared_run(workspace: Path, candidates: list[str]) -> str | None:
    """`dvc exp apply` the newest experiment of this commit with the same params.yaml."""
    name = pick_shared_run(workspace, candidates)
    if name is None:
        get_run_logger().info("no shared run of this commit has the same params.yaml")
        return None
    get_run_logger().info(dvc.dvc(workspace, "exp", "apply", name).strip())
    # `dvc exp run --temp` copies tracked files only: the applied lock goes with it
    dvc.git(workspace, "add", "dvc.lock")
    return name


def pick_shared_run(workspace: Path, candidates: list[str]) -> str | None:
    """The first of `candidates` (experiments of HEAD) whose params.yaml equals the workspace's."""
    mine = read_yaml((workspace / "params.yaml").read_text())
    head = dvc.git(workspace, "rev-parse", "HEAD")
    for name in candidates:
        try:
            theirs = dvc.git(workspace, "show", f"{dvc.exp_ref(head, name)}:params.yaml")
        except dvc.DvcError:
            continue
        if read_yaml(theirs) == mine:
            return name
    return None


def shared_runs(workspace: Path) -> list[str]:
    """Experiments of HEAD in this repository, newest first."""
    head = dvc.git(workspace, "rev-parse", "HEAD")
    prefix = dvc.exp_ref(head, "")
    out = dvc.git(
        workspace,
        "for-each-ref",
        "--sort=-committerdate",
        "--format=%(refname)",
        prefix,
    )
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def run_name(given: str | None, taken: list[str]) -> str:
    """An experiment name: `given`, else this flow run's name, unique among `taken`."""
    if given:
        return given
    try:
        from prefect.runtime import flow_run

        base = _UNSAFE.sub("-", flow_run.get_name() or "").strip("-")
    except Exception:  # noqa: BLE001 - outside a flow run
        base = ""
    base = base or time.strftime("run-%Y%m%d-%H%M%S")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def save_run(workspace: Path, name: str) -> None:
    """`dvc exp save`: the workspace's dvc.lock, params and metrics as experiment `name`."""
    untracked = [] if _tracked(workspace, "dvc.lock") else ["-I", "dvc.lock"]
    _log(dvc.dvc(workspace, "exp", "save", "-n", name, *untracked).strip())


# --- workspace lock, parameter overrides ---------------------------------------------------


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


def override_params(params_file: Path, overrides: list[str]) -> dict:
    """The `-S key=value` overrides as an overlay, checked like `fer validate` with it applied."""
    over = overlay.parse_set(overrides)
    where = f"{params_file} with -S {' '.join(overrides)}" if overrides else params_file
    parse_params(overlay.apply(read_yaml(params_file.read_text()), over), where)
    return over


def read_report_metrics(read: Reader) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1 and per-class recall of every model with metrics (lib/reports.py)."""
    text = read("params.yaml")
    phases = parse_params(read_yaml(text)).finetune.chain() if text else []
    return {
        m.name: {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "recall": m.recall}
        for m in read_metrics(read, phases)
    }


def experiment_files(
    workspace: Path, name: str, mode: str = "r"
) -> Callable[[str], str | bytes | None]:
    """A reader of experiment `name`'s commit (of the workspace's HEAD), via dvc.api;
    mode "rb" reads bytes (evaluate's pictures)."""
    ref = dvc.exp_ref(dvc.git(workspace, "rev-parse", "HEAD"), name)

    def read(rel: str) -> str | bytes | None:
        try:
            return dvc.read(workspace, rel, ref, mode=mode)
        except Exception:  # noqa: BLE001 - not in that commit
            return None

    return read


def render_report(summary: dict[str, Any]) -> str:
    """The run as Markdown: what ran, what was cached, and the metrics."""

    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "" if x is None else str(x)

    lines = ["# FER pipeline run", ""]
    if summary.get("experiment"):
        lines += [f"DVC experiment **{summary['experiment']}** (`dvc exp apply` to use it)", ""]
    if summary.get("reused"):
        lines += [f"Started from the shared run **{summary['reused']}** (`dvc exp apply`)", ""]
    if summary.get("overrides"):
        lines += ["Overrides: " + ", ".join(f"`{o}`" for o in summary["overrides"]), ""]
    for r in summary.get("sweep") or []:
        final = [m for k, m in (r.get("metrics") or {}).items() if k.startswith("final model")]
        acc = fmt(final[0]["accuracy"]) if final else ""
        lines += [
            f"- **{r['experiment']}** ({', '.join(f'`{o}`' for o in r['overrides'])}): "
            f"{r['queue_status']}, ran {', '.join(r['stages']) or 'nothing'}"
            + (f", final model accuracy {acc}" if acc else "")
        ]
    if summary.get("sweep"):
        lines += [""]
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
    # evaluate's pictures: the workspace's, or those in an experiment's commit
    # ("pictures": "workspace" or the experiment's name; None for a sweep)
    source = summary.get("pictures", None if summary.get("experiment") else "workspace")
    if summary.get("workspace") and source:
        ws = Path(summary["workspace"])
        read = None if source == "workspace" else experiment_files(ws, source, mode="rb")
        lines += ["", *pictures_markdown(ws, read_bytes=read)]
    return "\n".join(lines) + "\n"


# --- the flow ----------------------------------------------------------------------------


def _tracked(workspace: Path, rel: str) -> bool:
    try:
        return bool(dvc.git(workspace, "ls-files", "--", rel))
    except dvc.DvcError:
        return False


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a run (unit tests): no run logger
        print(message, file=sys.stderr)


def _run_stages(plan: dvc.Plan, workspace: Path) -> tuple[list[StageResult], BaseException | None]:
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


def _summary(
    workspace: Path, results: list[StageResult], read: Reader, **extra: Any
) -> dict[str, Any]:
    return {
        "workspace": str(workspace),
        "experiment": None,
        **extra,
        "stages": [asdict(r) for r in results],
        "ran": [r.stage for r in results if r.status == "ran"],
        "cached": [r.stage for r in results if r.status in ("cached", "restored")],
        "metrics": read_report_metrics(read),
    }


def _publish(
    summary: dict[str, Any], failure: BaseException | None, share: str | None = None
) -> dict[str, Any]:
    workspace = Path(summary["workspace"])
    if failure is None and summary["remote"]:
        dvc_push(workspace, summary["remote"])
    if failure is None and share:
        dvc_exp_push(workspace, share, summary["experiment"])
    _log(
        f"ran: {', '.join(summary['ran']) or 'nothing'}; "
        f"cached: {', '.join(summary['cached']) or 'nothing'}"
        + (f"; experiment {summary['experiment']}" if summary.get("experiment") else "")
    )
    create_markdown_artifact(
        markdown=render_report(summary), key="fer-pipeline-report", description="stages and metrics"
    )
    if failure is not None:
        raise failure
    return summary


def _run_sweep(
    workspace: Path,
    plan: dvc.Plan,
    base: str,
    sweep: list[list[str]],
    overs: list[dict],
    jobs: int,
    remote: str | None,
    share: str | None,
) -> dict[str, Any]:
    names = [f"{base}-{i + 1}" for i in range(len(overs))]
    runs = dvc_sweep(workspace, dict(zip(names, overs, strict=True)), jobs, len(names))
    rows, failed = [], []
    for name, overrides in zip(names, sweep, strict=True):
        run = runs.get(name, {"queue_status": "not run", "stages": {}, "wall_s": None})
        row = {"experiment": name, "overrides": list(overrides), **run}
        if run["queue_status"] == "Success":
            row["metrics"] = read_report_metrics(experiment_files(workspace, name))
            if share:
                dvc_exp_push(workspace, share, name)
        else:
            failed.append(name)
        rows.append(row)
    summary = _summary(
        workspace, [], lambda rel: None, remote=remote, overrides=[], pictures=None
    )  # the workspace's pictures are the base's; each experiment has its own
    summary.update(sweep=rows, ran=sorted({s for r in rows for s in r["stages"]}))
    summary["cached"] = [s for s in plan.order if s not in summary["ran"]]
    _log("sweep: " + "; ".join(f"{r['experiment']} {r['queue_status']}" for r in rows))
    failure = StageFailed(f"experiments failed: {', '.join(failed)}") if failed else None
    return _publish(summary, failure)


@flow(name="fer-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL))
def fer_pipeline(
    workspace: Path = Path("."),
    overrides: list[str] | None = None,
    experiment_name: str | None = None,
    remote: str | None = None,
    lock_timeout_s: float = 24 * 3600,
    share: str | None = None,
    sweep: list[list[str]] | None = None,
    jobs: int = 2,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline, one task run per stage; overrides run as a DVC experiment.

    `share`: a git remote (e.g. "origin") whose DVC experiments of this commit are
    reused and to which this run is pushed as one (see the module docstring).
    """
    workspace = workspace.resolve()
    overrides = list(overrides or [])
    over = override_params(workspace / "params.yaml", overrides)  # before any work
    sweep_overs = [override_params(workspace / "params.yaml", list(s)) for s in sweep or []]
    if sweep_overs and overrides:
        raise ValueError("give either overrides (one experiment) or sweep (several), not both")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    with workspace_lock(workspace, lock_timeout_s):
        remote = remote or dvc.default_remote(workspace)
        if remote:
            dvc_pull(workspace, remote)
        plan = dvc.plan(workspace)
        reused, taken = None, []
        if share:
            taken = dvc_exp_pull(workspace, share)
            if plan.stale:
                reused = reuse_shared_run(workspace, taken)
                if reused:
                    plan = dvc.plan(workspace)
            experiment_name = run_name(experiment_name, taken)
        if sweep_overs:
            base = experiment_name or run_name(None, taken)
            return _run_sweep(workspace, plan, base, sweep, sweep_overs, jobs, remote, share)
        if not overrides and (share or not experiment_name):
            results, failure = _run_stages(plan, workspace)
            if failure is None and share:
                save_run(workspace, experiment_name)
            summary = _summary(
                workspace,
                results,
                files(workspace),
                remote=remote,
                overrides=[],
                reused=reused,
                experiment=experiment_name if share else None,
                pictures="workspace",
            )
            return _publish(summary, failure, share)
        if not _tracked(workspace, "dvc.lock"):
            _log(
                f"{workspace}/dvc.lock is not committed: the experiment starts from the last "
                "commit without it and reruns what it lacks (git add dvc.lock && git commit)"
            )
        state = dvc_experiment(
            workspace, experiment_name, overlay.to_set_params(over), return_state=True
        )
        exp = state.result(raise_on_failure=False) if state.is_completed() else {"stages": {}}
        results = [
            StageResult(s, "ran", round(exp["stages"][s], 2))
            if s in exp["stages"]
            else StageResult(s, "cached")
            for s in plan.order
        ]
        failure = None if state.is_completed() else state.result(raise_on_failure=False)
        name = exp.get("experiment")
        read = experiment_files(workspace, name) if name else (lambda rel: None)
        summary = _summary(
            workspace,
            results,
            read,
            remote=remote,
            overrides=overrides,
            experiment=name,
            reused=reused,
            pictures=name,
        )
        return _publish(summary, failure, share)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument(
        "-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--name", dest="experiment_name", help="experiment name (with -S)")
    parser.add_argument("--remote", help="DVC remote (default: the workspace's default remote)")
    parser.add_argument(
        "--share", metavar="GIT_REMOTE", help="reuse and push runs as DVC experiments there"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="'K=V K=V'",
        help="one queued experiment per --sweep (space-separated overrides); repeat it",
    )
    parser.add_argument("--jobs", type=int, default=2, help="experiments at once (--sweep)")
    args = parser.parse_args(argv)
    args.sweep = [s.split() for s in args.sweep] if args.sweep else None
    state = fer_pipeline(**vars(args), return_state=True)
    if not state.is_completed():
        print(state.message, file=sys.stderr)
        return 1
    summary = state.result()
    print(json.dumps({k: summary[k] for k in ("ran", "cached", "experiment")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
