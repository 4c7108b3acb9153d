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
from contextlib import ExitStack
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
    only while no DVC process holds the repository lock (`.dvc/tmp/lock`) or the
    lock table's own guard (`.dvc/tmp/rwlock.lock`, which DVC takes around every
    edit of the table, also while a stage's command runs with the repository
    lock released); both are flocks (zc.lockfile), so a live process's lock
    table is never touched. True if it was reset.
    """
    tmp = Path(cwd) / ".dvc" / "tmp"
    rwlock = tmp / "rwlock"

    def whole() -> bool:
        try:
            json.loads(rwlock.read_text())
            return True
        except FileNotFoundError:
            return True
        except ValueError:
            return False

    if whole():
        return False
    with ExitStack() as held:
        for name in ("lock", "rwlock.lock"):
            fh = held.enter_context(open(tmp / name, "a"))
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a DVC process is running: it owns the file
            held.callback(fcntl.flock, fh, fcntl.LOCK_UN)
        if whole():  # a writer finished it between the first read and the locks
            return False
        from fer_tasks.lib.io import write_json

        write_json(rwlock, {"read": {}, "write": {}})
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


def popen_dvc(cwd: Path, args: list[str], environ: dict[str, str] | None) -> subprocess.Popen:
    """`dvc ARGS` started with its output (stderr joined) readable line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=environ or env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


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
        with popen_dvc(cwd, args, environ) as proc:
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


def queue_start(cwd: Path, jobs: int, environ: dict[str, str] | None = None) -> str:
    """`dvc queue start --jobs N`: up to N workers, which run the queue and then exit.
    The workers, and the stage commands they run, get `environ` (default: env()).

    Its output goes through a file, not a pipe: the workers it spawns keep the
    descriptors they inherit, and reading a pipe to its end would wait for them all.
    """
    import tempfile

    repair_rwlock(cwd)
    args = [sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)]
    with tempfile.TemporaryFile("w+") as out:
        rc = subprocess.run(
            args, cwd=cwd, env=environ or env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        ).returncode
        out.seek(0)
        text = out.read()
    if rc:
        raise DvcError(f"`{shlex.join(args)}` exited {rc} in {cwd}:\n{text[-4000:]}")
    return text


# `dvc queue status` rows: "Task  Name  Created  Status"; Created is "%I:%M %p" today,
# "%b %d, %Y" before, "-" unknown (dvc.repo.experiments.show.format_time)
_QUEUE_ROW = re.compile(
    r"^(?P<task>[0-9a-f]{7,40})\s+(?:(?P<name>\S.*?)\s+)?"
    r"(?P<created>\d{1,2}:\d{2}(?:\s*\S+)?|\S+ \d{1,2}, \d{4}|-)\s+(?P<status>[A-Za-z]+)$"
)


@dataclass(frozen=True)
class QueueTask:
    task: str  # the stash commit, abbreviated: what `dvc queue logs/kill/remove` take
    name: str
    status: str  # Queued | Running | Success | Failed (DVC's words)

    @property
    def done(self) -> bool:
        return self.status in ("Success", "Failed")


def queue_status(cwd: Path) -> list[QueueTask]:
    """The tasks of `dvc queue status`, parsed: it has no --json, and `dvc exp show --json`
    can hang while a queued experiment runs (seen with DVC 3.67). Its worker count is
    left out: it read 0 while a worker was running an experiment."""
    return [
        QueueTask(m["task"], m["name"] or "", m["status"])
        for line in dvc(cwd, "queue", "status").splitlines()
        if (m := _QUEUE_ROW.match(line.strip()))
    ]


def queue_logs(cwd: Path, task: str) -> str:
    """The whole output of a started queued experiment (`dvc queue logs TASK`)."""
    return dvc(cwd, "queue", "logs", task)


def queue_kill(cwd: Path, tasks: list[str]) -> str:
    return dvc(cwd, "queue", "kill", *tasks) if tasks else ""


def queue_remove(cwd: Path, tasks: list[str]) -> str:
    return dvc(cwd, "queue", "remove", *tasks) if tasks else ""


class QueueFollower:
    """`dvc queue logs --follow TASK` in the background: each line time-stamped on arrival
    (DVC polls the log once a second), handed to `on_line` and written to `log_path`.

    The command ends when the experiment's process does; `stop()` ends it sooner (a killed
    experiment never records its exit, and following it would never end). `result()`:
    the lines' RunResult, its stage seconds measured from this follower's start."""

    def __init__(
        self,
        cwd: Path,
        task: str,
        *,
        on_line: Callable[[str], None] | None = None,
        log_path: Path | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        import threading

        self.lines: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.end: float | None = None
        self._on_line, self._log_path = on_line, log_path
        self.proc = popen_dvc(cwd, ["queue", "logs", "--follow", task], environ)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        log_file = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(self._log_path, "w")  # noqa: SIM115 - a stream, closed below
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("Following logs for experiment"):
                    continue  # DVC's own notice, not the experiment's output
                self.lines.append((time.monotonic() - self.t0, line))
                if log_file is not None:
                    log_file.write(line + "\n")
                    log_file.flush()
                if self._on_line is not None:
                    self._on_line(line)
        finally:
            if log_file is not None:
                log_file.close()
            self.proc.wait()
            self.end = time.monotonic() - self.t0

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the command has ended (within `timeout` seconds)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        if not self.wait(10):
            self.proc.kill()
            self.wait(10)

    def result(self) -> RunResult:
        end = self.end if self.end is not None else time.monotonic() - self.t0
        return RunResult(
            rc=self.proc.returncode if self.proc.returncode is not None else -1,
            wall_s=end,
            stages=stage_seconds(self.lines, end),
            restored=[m.group(1) for _, line in self.lines if (m := RESTORED.match(line))],
            tail=[line for _, line in self.lines[-TAIL_LINES:]],
        )


def exp_show(cwd: Path) -> list:
    return json.loads(dvc(cwd, "exp", "show", "--json", "--no-pager") or "[]")


def read(cwd: Path, path: str, rev: str | None = None, mode: str = "r") -> str | bytes:
    """A tracked file's text (bytes with mode "rb") at `rev` (a commit or experiment
    ref), through `dvc.api`."""
    import dvc.api

    return dvc.api.read(path, repo=str(cwd), rev=rev, mode=mode)
