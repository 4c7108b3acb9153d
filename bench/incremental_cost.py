"""What a change costs: full `dvc repro` vs no-op, an `svm.C` edit and extending the last phase.

In one run, on a fresh clone of this repository's last commit (the embedded
synthetic data set unless --params-overlay points the pipeline elsewhere):

1. `dvc repro` from nothing (every stage);
2. `dvc repro` again (nothing to do);
3. `svm.C` multiplied by 10, `dvc repro` (the svm stage alone);
4. the last phase's `epochs` + k, `dvc repro -s phase@<last>`: the phase resumes
   from its checkpoint and trains k epochs;
5. the same phase from scratch at the new length: its checkpoint removed,
   `dvc repro -f -s phase@<last>`.

Each is timed as a whole process (what a user waits for) and printed as
seconds and as a ratio to step 1; step 4 is also given as a ratio to step 5.
The stages that ran are read from DVC's output. Writes --out (JSON).

    .venv/bin/python bench/incremental_cost.py [--k 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fer_tasks.lib import dvc_adapter as dvc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, log) -> tuple[float, list[str]]:
    """Run `cmd`, return (seconds, stages DVC ran)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=dvc.env(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    log.write(
        f"$ {' '.join(cmd)}  ({dt:.1f} s, rc {proc.returncode})\n{proc.stdout}\n{proc.stderr}\n"
    )
    log.flush()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}); see the log")
    ran = re.findall(r"^Running stage '([^']+)'", proc.stdout, flags=re.M)
    return dt, ran


def _edit(params_path: Path, fn) -> None:
    data = yaml.safe_load(params_path.read_text())
    fn(data)
    params_path.write_text(yaml.safe_dump(data, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2, help="epochs added to the last phase")
    ap.add_argument("--params-overlay", type=Path, help="YAML merged into params.yaml first")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "incremental.json")
    args = ap.parse_args()

    from fer_tasks.lib.overlay import apply as merge_params

    work = args.keep or Path(tempfile.mkdtemp(prefix="fer_incr_"))
    if work.exists():
        shutil.rmtree(work)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    params_path = work / "params.yaml"
    if args.params_overlay:
        overlay = yaml.safe_load(args.params_overlay.read_text())
        _edit(params_path, lambda d: d.update(merge_params(dict(d), overlay)))
    base = yaml.safe_load(params_path.read_text())
    last = base["finetune"]["final"]
    log_path = args.out.with_suffix(".log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps: dict[str, dict] = {}
    with open(log_path, "w") as log:

        def step(name: str, cmd: list[str]) -> None:
            secs, ran = _run(cmd, work, log)
            steps[name] = {"seconds": round(secs, 1), "stages_run": ran}
            print(f"{name:<28} {secs:8.1f} s   ran: {', '.join(ran) or '(nothing)'}", flush=True)

        step("full_repro", ["dvc", "repro"])
        step("noop_repro", ["dvc", "repro"])
        old_c = base["svm"]["C"]
        _edit(params_path, lambda d: d["svm"].__setitem__("C", old_c * 10))
        step("svm_C_edit", ["dvc", "repro"])
        epochs = base["finetune"]["phases"][last]["epochs"]
        _edit(
            params_path,
            lambda d: d["finetune"]["phases"][last].__setitem__("epochs", epochs + args.k),
        )
        step("extend_last_phase", ["dvc", "repro", "-s", f"phase@{last}"])
        shutil.rmtree(work / "models" / "checkpoints" / last)
        step("last_phase_from_scratch", ["dvc", "repro", "-f", "-s", f"phase@{last}"])

    full = steps["full_repro"]["seconds"]
    for s in steps.values():
        s["ratio_to_full"] = round(s["seconds"] / full, 4)
    ext, scratch = (
        steps["extend_last_phase"]["seconds"],
        steps["last_phase_from_scratch"]["seconds"],
    )
    result = {
        "work": str(work),
        "last_phase": last,
        "epochs_before": epochs,
        "k": args.k,
        "steps": steps,
        "extend_vs_scratch": round(ext / scratch, 3),
        "svm_C_edit_vs_full": steps["svm_C_edit"]["ratio_to_full"],
        "log": str(log_path),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nextend {last} by {args.k} epochs ({epochs} -> {epochs + args.k}): {ext:.1f} s vs "
        f"from scratch {scratch:.1f} s, ratio {result['extend_vs_scratch']:.2f}"
    )
    print(f"svm.C edit: {result['svm_C_edit_vs_full']:.2%} of a full repro ({full:.0f} s)")
    print(f"written to {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
