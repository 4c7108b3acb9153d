"""Two Prefect workers on two stand-in hosts share runs through one git origin and one DVC remote.

What it does, all on this machine, in a fresh temporary folder:

1. a local Prefect server (its own PREFECT_HOME and SQLite database) and a
   process work pool `fer-hosts`;
2. `origin.git`, a bare repository with this working tree's pipeline
   (`--short`: the kill loop's one short phase) whose `.dvc/config` names a
   local-directory DVC remote; the Prefect variables `fer_git_url` and
   `fer_git_branch` point at it; `prefect deploy --all --prefect-file
   prefect-worker.yaml`;
3. run 1 of `retrain-anywhere`, taken by worker A (its own HOME, working and
   temporary directories: host A): it clones, trains, pushes its run as a DVC
   experiment;
4. run 2 of the same deployment, taken by worker B (host B): it clones the same
   ref, pulls A's run and runs no stage;
5. run 3, `experiment-anywhere` with `svm.C=0.5`, on worker B: only `svm` and
   `summary` (and `validate`, which checks every params edit) run;
6. `prefect flow-run ls`, then a third clone: `dvc exp pull origin`, `dvc exp
   show` lists the three runs, and `dvc exp apply` of A's run leaves nothing to
   reproduce.

Checks fail the script (exit 1) with what went wrong; figures go to --out.

    .venv/bin/python bench/multi_worker.py --short            # about 5 minutes on 2 cores
    .venv/bin/python bench/multi_worker.py                    # the default synthetic pipeline
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kill_loop import CONFIG, make_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "fer-hosts"
SUMMARY = re.compile(r"ran: (.*?); cached: (.*?)(?:; experiment (\S+))?$")
FLOW_RUN_ID = re.compile(r"UUID: ([0-9a-f-]{36})")


class DemoFailed(SystemExit):
    pass


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise DemoFailed(f"{' '.join(cmd)} in {cwd} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def _names(csv_field: str) -> list[str]:
    return [] if csv_field == "nothing" else csv_field.split(", ")


def run_summary(log: str) -> dict:
    """The flow's closing line ("ran: ...; cached: ...; experiment ...") from a worker log."""
    for line in reversed(log.splitlines()):
        m = SUMMARY.search(line.rstrip())
        if m:
            return {"ran": _names(m[1]), "cached": _names(m[2]), "experiment": m[3]}
    raise DemoFailed("the worker log has no run summary line (ran: ...; cached: ...)")


