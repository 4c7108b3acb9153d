"""The one reader of the pipeline's metrics files, for every table and report.

`fer metrics`, the Prefect flow's run report and `fer compare` all read the
same files (`reports/svm/metrics.json`, `reports/phases/<name>/metrics.json`,
`reports/evaluate/metrics.json`) through `read_metrics`, from the workspace or
from a commit (`dvc.api.read`), so a field renamed in a stage is renamed here
once. `pictures_markdown` gives the flow's report evaluate's pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Reader = Callable[[str], "str | None"]  # a path under the project -> its text, None if absent


@dataclass(frozen=True)
class ModelMetrics:
    name: str  # "svm baseline (test)", "phase@top (val)", "final model (val)"
    path: str
    accuracy: float | None = None
    macro_f1: float | None = None
    loss: float | None = None
    epochs: int | None = None  # the last global epoch, for a phase
    max_class_share: float | None = None  # a phase's collapse measure
    recall: dict[str, float] = field(default_factory=dict)


def files(root: Path) -> Reader:
    """A reader of the files under `root`."""

    def read(rel: str) -> str | None:
        p = Path(root) / rel
        return p.read_text() if p.is_file() else None

    return read


def _recall(m: dict) -> dict[str, float]:
    return {c: v["recall"] for c, v in (m.get("per_class") or {}).items() if "recall" in v}


def read_metrics(read: Reader, phases: list[str], reports: str = "reports") -> list[ModelMetrics]:
    """One entry per trained model that has metrics: the SVM baseline per split, each
    phase in `phases` (validation), the final model (evaluate's split)."""
    out: list[ModelMetrics] = []

    def load(rel: str) -> dict | None:
        text = read(f"{reports}/{rel}")
        return json.loads(text) if text is not None else None

    svm = load("svm/metrics.json")
    for split in ("val", "test"):
        if svm and split in svm:
            m = svm[split]
            out.append(
                ModelMetrics(
                    f"svm baseline ({split})",
                    f"{reports}/svm/metrics.json",
                    m.get("accuracy"),
                    m.get("macro_f1"),
                    recall=_recall(m),
                )
            )
    for name in phases:
        m = load(f"phases/{name}/metrics.json")
        if m is None:
            continue
        val = m.get("val", {})
        out.append(
            ModelMetrics(
                f"phase@{name} (val)",
                f"{reports}/phases/{name}/metrics.json",
                val.get("accuracy"),
                m.get("val_macro_f1"),
                val.get("loss"),
                m.get("step"),
                m.get("max_class_share"),
            )
        )
    m = load("evaluate/metrics.json")
    if m is not None:
        out.append(
            ModelMetrics(
                f"final model ({m.get('split', 'test')})",
                f"{reports}/evaluate/metrics.json",
                m.get("accuracy"),
                m.get("macro_f1"),
                recall=_recall(m),
            )
        )
    return out


# evaluate's pictures, in the order a report shows them
PICTURES = (
    ("most confident mistakes", "evaluate/errors.png"),
    ("reliability before and after calibration", "evaluate/reliability.png"),
    ("precision and recall per class", "evaluate/per_class.png"),
)


def pictures_markdown(
    root: Path, reports: str = "reports", read_bytes: Callable[[str], bytes | None] | None = None
) -> list[str]:
    """Markdown lines showing evaluate's PNGs under `root`, embedded as data: URIs.

    A Prefect markdown artifact is stored in Prefect's database and drawn in the
    browser, which cannot read the workspace: the images travel inside the text.
    `read_bytes` (a path relative to `root` -> bytes or None) reads them from
    elsewhere, e.g. an experiment's commit. Pictures not there yet are left out;
    none at all gives no lines.
    """
    import base64

    def from_root(rel: str) -> bytes | None:
        path = Path(root) / rel
        return path.read_bytes() if path.is_file() else None

    read_bytes = read_bytes or from_root
    lines: list[str] = []
    for title, rel in PICTURES:
        png = read_bytes(f"{reports}/{rel}")
        if png:
            data = base64.b64encode(png).decode("ascii")
            lines += [
                f"**{title}** (`{reports}/{rel}`)",
                "",
                f"![{title}](data:image/png;base64,{data})",
                "",
            ]
    return ["## Pictures", "", *lines] if lines else []
