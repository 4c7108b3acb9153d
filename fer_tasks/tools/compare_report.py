"""`fer compare`'s report: comparison.csv, comparison.md and curves.png from its rows."""

from __future__ import annotations

import csv
from pathlib import Path

from fer_tasks.lib.io import atomic_path
from fer_tasks.lib.plots import plot_curves

COLUMNS = (
    "config",
    "phases",
    "epochs",
    "val_accuracy",
    "val_loss",
    "val_macro_f1",
    "max_class_share",
    "collapsed",
    "test_accuracy",
    "wall_s",
    "train_s",
    "status",
)


def _fmt(v, digits: int = 4) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_comparison(
    rows: list[dict], curves: dict[str, list[dict]], out_dir: Path, notes: list[str] = ()
) -> dict[str, Path]:
    """comparison.csv, comparison.md and curves.png from result rows and per-config curves.

    `rows`: dicts with COLUMNS keys; `curves`: config -> [{"epoch", "phase",
    "val_loss", "val_accuracy"}, ...] on the global epoch axis.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "comparison.csv",
        "md": out_dir / "comparison.md",
        "png": out_dir / "curves.png",
    }

    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})

    head = [
        "configuration",
        "phases (unfreeze:epochs)",
        "epochs",
        "val accuracy",
        "val loss",
        "val macro-F1",
        "max class share",
        "collapsed",
        "test accuracy",
        "wall s",
        "train s",
        "status",
    ]
    md = ["# Fine-tuning configurations compared", ""]
    md += [f"- {n}" for n in notes]
    md += [
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 2 or i in (7, 11) else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        cells = [
            r["config"],
            _fmt(r.get("phases")),
            _fmt(r.get("epochs")),
            _fmt(r.get("val_accuracy")),
            _fmt(r.get("val_loss")),
            _fmt(r.get("val_macro_f1")),
            _fmt(r.get("max_class_share"), 2),
            _fmt(r.get("collapsed")),
            _fmt(r.get("test_accuracy")),
            _fmt(r.get("wall_s"), 0),
            _fmt(r.get("train_s"), 0),
            _fmt(r.get("status")),
        ]
        md.append("| " + " | ".join(cells) + " |")
    md += [
        "",
        "val metrics: the final phase's last epoch on the validation split; test accuracy: "
        "the `evaluate` stage. wall s: the whole `dvc exp run` (includes stages not "
        "already cached); train s: its `phase@*` stages. Curves: `curves.png`.",
        "",
    ]
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("\n".join(md))
    plot_curves(curves, paths["png"], "validation curves of each configuration")
    return paths
