"""The one module that talks to DVC, through its public surface only.

The Prefect flow, `fer compare` and the bench scripts plan and run stages and
experiments with these functions. They use DVC's command line (`dvc repro
[--dry] [--single-item]`, `dvc dag --dot`, `dvc status --json`, `dvc exp run
[--temp|--queue] -S`, `dvc queue start`, `dvc exp show --json`, `dvc remote
default`), `dvc.api` and the documented `dvc.lock` file, never DVC's internal
modules. The output lines parsed here ("Running stage 'x':" and the like) are
checked against the installed DVC by tests/test_dvc_adapter.py, and
pyproject.toml pins DVC to the minor versions those tests ran on.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fer_tasks.lib.errors import FerError

log = logging.getLogger(__name__)

TAIL_LINES = 40  # output lines carried in a failure's message
RUNNING = re.compile(r"^Running stage '([^']+)'")
RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")
_STAGE_END = re.compile(
    r"^(Updating lock file|Use `dvc push`|Stage '[^']+' (didn't change|is cached))"
)
_EDGE = re.compile(r'^"([^"]+)" -> "([^"]+)";$')


class DvcError(FerError, RuntimeError):
    """A DVC or git command exited non-zero; the message ends with its output's tail."""


def env(**extra: str) -> dict[str, str]:
    """The environment for DVC: stage commands find `fer` and `dvc` of this interpreter."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def repair_rwlock(cwd: Path) -> bool:
    """Reset DVC's `.dvc/tmp/rwlock` when a killed DVC process left it half-written.

    DVC rewrites that JSON file in place; a SIGKILL at that moment leaves it
    empty or cut, and every later `dvc` command then fails with "Unable to read
    RWLock-file" until it is removed (found by bench/kill_loop.py). It is reset
    only while no DVC process holds the repository lock (`.dvc/tmp/lock`, an
    flock), so a live process's lock table is never touched. True if it was reset.
    """
    tmp = Path(cwd) / ".dvc" / "tmp"
    rwlock = tmp / "rwlock"
    try:
        json.loads(rwlock.read_text())
        return False
    except FileNotFoundError:
        return False
    except ValueError:
        pass
    with open(tmp / "lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a DVC process is running: it owns the file
        try:
            from fer_tasks.lib.io import write_json

            write_json(rwlock, {"read": {}, "write": {}})
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    log.warning(
        "%s was half-written by a killed DVC process; reset it (no DVC process was running)",
        rwlock,
    )
    return True


def run(cwd: Path, *args: str, environ: dict[str, str] | None = None) -> str:
    """Run a command, return its stdout; raise DvcError with its output's tail on failure."""
    r = subprocess.run(args, cwd=cwd, env=environ or env(), capture_output=True, text=True)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-TAIL_LINES:])
        raise DvcError(f"`{shlex.join(args)}` exited {r.returncode} in {cwd}:\n{tail}")
    return r.stdout


def dvc(cwd: Path, *args: str, environ: dict[str, str] | None = None) -> str:
    repair_rwlock(cwd)
    return run(cwd, sys.executable, "-m", "dvc", *args, environ=environ)


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", *args).strip()


# --- running, with per-stage results from DVC's own output -------------------------------


