"""What the Prefect flow adds over `dvc repro` when every stage is cached.

Side by side, in one run, interleaved: a no-op `dvc repro` and a no-op
`python -m flows.pipeline` (a real flow run with one Cached task run per
stage) against a running local Prefect server, started here in the background
with its own PREFECT_HOME and SQLite database unless --api-url names one.
Both are whole processes (interpreter start, imports, work, exit), which is
what a user or a worker pays. Separately, once: the same flow with no server
configured, where Prefect starts a temporary one inside the process.

    .venv/bin/python bench/flow_overhead.py                   # synthetic 10-stage project
    .venv/bin/python bench/flow_overhead.py --workspace PATH  # an existing, fully cached project

Prints the medians, difference and ratio (and, for scale, a trivial ten-task flow on the
same server), and writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fer_tasks.lib import dvc_adapter as dvc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Eight stages, ten with the two phases, shaped like the real graph (two independent
# branches), each reading one params section and its parent's output; the command only
# writes a file.
STAGES = {  # name: (params section, parent stage or None)
    "validate": ("synthesize", None),
    "synthesize": ("synthesize", None),
    "prepare": ("prepare", "synthesize"),
    "rebalance": ("rebalance", "prepare"),
    "backbone": ("model", None),
    "features": ("features", "backbone"),
    "svm": ("svm", "features"),
    "base": ("base", "backbone"),
}


def _stages() -> dict[str, tuple[str, str | None]]:
    """STAGES plus two phase stages reading the first two phases of params.yaml."""
    from fer_tasks.lib.params import load_params

    first, second = (load_params(ROOT / "params.yaml").finetune.order() + [None])[:2]
    stages = {**STAGES, "phase_a": (f"finetune.phases.{first}", "base")}
    if second is not None:
        stages["phase_b"] = (f"finetune.phases.{second}", "phase_a")
    return stages


# Prefect's own floor for comparison: a flow of ten tasks that do nothing, same server
TRIVIAL_FLOW = """
from prefect import flow, task
from prefect.futures import wait

@task(task_run_name="{name}")
def noop(name: str) -> str:
    return name

@flow
def trivial() -> None:
    wait([noop.submit(f"stage{i}") for i in range(10)])

trivial()
"""


def synthetic_project(path: Path) -> Path:
    """A git + DVC project with the real params.yaml and ten trivial stages, reproduced once."""
    path.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "stage.py").write_text(
        "import pathlib, sys\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "out.parent.mkdir(parents=True, exist_ok=True)\n"
        "out.write_text(' '.join(sys.argv))\n"
    )
    stages = {}
    for name, (section, parent) in _stages().items():
        deps = ["stage.py"] + ([f"out/{parent}.txt"] if parent else [])
        stages[name] = {
            "cmd": f"python stage.py out/{name}.txt",
            "deps": deps,
            "params": [section],
            "outs": [f"out/{name}.txt"],
        }
    (path / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=2))
    env = _env()
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.analytics", "false"],
        [str(BIN / "dvc"), "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "synthetic project"],
    ):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)
    return path


def _env(**extra: str) -> dict[str, str]:
    """The adapter's environment without the caller's PREFECT_* settings (plus `extra`)."""
    env = {k: v for k, v in dvc.env().items() if not k.startswith("PREFECT_")}
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, timeout_s: float = 180) -> tuple[subprocess.Popen, str]:
    """`prefect server start` in the background, with its own PREFECT_HOME and SQLite file."""
    port = _free_port()
    env = _env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    log = open(home / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.5)
        if server.poll() is not None:
            break
    server.terminate()
    raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode:
        raise RuntimeError(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return seconds, r.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, help="a fully cached DVC project")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--api-url", help="use this running server instead of starting one")
    parser.add_argument("--no-ephemeral", action="store_true", help="skip the temporary server")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/flow_overhead.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="flow-overhead-"))
    server = None
    try:
        ws = args.workspace.resolve() if args.workspace else synthetic_project(tmp / "project")
        home = tmp / "prefect"
        home.mkdir()
        if args.api_url:
            url = args.api_url
        else:
            server, url = start_server(home)
        flow_env = _env(PREFECT_HOME=str(home), PREFECT_API_URL=url)
        dvc_cmd = [str(BIN / "dvc"), "repro"]
        flow_cmd = [sys.executable, "-m", "flows.pipeline", "--workspace", str(ws)]
        lock_before = (ws / "dvc.lock").read_bytes()

        timed(dvc_cmd, ws, _env())  # warm the file-system caches and DVC's state db
        timed(flow_cmd, ROOT, flow_env)
        dvc_s, flow_s, floor_s = [], [], []
        for _ in range(args.repeats):
            dvc_s.append(timed(dvc_cmd, ws, _env())[0])
            seconds, out = timed(flow_cmd, ROOT, flow_env)
            if json.loads(out.splitlines()[-1])["ran"]:
                raise RuntimeError(f"the flow recomputed stages: {out}")
            flow_s.append(seconds)
            floor_s.append(timed([sys.executable, "-c", TRIVIAL_FLOW], ROOT, flow_env)[0])
        assert (ws / "dvc.lock").read_bytes() == lock_before, "dvc.lock changed"

        result = {
            "workspace": str(ws) if args.workspace else "synthetic 10-stage project",
            "stages": len(json.loads(out.splitlines()[-1])["cached"]),
            "repeats": args.repeats,
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
            "dvc_repro_s": dvc_s,
            "flow_s": flow_s,
            "dvc_repro_median_s": round(statistics.median(dvc_s), 3),
            "flow_median_s": round(statistics.median(flow_s), 3),
            "trivial_10_task_flow_s": floor_s,
            "trivial_10_task_flow_median_s": round(statistics.median(floor_s), 3),
        }
        result["difference_s"] = round(result["flow_median_s"] - result["dvc_repro_median_s"], 3)
        result["ratio"] = round(result["flow_median_s"] / result["dvc_repro_median_s"], 2)
        if not args.no_ephemeral:  # no PREFECT_API_URL: a temporary server inside the process
            eph = _env(
                PREFECT_HOME=str(tmp / "ephemeral"),
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
            )
            result["flow_temporary_server_s"] = round(timed(flow_cmd, ROOT, eph)[0], 3)

        r, n = result, args.repeats
        print(f"no-op dvc repro         {r['dvc_repro_median_s']:6.2f} s  (median of {n})")
        print(f"no-op flow, server      {r['flow_median_s']:6.2f} s  (median of {n})")
        print(f"difference              {r['difference_s']:6.2f} s")
        print(f"ratio                   {r['ratio']:6.2f} x")
        floor = r["trivial_10_task_flow_median_s"]
        print(f"trivial 10-task flow    {floor:6.2f} s  (Prefect's own floor, same server)")
        if "flow_temporary_server_s" in r:
            print(f"flow, temporary server  {r['flow_temporary_server_s']:6.2f} s  (separate case)")
        print(f"load average {result['load_average']} on {result['cpus']} CPUs")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
