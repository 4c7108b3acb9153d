"""SIGKILL the long stages under `dvc repro` at random points, rerun, compare with a clean run.

Two copies of the pipeline on a small synthetic configuration (deterministic
training): one runs `dvc repro` untouched, the reference. In the other, each
round picks a stage of `phase@top`, `features`, `svm` and `export` in turn,
starts `dvc repro` for it (forced to rerun it), waits a random time after DVC
says "Running stage", and SIGKILLs the whole process group (DVC and the `fer`
command it runs). After every kill:

- nothing half-written: every output of the stage that exists is whole (models
  load, splits and JSON parse, the phase's model/state pair and the rebalanced
  pair are from one run);
- the rerun (`dvc repro <stage>`) succeeds, leaves no temporary sibling
  (`.name.tmp-*`, `.name.old-*`) and gives the reference run's bytes or metrics.
  Before it, DVC's own lock table is reset if the kill cut it mid-write, as the
  flow and `fer compare` do before every DVC command (`repair_rwlock`).

A stage that finishes before its kill is rerun with the delay drawn again from
its newly observed duration; only kills count towards `--kills`.

At the end, `dvc repro` of the whole pipeline runs and every compared output
equals the reference. Timing fields (seconds, latency) are left out of the
comparison; everything else is compared exactly.

    .venv/bin/python bench/kill_loop.py --kills 24 [--work /tmp/fer_kill_loop]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fer_tasks.lib import dvc_adapter, overlay

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("phase@top", "features", "svm", "export")
_TOP = dict(unfreeze="top", batch_size=32, deterministic=True, on_collapse="warn")
CONFIG = {
    "synthesize": {"n_samples": 420},
    "svm": {"max_iter": 500, "pca_components": 64},
    "export": {"max_int8_drop": 100.0, "latency_runs": 5, "representative_samples": 20},
    # one short deterministic phase: 2 epochs of 3 steps
    "finetune": {
        "phases": {"top": {**_TOP, "after": "base", "epochs": 2, "steps_per_epoch": 3}},
        "final": "top",
    },
}
# outputs compared byte for byte, and JSON compared without their timing keys
SAME_BYTES = [
    "data/rebalanced/train.npz",
    "data/rebalanced/class_weights.json",
    "data/features/train.npz",
    "data/features/val.npz",
    "data/features/test.npz",
    "models/svm/model.joblib",
    "models/phases/top/model.keras",
    "models/phases/top/state.json",
    "models/checkpoints/top/last/model.keras",
    "reports/phases/top/metrics.json",
    "reports/phases/top/history.csv",
    "reports/evaluate/metrics.json",
    "models/export/model_float32.tflite",
    "models/export/model_int8.tflite",
]
SAME_JSON = ["reports/svm/metrics.json", "reports/export.json"]


def _timing(key: str) -> bool:
    """Keys that hold a measured time or rate (they differ run to run)."""
    return "latency" in key or "seconds" in key or key.endswith("_per_s")


def _env(project: Path) -> dict:
    # the stage commands import the project copy's code, so editing the working tree
    # while the loop runs changes nothing in it
    return dvc_adapter.env(PYTHONPATH=str(project), PYTHONHASHSEED="0")


def _try(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True)


def _run(cwd: Path, *args: str) -> str:
    r = _try(cwd, *args)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} in {cwd} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _fresh(project: Path, stage: str) -> None:
    """A phase with a finished checkpoint would only reload it: drop it, so the
    forced rerun trains and a kill can land mid-training."""
    if stage.startswith("phase@"):
        shutil.rmtree(project / "models" / "checkpoints" / stage.split("@")[1], ignore_errors=True)


def make_project(
    path: Path, config: dict = CONFIG, extra: tuple[str, ...] = (), source: Path = ROOT
) -> Path:
    """The working tree's pipeline (dvc.yaml, fer_tasks, params with `config` merged in,
    the `extra` files or folders) in a new git + DVC repo."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(source / name, path / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source / "fer_tasks", path / "fer_tasks", ignore=skip)
    params = overlay.apply(yaml.safe_load((source / "params.yaml").read_text()), config)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(path, "git", "init", "-q")
    _run(path, sys.executable, "-m", "dvc", "init", "-q")
    for name in extra:  # after `dvc init`, which writes .dvc/config
        if (source / name).is_dir():
            shutil.copytree(source / name, path / name, ignore=skip)
        else:
            shutil.copy(source / name, path / name)
    _run(path, "git", "add", "-A")
    _run(path, "git", "-c", "user.name=k", "-c", "user.email=k@k.invalid", "commit", "-qm", "k")
    return path


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _timing(k)}
    return obj


