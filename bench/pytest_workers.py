"""The test suite's wall time with one pytest process and with pytest-xdist workers, side by side.

`make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`
(pytest-xdist): two worker processes, each taking whole test files (a file's
module-scoped fixture, such as a finished DVC run, is built once), the longest
files first (`tests/conftest.py`). Most of the suite's time is single-threaded
(starting a `fer` stage process imports TensorFlow, tracing a train step, DVC's
own bookkeeping), so two workers on two cores cut the wall time. This script
measures that on a selection, one run after the other in the same session:

    .venv/bin/python bench/pytest_workers.py tests/test_phase.py tests/test_export.py
    .venv/bin/python bench/pytest_workers.py --workers 2 -- -m "not slow"

It prints each run's wall time and pass/fail counts and the ratio. Run it on a
quiet machine: anything else using the cores favours neither side predictably.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    if r.returncode not in (0, 1):
        raise SystemExit(f"pytest {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}")
    return seconds, re.sub(r"=+", "", summary).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("selection", nargs="*", help="pytest arguments (files, -m, -k)")
    a = ap.parse_args()
    serial, s_summary = run(a.selection)
    print(f"1 process:   {serial:8.1f} s  ({s_summary})", flush=True)
    parallel, p_summary = run(
        [*a.selection, "-n", str(a.workers), "--dist", "loadfile", "--no-loadscope-reorder"]
    )
    print(f"{a.workers} workers:   {parallel:8.1f} s  ({p_summary})", flush=True)
    print(f"ratio {a.workers} workers / 1 process: {parallel / serial:.2f}x")


if __name__ == "__main__":
    main()