class Demo:
    def __init__(self, base: Path, short: bool, port: int, source: Path = ROOT):
        self.base = base
        self.source = source
        self.short = short
        self.port = port
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_HOME": str(base / "prefect"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{base}/prefect.db",
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "200",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.env.pop("PYTHONPATH", None)  # every process imports the code of its own clone

    def host_env(self, host: Path) -> dict:
        """A stand-in host: its own HOME (git identity, DVC and Keras caches) and TMPDIR."""
        (host / "tmp").mkdir(parents=True, exist_ok=True)
        (host / ".gitconfig").write_text(
            f"[user]\n\tname = worker {host.name}\n\temail = {host.name}@example.invalid\n"
        )
        return {**self.env, "HOME": str(host), "TMPDIR": str(host / "tmp")}

    def prefect(self, *args: str, cwd: Path | None = None) -> str:
        return _run([str(BIN / "prefect"), *args], cwd or self.base, self.env)

    def start_server(self) -> None:
        log = open(self.base / "server.log", "w")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
                + ["--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{self.env['PREFECT_API_URL']}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoFailed("the Prefect server did not start in 180 s") from None
                time.sleep(1)

    def make_origin(self) -> tuple[Path, str]:
        """origin.git: the pipeline of this working tree, with a local DVC remote as default."""
        seed = make_project(
            self.base / "seed",
            config=CONFIG if self.short else {},
            extra=("flows", "prefect-worker.yaml", ".dvc/config"),
            source=self.source,
        )
        dvc = [sys.executable, "-m", "dvc"]
        _run([*dvc, "config", "core.analytics", "false"], seed, self.env)
        _run([*dvc, "remote", "add", "-d", "shared", str(self.base / "dvc-remote")], seed, self.env)
        ident = ["-c", "user.name=demo", "-c", "user.email=demo@example.invalid"]
        _run(["git", "add", "-A"], seed, self.env)
        _run(["git", *ident, "commit", "-qm", "DVC remote: shared"], seed, self.env)
        branch = _run(["git", "branch", "--show-current"], seed, self.env).strip()
        origin = self.base / "origin.git"
        _run(["git", "clone", "-q", "--bare", str(seed), str(origin)], self.base, self.env)
        return origin, branch

    def deploy(self, origin: Path, branch: str) -> None:
        self.prefect("work-pool", "create", POOL, "--type", "process")
        self.prefect("variable", "set", "fer_git_url", f"file://{origin}")
        self.prefect("variable", "set", "fer_git_branch", branch)
        # deploy from a clone, as a user would from theirs
        self.prefect(
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            "prefect-worker.yaml",
            cwd=self.base / "seed",
        )

    def run_on(self, host: str, deployment: str, *params: str) -> dict:
        """Start a run of `deployment`, let the worker on `host` take it, return what it did."""
        args = ["deployment", "run", f"fer-pipeline/{deployment}"]
        for p in params:
            args += ["--param", p]
        out = self.prefect(*args)
        m = FLOW_RUN_ID.search(out)
        if not m:
            raise DemoFailed(f"no flow run id in:\n{out}")
        home = self.base / host
        log_path = self.base / f"worker-{host}-{deployment}.log"
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            r = subprocess.run(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once"],
                cwd=home,
                env=self.host_env(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=3600,
            )
        wall = time.monotonic() - t0
        text = log_path.read_text()
        state = json.loads(self.prefect("flow-run", "inspect", m[1], "-o", "json"))["state_type"]
        if r.returncode or state != "COMPLETED":
            raise DemoFailed(
                f"run on {host} ended {state} (worker rc {r.returncode}):\n{text[-4000:]}"
            )
        return {
            "host": host,
            "deployment": deployment,
            "flow_run": m[1],
            "state": state,
            "wall_s": round(wall, 1),
            "log": str(log_path),
            **run_summary(text),
        }

    def third_clone(self, origin: Path, names: list[str]) -> dict:
        """A teammate's clone: pull the shared runs, list them, apply one without retraining."""
        third = self.base / "third"
        env = self.host_env(self.base / "host-c")
        env["PYTHONPATH"] = "."
        _run(["git", "clone", "-q", str(origin), str(third)], self.base, env)
        dvc = [sys.executable, "-m", "dvc"]
        _run([*dvc, "exp", "pull", "origin"], third, env)
        listed = json.loads(_run([*dvc, "exp", "show", "--json", "--no-pager"], third, env))
        seen = sorted(
            e["name"] for c in listed for e in c.get("experiments") or [] if e.get("name")
        )
        keep = "Experiment|Created|test\\.accuracy|^accuracy|macro_f1"  # svm and final model
        table = _run(
            [*dvc, "exp", "show", "--md", "--no-pager", "--drop", ".*", "--keep", keep], third, env
        )
        _run([*dvc, "exp", "apply", names[0]], third, env)
        dry = _run([*dvc, "repro", "--dry"], third, env)
        would_run = re.findall(r"^Running stage '([^']+)'", dry, re.M)
        return {"experiments": seen, "exp_show": table, "after_apply_would_run": would_run}

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def remote_damage(remote: Path) -> list[str]:
    """Objects of a local DVC remote whose content does not hash to their name.

    DVC stores each file (and each directory listing, `.dir`) under its md5, so
    several hosts writing the same object write the same bytes, and an object
    written half or mixed shows up here."""
    bad = []
    for path in sorted((remote / "files" / "md5").rglob("*")):
        if path.is_file():
            want = path.parent.name + path.name.removesuffix(".dir")
            if hashlib.md5(path.read_bytes()).hexdigest() != want:
                bad.append(str(path.relative_to(remote)))
    return bad


def check(results: dict) -> list[str]:
    """What the demonstration promises; an empty list when all of it holds."""
    a, b, c = results["runs"]
    problems = []
    if not any(s.startswith("phase@") for s in a["ran"]):
        problems.append(f"worker A trained no phase (ran {a['ran']})")
    if b["ran"]:
        problems.append(f"worker B ran stages although A's run matched: {b['ran']}")
    if b.get("reused") is None and not b["cached"]:
        problems.append("worker B reported nothing cached")
    if set(c["ran"]) - {"validate"} != {"svm", "summary"}:
        problems.append(f"the svm.C experiment on B ran {c['ran']}, not svm and summary alone")
    missing = {r["experiment"] for r in results["runs"]} - set(results["third"]["experiments"])
    if missing:
        problems.append(f"the third clone's `dvc exp show` lacks {sorted(missing)}")
    would_run = results["third"]["after_apply_would_run"]
    if would_run:
        problems.append(f"after `dvc exp apply` the third clone would run {would_run}")
    if results["remote"]["damaged"]:
        problems.append(f"damaged objects in the DVC remote: {results['remote']['damaged']}")
    if sorted(results["completed"]) != sorted(r["flow_run"] for r in results["runs"]):
        problems.append(f"COMPLETED flow runs {results['completed']} are not the three runs")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="one short phase (the kill loop's config)")
    ap.add_argument("--port", type=int, default=4243)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument(
        "--source", type=Path, default=ROOT, help="the pipeline to copy (default: here)"
    )
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="fer-multi-worker."))
    demo = Demo(base, args.short, args.port, args.source.resolve())
    t0 = time.monotonic()
    try:
        print(f"== folder {base}; Prefect server on :{args.port}", flush=True)
        demo.start_server()
        origin, branch = demo.make_origin()
        demo.deploy(origin, branch)
        runs = []
        for host, deployment, params in (
            ("host-a", "retrain-anywhere", ()),
            ("host-b", "retrain-anywhere", ()),
            ("host-b", "experiment-anywhere", ('overrides=["svm.C=0.5"]',)),
        ):
            print(f"== {deployment} {' '.join(params)} on {host}", flush=True)
            runs.append(demo.run_on(host, deployment, *params))
            r = runs[-1]
            print(f"   {r['wall_s']} s; ran: {r['ran']}; experiment {r['experiment']}", flush=True)
        listing = demo.prefect("flow-run", "ls", "--limit", "10")
        done = json.loads(
            demo.prefect("flow-run", "ls", "--state-type", "COMPLETED", "-o", "json") or "[]"
        )
        print(listing, flush=True)
        third = demo.third_clone(origin, [r["experiment"] for r in runs])
        print(third["exp_show"], flush=True)
        results = {
            "short": args.short,
            "runs": runs,
            "flow_run_ls": listing,
            "completed": [f["id"] for f in done],
            "third": third,
            "remote": {
                "objects": sum(1 for p in (base / "dvc-remote").rglob("*") if p.is_file()),
                "damaged": remote_damage(base / "dvc-remote"),
            },
            "wall_s": round(time.monotonic() - t0, 1),
        }
        problems = check(results)
        results["problems"] = problems
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        for p in problems:
            print(f"PROBLEM: {p}", flush=True)
        print(f"== {'ok' if not problems else 'FAILED'} in {results['wall_s']} s", flush=True)
        return 1 if problems else 0
    finally:
        demo.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