def snapshot(project: Path) -> dict[str, str | dict]:
    out: dict[str, str | dict] = {}
    for rel in SAME_BYTES:
        p = project / rel
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    for rel in SAME_JSON:
        p = project / rel
        out[rel] = _strip(json.loads(p.read_text())) if p.is_file() else "missing"
    return out


def leftovers(project: Path) -> list[str]:
    """Temporaries beside the outputs (there should never be any in a DVC repository)."""
    return sorted(
        str(p.relative_to(project))
        for p in project.rglob(".*")
        if (".tmp-" in p.name or ".old-" in p.name) and ".dvc" not in p.parts
    )


def scratch_left(project: Path) -> int:
    """Temporaries a killed process left in the scratch folder: removed by the next write
    in the repository (fer_tasks/lib/io.py), which a run-cache restore does not do."""
    scratch = project / ".dvc" / "tmp" / "fer-atomic"
    return len(list(scratch.iterdir())) if scratch.is_dir() else 0


def check_whole(project: Path, stage: str) -> list[str]:
    """Problems with whatever outputs of `stage` a kill left in place (none expected)."""
    problems: list[str] = []

    def readable(rel: str, read) -> None:
        p = project / rel
        if p.exists():
            try:
                read(p)
            except Exception as err:  # any failure to read is the finding
                problems.append(f"{rel}: unreadable after the kill ({err})")

    import zipfile

    import numpy as np

    def keras_zip(p: Path) -> None:
        with zipfile.ZipFile(p) as z:
            if z.testzip() is not None:
                raise ValueError("corrupt zip entry")

    if stage == "features":
        for s in ("train", "val", "test"):
            readable(f"data/features/{s}.npz", lambda p: np.load(p)["features"].sum())
        readable("data/features/throughput.json", lambda p: json.loads(p.read_text()))
    elif stage == "svm":
        import joblib

        readable("models/svm/model.joblib", joblib.load)
        readable("reports/svm/metrics.json", lambda p: json.loads(p.read_text()))
    elif stage.startswith("phase@"):
        top = project / "models/phases/top"
        if (top / "state.json").exists() != (top / "model.keras").exists():
            problems.append("models/phases/top: model.keras and state.json not both present")
        readable("models/phases/top/model.keras", keras_zip)
        readable("models/phases/top/state.json", lambda p: json.loads(p.read_text()))
        readable("models/checkpoints/top/last/model.keras", keras_zip)
        readable("models/checkpoints/top/last/ckpt.json", lambda p: json.loads(p.read_text()))
        readable("reports/phases/top/metrics.json", lambda p: json.loads(p.read_text()))
    elif stage == "export":
        for v in ("float32", "int8"):
            readable(f"models/export/model_{v}.tflite", _load_tflite)
        readable("reports/export.json", lambda p: json.loads(p.read_text()))
    return problems


def _load_tflite(p: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=str(p)).allocate_tensors()