@dataclass
class RunResult:
    rc: int
    wall_s: float
    stages: dict[str, float]  # seconds of every stage that ran, from its "Running stage" line
    restored: list[str] = field(default_factory=list)  # from the run-cache, not run
    tail: list[str] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        return list(self.stages)

    @property
    def train_s(self) -> float:
        return sum(s for k, s in self.stages.items() if k.startswith("phase@"))


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds per stage from time-stamped output: a stage lasts from its "Running stage"
    line to the next stage's, or to DVC's lock update, or to `end`."""
    out: dict[str, float] = {}
    current, t0 = None, 0.0
    for t, line in lines:
        m = RUNNING.match(line)
        if current is not None and (m or _STAGE_END.match(line)):
            out[current] = out.get(current, 0.0) + t - t0
            current = None
        if m:
            current, t0 = m.group(1), t
    if current is not None:
        out[current] = out.get(current, 0.0) + end - t0
    return out


def stream(
    cwd: Path,
    args: list[str],
    *,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    environ: dict[str, str] | None = None,
) -> RunResult:
    """Run `dvc ARGS`, handing each output line to `on_line` and `log_path` as it comes."""
    repair_rwlock(cwd)
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w")  # noqa: SIM115 - a stream, closed below
        log.write(f"$ dvc {shlex.join(args)}\n")
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "dvc", *args],
            cwd=cwd,
            env=environ or env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.monotonic() - t0, line.rstrip("\n")))
                if log is not None:
                    log.write(line)
                    log.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
    finally:
        if log is not None:
            log.close()
    wall = time.monotonic() - t0
    return RunResult(
        rc=proc.returncode,
        wall_s=wall,
        stages=stage_seconds(lines, wall),
        restored=[m.group(1) for _, line in lines if (m := RESTORED.match(line))],
        tail=[line for _, line in lines[-TAIL_LINES:]],
    )


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    order: list[str]  # `dvc repro`'s order: every stage after the stages it depends on
    upstream: dict[str, list[str]]
    stale: set[str]  # changed according to `dvc status`, plus everything downstream
    new: set[str]  # pipeline stages without an entry in dvc.lock yet


def plan(cwd: Path) -> Plan:
    """What bare `dvc repro` would consider, from three read-only DVC commands:
    its order (`repro --dry --force`), the graph (`dag --dot`), what changed (`status`)."""
    order = [
        m.group(1)
        for line in dvc(cwd, "repro", "--dry", "--force").splitlines()
        if (m := RUNNING.match(line))
    ]
    edges = [
        m.groups()
        for line in dvc(cwd, "dag", "--dot").splitlines()
        if (m := _EDGE.match(line.strip()))
    ]
    changed = set(json.loads(dvc(cwd, "status", "--json") or "{}"))
    upstream: dict[str, list[str]] = {s: [] for s in order}
    downstream: dict[str, list[str]] = {s: [] for s in order}
    for a, b in edges:
        if a in upstream and b in upstream:
            upstream[b].append(a)
            downstream[a].append(b)
    stale: set[str] = set()
    todo = [s for s in order if s in changed]
    while todo:
        s = todo.pop()
        if s not in stale:
            stale.add(s)
            todo += downstream[s]
    lock = Path(cwd) / "dvc.lock"
    locked = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {} if lock.exists() else {}
    return Plan(
        order=order,
        upstream={s: sorted(u) for s, u in upstream.items()},
        stale=stale,
        new={s for s in order if s not in locked},
    )


def default_remote(cwd: Path) -> str | None:
    """`dvc remote default`, or None when no default remote is set."""
    r = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
    )
    name = r.stdout.strip()
    return name if r.returncode == 0 and name else None


# --- experiments ---------------------------------------------------------------------------


def exp_run_args(
    name: str | None,
    set_params: list[str],
    targets: list[str] | None = None,
    *,
    temp: bool = False,
    queue: bool = False,
) -> list[str]:
    """`dvc exp run` arguments: `-S key=value` overrides, in a temporary copy or queued."""
    args = ["exp", "run", *(["--temp"] if temp else []), *(["--queue"] if queue else [])]
    args += ["-n", name] if name else []
    for s in set_params:
        args += ["-S", s]
    return args + list(targets or [])


def exp_ref(baseline: str, name: str) -> str:
    """The git ref DVC gives experiment `name` of commit `baseline`."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def queue_start(cwd: Path, jobs: int) -> str:
    return dvc(cwd, "queue", "start", "--jobs", str(jobs))


def exp_show(cwd: Path) -> list:
    return json.loads(dvc(cwd, "exp", "show", "--json", "--no-pager") or "[]")


def read(cwd: Path, path: str, rev: str | None = None) -> str:
    """A tracked file's text at `rev` (a commit or experiment ref), through `dvc.api`."""
    import dvc.api

    return dvc.api.read(path, repo=str(cwd), rev=rev)
