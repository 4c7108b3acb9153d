"""Every pytest-xdist worker must collect the same test ids, or `make test` stops.

xdist collects the suite once per worker and refuses to run when the lists
differ. A parametrize value that changes from one import to the next (a
timestamp, a random draw, a gzip header with the current second in it) gives
each worker its own ids: CI stopped on exactly that before any test ran. Two
collections a few seconds apart must list the same ids in the same order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _collected_ids() -> list[str]:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_two_collections_list_the_same_test_ids() -> None:
    first = _collected_ids()
    second = _collected_ids()  # starts after the first finished: a later second
    assert len(first) > 100, first[:5]
    assert first == second, sorted(set(first) ^ set(second))[:10]