def kill_once(project: Path, stage: str, delay: float) -> tuple[bool, float]:
    """`dvc repro --force --single-item stage`, SIGKILLed `delay` s after the stage starts.
    (killed, seconds since the stage started); not killed when it finished first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage],
        cwd=project,
        env=_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # dvc and the command it runs: one process group
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Running stage"):
            break
    t0 = time.monotonic()
    try:
        proc.wait(timeout=delay)
        return False, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, time.monotonic() - t0


def kill_loop(work: Path, kills: int, seed: int = 0, log=print) -> dict:
    t_start = time.monotonic()
    rng = random.Random(seed)
    ref = make_project(work / "reference")
    _dvc(ref, "repro")
    reference = snapshot(ref)
    proj = make_project(work / "killed")
    first = dvc_adapter.stream(proj, ["repro"], environ=_env(proj))
    if first.rc:
        raise SystemExit(f"dvc repro in {proj} failed:\n" + "\n".join(first.tail))
    durations = {s: first.stages[s] for s in STAGES}  # where to place the kills
    log(f"stage times (s): {', '.join(f'{k} {v:.1f}' for k, v in durations.items())}")
    rounds: list[dict] = []
    problems: list[str] = []
    while sum(r["killed"] for r in rounds) < kills:
        stage = STAGES[len([r for r in rounds if r["killed"]]) % len(STAGES)]
        delay = rng.uniform(0.1, 0.95) * durations[stage]
        _fresh(proj, stage)
        killed, seconds = kill_once(proj, stage, delay)
        if not killed:
            durations[stage] = seconds  # draw the next delay within what it takes now
        found = check_whole(proj, stage) if killed else []
        # what the flow and `fer compare` do before any DVC command (dvc_adapter)
        repaired = dvc_adapter.repair_rwlock(proj)
        t0 = time.monotonic()
        r = _try(proj, sys.executable, "-m", "dvc", "repro", stage)
        rerun_s = time.monotonic() - t0
        if r.returncode != 0:
            found.append(f"the rerun failed (rc {r.returncode}): {r.stderr.strip()[-500:]}")
        now = snapshot(proj)
        found += [f"left behind: {d}" for d in leftovers(proj)]
        found += [
            f"{k} differs from the clean run after the rerun"
            for k in reference
            if now[k] != reference[k]
        ]
        rounds.append(
            {
                "stage": stage,
                "delay_s": round(delay, 2),
                "killed": killed,
                "rerun_s": rerun_s,
                "recovered": killed and not found,
                "scratch_left": scratch_left(proj),
                "rwlock_reset": repaired,
            }
        )
        problems += [f"{stage} killed at {delay:.1f} s: {p}" for p in found]
        log(
            f"{stage}: {'killed' if killed else 'finished before'} at {delay:.1f} s; "
            f"rerun {rerun_s:.1f} s; {len(found)} problem(s); "
            f"{rounds[-1]['scratch_left']} temporaries left in the scratch folder"
        )
    _dvc(proj, "repro")
    final = snapshot(proj)
    problems += [
        f"final {k} differs from the clean run" for k in reference if final[k] != reference[k]
    ]
    problems += [f"final: left behind {d}" for d in leftovers(proj)]
    n_killed = sum(r["killed"] for r in rounds)
    return {
        "kills": n_killed,
        "by_stage": {s: sum(r["killed"] for r in rounds if r["stage"] == s) for s in STAGES},
        "recoveries": sum(r["recovered"] for r in rounds),
        "finished_before_kill": len(rounds) - n_killed,
        "problems": problems,
        "compared": len(reference),
        "scratch_left_final": scratch_left(proj),
        "rwlock_resets": sum(r["rwlock_reset"] for r in rounds),
        "stage_seconds": durations,
        "wall_s": time.monotonic() - t_start,
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fer_kill_loop"))
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    args = ap.parse_args()
    res = kill_loop(args.work.resolve(), args.kills, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"{res['kills']} kills ({', '.join(f'{k} {v}' for k, v in res['by_stage'].items())}), "
        f"{res['recoveries']} recoveries, {len(res['problems'])} problems, "
        f"{res['compared']} outputs compared with a clean run, {res['wall_s']:.0f} s"
    )
    for p in res["problems"]:
        print("  ", p)
    raise SystemExit(1 if res["problems"] else 0)


if __name__ == "__main__":
    main()
