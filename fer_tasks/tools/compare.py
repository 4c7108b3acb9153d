"""`fer compare`: the write-up's five configurations as named DVC experiments, side by side.

Each configuration is a params-override YAML in `fer_tasks/overlays/`
(only `model.weights`, `finetune.phases`, `finetune.final`). For each one this
module runs

    dvc exp run --temp -n NAME -S '++model.weights="..."' -S '~finetune.phases'
                -S '+finetune.phases={top:{after:"base",...},...}'
                -S '++finetune.final="..."' evaluate

(Hydra override syntax: `~` then `+` replaces the whole phase mapping; a plain
`-S key={...}` would merge into it and keep the baseline's phases. Not `-f`:
that also forces every stage to rerun; a same-named experiment of the same
commit is removed first instead.) `--temp` runs in a throwaway
copy of the last commit plus uncommitted edits to tracked files, so the
workspace and its `params.yaml` are never touched; the experiment is kept as
`refs/exps/.../NAME` (`dvc exp show`, `dvc exp apply NAME`). The per-phase
reports (`reports/phases/<phase>/{metrics.json,history.csv}`) and the test
metrics are then read back from the experiment commit with `dvc.api`, and
`comparison.{md,csv}` plus `curves.png` are written.

With `--jobs N` (N > 1) the same experiments go through DVC's queue instead:
each is queued with `dvc exp run --queue -n NAME -S ... evaluate` (a stash of
the same commit plus tracked edits), `dvc queue start --jobs N` runs N at once
in temporary copies, and the queue is polled (`dvc queue status`) until every
one is done; each experiment's output comes from `dvc queue logs`. The results
are read back exactly as above.

Overlays and their `-S` form: fer_tasks/lib/overlay.py; DVC: fer_tasks/lib/dvc_adapter.py;
the report: compare_report.py. Cheap to import (no TensorFlow, DVC or matplotlib
at module level).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fer_tasks.lib import dvc_adapter as dvc
from fer_tasks.lib import overlay
from fer_tasks.lib.errors import FerError, InputError, MissingInput
from fer_tasks.lib.io import write_json
from fer_tasks.lib.params import FinetuneParams, read_yaml
from fer_tasks.lib.reports import read_metrics
from fer_tasks.tools.compare_report import write_comparison

log = logging.getLogger(__name__)


POLL_S = 10.0  # seconds between two `dvc queue status` (each is a DVC process: ~1 s CPU)
STALLED_S = 60.0  # ours queued and nothing running this long: start the workers again
QUEUE_TIMEOUT_H = 48.0  # default for --queue-timeout: the write-up's five on a CPU fit easily


def exp_run_command(name: str, over: dict, target: str | None, queue: bool = False) -> list[str]:
    # not -f: it would also force every stage to rerun (no run-cache); a previous
    # experiment of the same name is removed first instead (remove_previous)
    if target == "final":  # the configuration's last phase: training only, no test metrics
        target = f"phase@{over['finetune']['final']}"
    set_params = overlay.to_set_params(over)
    targets = [target] if target else []
    return ["dvc", *dvc.exp_run_args(name, set_params, targets, temp=not queue, queue=queue)]


def remove_previous(root: Path, baseline: str, name: str) -> None:
    """Remove experiment `name` of commit `baseline` if there is one (a rerun replaces it)."""
    ref = dvc.exp_ref(baseline, name)
    exists = subprocess.run(["git", "rev-parse", "-q", "--verify", ref], cwd=root).returncode == 0
    if exists:
        log.info("removing the previous experiment %s (%s)", name, ref)
        dvc.dvc(root, "exp", "remove", ref)


def run_experiment(root: Path, name: str, over: dict, target: str | None, log_path: Path) -> dict:
    """Run one configuration as DVC experiment `name`; return rc, baseline, timings."""
    baseline = dvc.git(root, "rev-parse", "HEAD")
    remove_previous(root, baseline, name)
    res = dvc.stream(
        root,
        exp_run_command(name, over, target)[1:],
        log_path=log_path,
        on_line=lambda line: print(f"[{name}] {line}", flush=True),
    )
    return {
        "baseline": baseline,
        "rc": res.rc,
        "wall_s": res.wall_s,
        "train_s": res.train_s,
        "stages": res.stages,
    }


def run_queued(
    root: Path,
    resolved: dict[str, dict],
    target: str | None,
    logs_dir: Path,
    jobs: int,
    on_done: Callable[[str, dict], None],
    timeout_s: float = QUEUE_TIMEOUT_H * 3600,
    poll_s: float = POLL_S,
    environ: dict[str, str] | None = None,
) -> float:
    """Queue every configuration, run the queue with `jobs` workers, wait until all are done.
    The queue's workers get `environ` (default: dvc_adapter.env()).

    `on_done(name, run)` gets each experiment's run (as run_experiment's, plus the queue
    task and its final status) as it finishes. Returns the seconds from queueing to the
    last one done. Stages and wall time come from following `dvc queue logs --follow`
    once an experiment is seen running; the log file is DVC's whole log at the end.
    """
    baseline = dvc.git(root, "rev-parse", "HEAD")
    before = dvc.queue_status(root)
    busy = sorted({t.name for t in before if t.name in resolved and not t.done})
    if busy:
        raise InputError(
            f"already in DVC's queue, queued or running: {', '.join(busy)}; wait for them "
            "(`dvc queue status`) or stop them (`dvc queue kill NAME`, `dvc queue remove NAME`)"
        )
    others = [t for t in before if not t.done]
    if others:
        log.warning(
            "DVC's queue holds other experiments; its workers run them too: %s",
            ", ".join(t.name or t.task for t in others),
        )
    old = {t.task for t in before}
    t0 = time.monotonic()
    failed_to_queue: dict[str, str] = {}
    for n, over in resolved.items():
        remove_previous(root, baseline, n)
        try:
            dvc.dvc(root, *exp_run_command(n, over, target, queue=True)[1:])
            log.info("queued %s", n)
        except dvc.DvcError as err:
            log.error("configuration %s: could not be queued: %s", n, err)
            failed_to_queue[n] = str(err)
    tasks = {t.name: t.task for t in dvc.queue_status(root) if t.task not in old and t.name}
    for n, err in failed_to_queue.items():
        _write_log(logs_dir / f"{n}.log", f"dvc exp run --queue failed:\n{err}\n")
        on_done(n, _queued_run(baseline, None, "not queued", 0.0, None))
    for n in resolved:
        if n not in failed_to_queue and n not in tasks:
            _write_log(logs_dir / f"{n}.log", "queued, but not found in `dvc queue status`\n")
            on_done(n, _queued_run(baseline, None, "not in the queue", 0.0, None))
    pending = dict(tasks)
    log.info("dvc queue start --jobs %d: %d experiments", jobs, len(pending))
    dvc.queue_start(root, jobs, environ=environ)
    followers: dict[str, dvc.QueueFollower] = {}
    seen_running: dict[str, float] = {}
    missing: dict[str, int] = {}
    stalled = 0
    try:
        while pending:
            time.sleep(poll_s)
            status = dvc.queue_status(root)
            by_task = {t.task: t for t in status}
            now = time.monotonic()
            for n, task in list(pending.items()):
                t = by_task.get(task)
                # a task moving between DVC's lists can be missing from one status: twice
                missing[n] = missing.get(n, 0) + 1 if t is None else 0
                if t is None and missing[n] < 2:
                    continue
                state = t.status if t else "removed from the queue"
                if t and t.status == "Running" and n not in followers:
                    seen_running.setdefault(n, now)
                    followers[n] = dvc.QueueFollower(
                        root,
                        task,
                        on_line=lambda line, n=n: print(f"[{n}] {line}", flush=True),
                        log_path=logs_dir / f"{n}.log",
                    )
                elif t and n in followers and _failed_to_attach(followers[n]) and not t.done:
                    del followers[n]  # started before its log existed: again next poll
                if t is None or t.done:
                    seen_running.setdefault(n, now)
                    run = _finish(root, n, task, state, followers.pop(n, None), logs_dir)
                    run = _queued_run(baseline, task, state, now - seen_running[n], run)
                    del pending[n]
                    done = len(resolved) - len(pending)
                    took = f"{run['wall_s']:.0f} s" if run["wall_s"] else "-"
                    print(
                        f"[{n}] {state}: {took} ({done} of {len(resolved)} done, "
                        f"{now - t0:.0f} s since queueing)",
                        flush=True,
                    )
                    on_done(n, run)
            # ours wait and nothing at all runs: the workers are gone (a live one takes a
            # queued task within seconds); start them again
            queued = [n for n in pending if (t := by_task.get(pending[n])) and not t.done]
            running = any(t.status == "Running" for t in status)
            stalled = stalled + 1 if queued and not running else 0
            if stalled * poll_s >= STALLED_S:
                log.warning(
                    "nothing ran for %.0f s: dvc queue start --jobs %d again", STALLED_S, jobs
                )
                dvc.queue_start(root, jobs, environ=environ)
                stalled = 0
            if pending and time.monotonic() - t0 > timeout_s:
                _give_up(root, pending, by_task, followers, logs_dir, baseline, timeout_s, on_done)
                pending = {}
    except KeyboardInterrupt:
        for f in followers.values():
            f.stop()
        log.warning(
            "interrupted; the queued experiments go on in the background: `dvc queue "
            "status`, `dvc queue logs NAME`, `dvc queue kill %s`",
            " ".join(pending),
        )
        raise
    return time.monotonic() - t0


def _failed_to_attach(f: dvc.QueueFollower) -> bool:
    return not f.running() and f.proc.returncode not in (0, None)


def _queued_run(
    baseline: str, task: str | None, state: str, seen_s: float, res: dvc.RunResult | None
) -> dict:
    """A queued experiment's run record. Timings from its follower where one ran, else
    from the polls (`seen_s`: first seen running to seen done; 0: never seen running)."""
    return {
        "baseline": baseline,
        "rc": 0 if state == "Success" else 1,
        "wall_s": res.wall_s if res is not None else (seen_s or None),
        "train_s": res.train_s if res is not None else None,
        "stages": res.stages if res is not None else {},
        "queue_task": task,
        "queue_status": state,
    }


def _finish(
    root: Path,
    name: str,
    task: str,
    state: str,
    follower: dvc.QueueFollower | None,
    logs_dir: Path,
) -> dvc.RunResult | None:
    """A finished experiment: its follower's timings, DVC's whole log into NAME.log."""
    res = None
    if follower is not None:
        if not follower.wait(30):  # DVC says done, its log never ends (a killed process)
            follower.stop()
            res = follower.result()
        elif follower.proc.returncode == 0:  # else it never attached: no timings
            res = follower.result()
    try:
        text = dvc.queue_logs(root, task) if state != "removed from the queue" else ""
    except dvc.DvcError as err:  # e.g. failed before its process started: no log
        text = f"`dvc queue logs {task}` gave no log:\n{err}\n"
    if text or res is None:
        _write_log(logs_dir / f"{name}.log", f"$ dvc queue logs {task}  # {state}\n{text}")
    return res


def _give_up(root, pending, by_task, followers, logs_dir, baseline, timeout_s, on_done) -> None:
    """The overall timeout: kill ours still running, drop ours still queued, report them."""
    log.error(
        "the queue did not finish in %.1f h: stopping %s", timeout_s / 3600, ", ".join(pending)
    )
    states = {task: by_task[task].status for task in pending.values() if task in by_task}
    for stop, state in ((dvc.queue_kill, "Running"), (dvc.queue_remove, "Queued")):
        try:
            stop(root, [task for task, s in states.items() if s == state])
        except dvc.DvcError as err:
            log.error("%s", err)
    for n, task in pending.items():
        f = followers.pop(n, None)
        if f is not None:
            f.stop()
        res = f.result() if f is not None else None
        _write_log(logs_dir / f"{n}.log", f"timed out after {timeout_s:.0f} s: stopped\n", "a")
        on_done(n, _queued_run(baseline, task, "timed out", timeout_s, res))


def _write_log(path: Path, text: str, mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as fh:
        fh.write(text)


def _finetune(over: dict, base: dict) -> FinetuneParams:
    ft = overlay.apply(base.get("finetune", {}), over.get("finetune", {}), ("finetune",))
    return FinetuneParams.model_validate(ft)


def read_results(root: Path, rev: str, over: dict, base: dict) -> dict:
    """Final-phase val metrics, per-phase collapse and the joined curve of experiment `rev`."""

    def read(path: str) -> str | None:
        try:
            return dvc.read(root, path, rev)
        except Exception:  # noqa: BLE001 - absent at that commit (evaluate not a target)
            return None

    ft = _finetune(over, base)
    chain = ft.chain()
    models = {m.name: m for m in read_metrics(read, chain)}
    collapsed = [
        f"{n} ({m.max_class_share:.0%})"
        for n in chain
        if (m := models.get(f"phase@{n} (val)")) is not None
        and (m.max_class_share or 0.0) > ft.phases[n].max_class_share
    ]
    final = models[f"phase@{ft.final} (val)"]  # KeyError: the run has no final phase metrics
    history = list(
        csv.DictReader(io.StringIO(read(f"reports/phases/{ft.final}/history.csv") or ""))
    )
    test = [m.accuracy for m in models.values() if m.name.startswith("final model")]
    return {
        "val_accuracy": final.accuracy,
        "val_loss": final.loss,
        "val_macro_f1": final.macro_f1,
        "max_class_share": final.max_class_share,
        "collapsed": "; ".join(collapsed) or "no",
        "epochs": len(history) or final.epochs,
        "test_accuracy": test[0] if test else None,
        "history": [
            {
                "epoch": int(r["epoch"]),
                "phase": r.get("phase", ""),
                **{k: float(r[k]) for k in ("val_loss", "val_accuracy") if r.get(k)},
            }
            for r in history
        ],
    }


def _phase_summary(over: dict, base: dict) -> str:
    ft = _finetune(over, base)
    return " -> ".join(f"{ft.phases[p].unfreeze}:{ft.phases[p].epochs}" for p in ft.chain())


def compare(
    params_path: Path = Path("params.yaml"),
    configs: list[str] | None = None,
    epochs_scale: float = 1.0,
    out_dir: Path = Path("reports/compare"),
    phase_set: list[str] = (),
    target: str | None = "evaluate",
    dry_run: bool = False,
    report_only: bool = False,
    jobs: int = 1,
    queue_timeout_h: float = QUEUE_TIMEOUT_H,
) -> list[dict]:
    """Run each configuration as a DVC experiment, then write the comparison; return its rows.

    `jobs` 1: one after another (`dvc exp run --temp`); more: all through DVC's queue,
    `jobs` at once. Every run leaves `out_dir/runs/NAME.json` (experiment commit,
    timings, the overrides run); `report_only` skips running and rebuilds the report
    from those.
    """
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: at least 1")
    params_path = Path(params_path)
    if params_path.name != "params.yaml":  # `dvc exp run -S key=...` edits params.yaml
        raise InputError(f"{params_path}: fer compare works on the project's params.yaml")
    root = params_path.resolve().parent
    if not (root / "dvc.yaml").is_file():
        raise MissingInput(f"{root}/dvc.yaml: run fer compare from the project root")
    base = read_yaml(params_path.read_text())
    names = configs or list(overlay.WRITEUP)
    pset = overlay.parse_phase_set(list(phase_set))
    resolved = {
        n: overlay.resolve(base, n, epochs_scale, pset) for n in names
    }  # all validate first
    queued = jobs > 1
    if dry_run:
        for n, over in resolved.items():
            print(" ".join(shlex.quote(c) for c in exp_run_command(n, over, target, queue=queued)))
        if queued:
            print(f"dvc queue start --jobs {jobs}")
        return []
    out_dir = root / out_dir if not Path(out_dir).is_absolute() else Path(out_dir)
    if not report_only:
        untracked = dvc.git(root, "ls-files", "--others", "--exclude-standard")
        if untracked:
            log.warning(
                "dvc exp run %s sees only files git tracks; these untracked files are "
                "left out of every experiment (git add them if a stage needs them):\n  %s",
                "--queue" if queued else "--temp",
                "\n  ".join(untracked.splitlines()[:20]),
            )
    records: dict[str, dict] = {}
    rows: list[dict] = []  # the last report's

    def record_path(n: str) -> Path:
        return out_dir / "runs" / f"{n}.json"

    def in_order() -> dict[str, dict]:
        return {n: records[n] for n in resolved if n in records}

    def finished(n: str, run: dict) -> None:
        rev = None
        if run["rc"] == 0:
            try:
                rev = dvc.git(root, "rev-parse", "--verify", dvc.exp_ref(run["baseline"], n))
            except dvc.DvcError as err:
                log.error("configuration %s: no experiment commit: %s", n, err)
        record = {
            "config": n,
            **run,
            "rev": rev,
            "epochs_scale": epochs_scale,
            "phase_set": pset,
            "target": target,
            "jobs": jobs,
            "overrides": resolved[n],
            "finished": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        }
        write_json(record_path(n), record)
        records[n] = record
        # rewritten after every run: a long run leaves a partial table
        rows[:] = _report(root, base, in_order(), out_dir)
        log.info("configuration %s: %s", n, next(r for r in rows if r["config"] == n)["status"])

    if report_only:
        for n, over in resolved.items():
            if record_path(n).is_file():
                records[n] = json.loads(record_path(n).read_text())
            else:
                log.warning("configuration %s: no run recorded in %s", n, record_path(n))
                records[n] = {"config": n, "overrides": over, "rc": None}
        return _report(root, base, in_order(), out_dir)
    for n, over in resolved.items():
        log.info("configuration %s: %s", n, _phase_summary(over, base))
        if not queued:  # one after another
            finished(n, run_experiment(root, n, over, target, out_dir / "logs" / f"{n}.log"))
    if not queued:
        return rows
    total = run_queued(
        root, resolved, target, out_dir / "logs", jobs, finished, timeout_s=queue_timeout_h * 3600
    )
    log.info("the queue: %d experiments, %d at once, %.0f s", len(resolved), jobs, total)
    for rec in records.values():  # the batch's total, for the table's notes
        rec["queue_wall_s"] = total
        write_json(record_path(rec["config"]), rec)
    return _report(root, base, in_order(), out_dir)


def _row(root: Path, base: dict, rec: dict) -> tuple[dict, list[dict] | None]:
    n, over = rec["config"], rec["overrides"]
    row = {"config": n, "phases": _phase_summary(over, base)}
    for k in ("wall_s", "train_s"):
        if rec.get(k) is not None:
            row[k] = round(rec[k], 1)
    if rec.get("rc") is None:
        return {**row, "status": "not run"}, None
    if rec["rc"] != 0:
        why = f"dvc queue: {rec['queue_status']}" if rec.get("queue_status") else f"rc {rec['rc']}"
        return {**row, "status": f"failed ({why}, logs/{n}.log)"}, None
    if not rec.get("rev"):
        return {**row, "status": "no experiment commit"}, None
    try:
        res = read_results(root, rec["rev"], over, base)
    except Exception as err:  # noqa: BLE001 - one unreadable run must not lose the rest
        log.error("configuration %s: cannot read results: %s", n, err)
        return {**row, "status": f"no results: {err}"}, None
    curve = res.pop("history")
    return {**row, **res, "status": f"ok (exp {n}, {rec['rev'][:7]})"}, curve


def _setting(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _report(root: Path, base: dict, records: dict[str, dict], out_dir: Path) -> list[dict]:
    rows, curves = [], {}
    for n, rec in records.items():
        row, curve = _row(root, base, rec)
        rows.append(row)
        if curve:
            curves[n] = curve
    ran = [r for r in records.values() if r.get("rc") is not None]
    done = [r["finished"] for r in ran if r.get("finished")]
    notes = [
        f"data: `{base.get('prepare', {}).get('source', '?')}`; backbone: "
        f"`{base.get('model', {}).get('backbone', '?')}`; "
        "runs finished " + (" to ".join(sorted({min(done), max(done)})) if done else "-"),
    ]
    for key, what in (
        ("epochs_scale", "epochs scaled by (the write-up: 30 epochs per configuration)"),
        ("phase_set", "set in every phase"),
        ("target", "stages run up to"),
    ):
        seen = sorted({_setting(r.get(key)) for r in ran} - {""})
        if seen:
            notes.append(f"{what}: {' / '.join(f'`{v}`' for v in seen)}")
    for jobs in sorted({r["jobs"] for r in ran if (r.get("jobs") or 1) > 1}):
        batch = [r for r in ran if r.get("jobs") == jobs]
        totals = sorted({round(r["queue_wall_s"]) for r in batch if r.get("queue_wall_s")})
        notes.append(
            f"run through DVC's queue, {jobs} at once (`dvc exp run --queue`, `dvc queue start "
            f"--jobs {jobs}`): {', '.join(r['config'] for r in batch)}"
            + (
                f"; {' / '.join(map(str, totals))} s from queueing to the last one done"
                if totals
                else ""
            )
            + f". Their wall s and train s come from following `dvc queue logs` (1 s "
            f"resolution; counted from when the run was first seen running, up to {POLL_S:.0f} s "
            "late) and include time shared with the experiments running beside them"
        )
    notes.append(
        "each row is a DVC experiment named after the configuration (`dvc exp show`, "
        "`dvc exp apply NAME`); configurations: `fer_tasks/overlays/NAME.yaml`, "
        "docs/experiments.md; the `epochs` column is what ran"
    )
    paths = write_comparison(rows, curves, out_dir, notes)
    log.info("wrote %s, %s, %s", paths["md"], paths["csv"], paths["png"])
    return rows


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The `fer compare` options (the CLI adds --params and -v)."""
    sp.add_argument(
        "--configs",
        nargs="+",
        metavar="NAME",
        help=f"overlays to run (default: the write-up's five: {', '.join(overlay.WRITEUP)}; "
        "any of `fer preset --list`)",
    )
    sp.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every phase's epochs by F, at least 1 each (0.1: 3 of 30 epochs)",
    )
    sp.add_argument("--out", default="reports/compare", help="output folder (default: %(default)s)")
    sp.add_argument(
        "--phase-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a phase param in every phase of every configuration, e.g. steps_per_epoch=20",
    )
    sp.add_argument(
        "--target",
        default="evaluate",
        help="last stage each experiment runs (default: %(default)s; 'final': the last "
        "phase, training only; 'export': the whole pipeline)",
    )
    sp.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="1 (default): one experiment after another (`dvc exp run --temp`); N > 1: queue "
        "them all (`dvc exp run --queue`) and run N at once (`dvc queue start --jobs N`)",
    )
    sp.add_argument(
        "--queue-timeout",
        type=float,
        default=QUEUE_TIMEOUT_H,
        metavar="HOURS",
        help="with --jobs N > 1: stop the experiments still queued or running after this "
        "long (default: %(default)g)",
    )
    sp.add_argument(
        "--dry-run", action="store_true", help="validate and print the dvc commands; run nothing"
    )
    sp.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the report from the runs recorded in OUT/runs/",
    )


def run(a: argparse.Namespace) -> int:
    rows = compare(
        Path(a.params),
        configs=a.configs,
        epochs_scale=a.epochs_scale,
        out_dir=Path(a.out),
        phase_set=a.phase_set,
        target=a.target or None,
        dry_run=a.dry_run,
        report_only=a.report_only,
        jobs=a.jobs,
        queue_timeout_h=a.queue_timeout,
    )
    failed = [r["config"] for r in rows if not str(r.get("status", "")).startswith("ok")]
    if failed:
        raise FerError(f"configurations without results: {', '.join(failed)}")
    return 0
