"""`fer preset NAME`: lay a shipped overlay (fer_tasks/overlays/NAME.yaml) over params.yaml.

An overlay holds only the keys that differ from params.yaml (the real-FER2013
presets, or one of the write-up's configurations). The result is validated
before it replaces params.yaml (atomically); then `dvc repro` runs it,
rerunning only the stages whose params changed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fer_tasks.lib import overlay
from fer_tasks.lib.io import atomic_path
from fer_tasks.lib.params import Params, parse_params, read_yaml


def preset_params(name: str, params_path: Path) -> Params:
    """The validated params of `params_path` with overlay `name` applied (nothing written)."""
    base = read_yaml(Path(params_path).read_text())
    return parse_params(overlay.apply(base, overlay.load(name)), f"{params_path} + {name}")


def apply_preset(name: str, params_path: Path, source: str | None = None) -> list[str]:
    """Write params_path with overlay `name` (and prepare.source) applied; return the changes."""
    params_path = Path(params_path)
    current = read_yaml(params_path.read_text())
    over = overlay.load(name)
    if source is not None:
        over = overlay.apply(over, {"prepare": {"source": source}})
    merged = overlay.apply(current, over)  # finetune.phases is replaced, not merged
    parse_params(merged, f"{params_path} + preset {name}")
    with atomic_path(params_path) as tmp:
        tmp.write_text(
            f"# params.yaml with preset {name} applied (`fer preset {name}`)\n"
            + yaml.safe_dump(merged, sort_keys=False)
        )
    return overlay.changes(current, merged)


def add_arguments(sp) -> None:
    sp.add_argument("name", nargs="?", help="overlay name (omit, or --list, to list them)")
    sp.add_argument("--list", action="store_true", help="list the shipped overlays")
    sp.add_argument("--source", help="also set prepare.source (e.g. data/raw/fer2013.csv)")


def run(a) -> int:
    if a.list or a.name is None:
        print("\n".join(f"{n:<20} {overlay.describe(n)}" for n in overlay.available()))
        return 0
    changes = apply_preset(a.name, Path(a.params), a.source)
    print(f"{a.params}: preset {a.name} applied, {len(changes)} change(s)")
    for line in changes:
        print(f"  {line}")
    print("next: dvc repro")
    return 0
