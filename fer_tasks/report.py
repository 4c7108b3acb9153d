"""The metrics table `make run` prints at the end of a pipeline run."""

from __future__ import annotations

import json
from pathlib import Path


def _row(name: str, m: dict) -> list[str]:
    def f(key: str) -> str:
        v = m.get(key)
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    return [name, f("accuracy"), f("macro_f1"), f("loss"), f("epochs")]


def metrics_table(reports_dir: Path, phases: list[str]) -> str:
    """One line per trained model (SVM baseline, each phase in order, final test evaluation)."""
    reports_dir = Path(reports_dir)
    rows: list[list[str]] = []
    svm = reports_dir / "svm" / "metrics.json"
    if svm.is_file():
        m = json.loads(svm.read_text())
        for split in ("val", "test"):
            if split in m:
                rows.append(_row(f"svm baseline ({split})", m[split]))
    for name in phases:
        path = reports_dir / "phases" / name / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        val = m.get("val", {})
        rows.append(
            _row(
                f"phase@{name} (val)",
                {
                    "accuracy": val.get("accuracy"),
                    "macro_f1": m.get("val_macro_f1"),
                    "loss": val.get("loss"),
                    "epochs": m.get("step"),
                },
            )
        )
    final = reports_dir / "evaluate" / "metrics.json"
    if final.is_file():
        m = json.loads(final.read_text())
        rows.append(_row(f"final model ({m.get('split', 'test')})", m))
    if not rows:
        return f"no metrics under {reports_dir} yet: run `dvc repro` first"
    head = ["model", "accuracy", "macro_f1", "loss", "epochs"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])
