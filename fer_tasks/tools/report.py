"""The metrics table `make run` prints at the end of a pipeline run (`fer metrics`)."""

from __future__ import annotations

from pathlib import Path

from fer_tasks.lib.reports import files, read_metrics


def metrics_table(reports_dir: Path, phases: list[str]) -> str:
    """One line per trained model (SVM baseline, each phase in order, final test evaluation)."""
    reports_dir = Path(reports_dir)
    models = read_metrics(files(reports_dir), phases, reports=".")

    def f(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    rows = [[m.name, f(m.accuracy), f(m.macro_f1), f(m.loss), f(m.epochs)] for m in models]
    if not rows:
        return f"no metrics under {reports_dir} yet: run `dvc repro` first"
    head = ["model", "accuracy", "macro_f1", "loss", "epochs"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def print_metrics(reports_dir: Path, finetune) -> None:
    """`fer metrics`: the table for the phases of `finetune` (FinetuneParams)."""
    print(metrics_table(reports_dir, finetune.order()))
