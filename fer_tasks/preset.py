"""`fer preset NAME`: merge a shipped preset (fer_tasks/presets/NAME.yaml) into params.yaml.

A preset is an overlay: only the keys that differ from params.yaml. The
merged file is validated before it replaces params.yaml (atomically); then
`dvc repro` runs the preset, rerunning only the stages whose params changed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fer_tasks.compare import merge_params
from fer_tasks.io import atomic_path
from fer_tasks.params import Params, ParamsError, parse_params, read_yaml

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_overlay(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"preset {name!r} not found in {PRESETS_DIR} (have {available()})")
    return read_yaml(path.read_text()) or {}


def preset_params(name: str, params_path: Path) -> Params:
    """The validated params of `params_path` with preset `name` merged in (nothing written)."""
    base = read_yaml(Path(params_path).read_text())
    return parse_params(merge_params(base, load_overlay(name)), f"{params_path} + preset {name}")


def _changes(old, new, at: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in new:
            out += _changes(old.get(k), new[k], f"{at}.{k}" if at else str(k))
        out += [(f"{at}.{k}" if at else str(k)) + ": removed" for k in old if k not in new]
        return out
    return [] if old == new else [f"{at}: {old!r} -> {new!r}"]


def apply_preset(name: str, params_path: Path, source: str | None = None) -> list[str]:
    """Write params_path merged with preset `name` (and prepare.source); return the changes."""
    params_path = Path(params_path)
    current = read_yaml(params_path.read_text())
    overlay = load_overlay(name)
    if source is not None:
        overlay = merge_params(overlay, {"prepare": {"source": source}})
    merged = merge_params(current, overlay)  # finetune.phases is replaced, not merged
    parse_params(merged, f"{params_path} + preset {name}")
    with atomic_path(params_path) as tmp:
        tmp.write_text(
            f"# params.yaml with preset {name} applied (`fer preset {name}`)\n"
            + yaml.safe_dump(merged, sort_keys=False)
        )
    return _changes(current, merged)
