"""Overlays: partial params laid over params.yaml, the one way params are varied.

A preset (`fer preset fer2013-cpu`), a configuration of the write-up (`fer
compare`) and a `-S key=value` override (the Prefect flow, `dvc exp run -S`)
are all the same thing: a mapping with some of params.yaml's keys. The shipped
ones live in `fer_tasks/overlays/*.yaml`. `apply` lays one over params; every
key is checked against the typed `Params` schema when an overlay is loaded or
parsed, and the result is validated like `fer validate` before anything runs.
`finetune.phases` is replaced as a whole, never merged: a configuration's
phase chain is exactly the one it lists.
"""

from __future__ import annotations

import copy
import math
import re
from importlib import resources
from typing import Any

from pydantic import BaseModel

from fer_tasks.lib.errors import InputError
from fer_tasks.lib.params import FinetuneParams, Params, ParamsError, PhaseParams, read_yaml

# the write-up's five configurations, in its order; `fer compare` runs these by default
WRITEUP = (
    "EFN_base_init",
    "EFN_base",
    "EFN_2StepsToBlock7",
    "EFN_2StepsToAll",
    "EFN_3StepsToAll",
)
REPLACED = {("finetune", "phases")}  # mappings an overlay replaces wholesale


def _dir():
    return resources.files("fer_tasks.overlays")


def available() -> list[str]:
    """Shipped overlay names: the write-up's five first, then the rest, sorted."""
    names = {p.name[:-5] for p in _dir().iterdir() if p.name.endswith(".yaml")}
    return [n for n in WRITEUP if n in names] + sorted(names - set(WRITEUP))


def describe(name: str) -> str:
    """The first comment line of overlay `name` (what it is for)."""
    for line in (_dir() / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load(name: str) -> dict:
    """The shipped overlay `name`, its keys checked against the params schema."""
    path = _dir() / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"overlay {name!r} not found; have {', '.join(available())}")
    data = read_yaml(path.read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of params sections")
    check_keys(data, str(path))
    return data


def check_keys(overlay: dict, where: str) -> None:
    """Refuse keys that params.yaml does not have (a typo would otherwise add a new key)."""
    errors: list[str] = []

    def walk(node: Any, model: type[BaseModel], at: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            dotted = f"{at}.{key}" if at else str(key)
            field = model.model_fields.get(key)
            if field is None:
                errors.append(f"{dotted}: not a params key")
            elif dotted == "finetune.phases" and isinstance(value, dict):
                for name, phase in value.items():
                    walk(phase, PhaseParams, f"{dotted}.{name}")
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(value, field.annotation, dotted)

    walk(overlay, Params, "")
    if errors:
        raise ParamsError(f"{where}:\n" + "\n".join(f"  {e}" for e in errors))


def apply(
    base: dict,
    overlay: dict,
    _at: tuple[str, ...] = (),
    replaced: frozenset[tuple[str, ...]] | set[tuple[str, ...]] = REPLACED,
) -> dict:
    """`base` with `overlay` laid over it: a deep merge in which the mappings at the
    `replaced` paths (an overlay's: `finetune.phases`) are replaced wholesale. With
    ``replaced=frozenset()`` every key is set in place, as `dvc exp run -S` does."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        at = (*_at, key)
        if isinstance(value, dict) and at not in replaced and isinstance(out.get(key), dict):
            out[key] = apply(out[key], value, at, replaced)
        else:
            out[key] = copy.deepcopy(value)
    return out


def changes(old: Any, new: Any, at: str = "") -> list[str]:
    """What `apply` changed, one `key: old -> new` line per leaf."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in new:
            out += changes(old.get(k), new[k], f"{at}.{k}" if at else str(k))
        out += [(f"{at}.{k}" if at else str(k)) + ": removed" for k in old if k not in new]
        return out
    return [] if old == new else [f"{at}: {old!r} -> {new!r}"]


# --- -S key=value, both ways -----------------------------------------------------------------


def parse_set(items: list[str]) -> dict:
    """`-S key=value` strings (`dvc exp run -S` syntax, YAML values) as an overlay."""
    overlay: dict = {}
    for item in items:
        key, sep, value = item.removeprefix("params.yaml:").partition("=")
        if not sep or not key or key.startswith(("+", "~")):
            raise ParamsError(f"-S {item!r}: expected key=value with a dotted params key")
        node = overlay
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = read_yaml(value) if value.strip() else ""
    check_keys(overlay, "-S " + " ".join(items))
    return overlay


def _hydra(value) -> str:
    """A Python value as a Hydra override value (what `dvc exp run -S` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Hydra: a backslash is an escape only before a quote (or the closing quote)
        body = re.sub(r'(\\*)("|$)', lambda m: 2 * m[1] + ("\\" + m[2] if m[2] else ""), value)
        return '"' + body + '"'
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    raise TypeError(f"cannot express {value!r} as a -S override")


def to_set_params(overlay: dict, _at: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run -S` values for `overlay`: replaced mappings are deleted and re-added."""
    out: list[str] = []
    for key, value in overlay.items():
        at = (*_at, key)
        dotted = ".".join(at)
        if at in REPLACED:
            out += [f"~{dotted}", f"+{dotted}={_hydra(value)}"]
        elif isinstance(value, dict):
            out += to_set_params(value, at)
        else:
            out.append(f"++{dotted}={_hydra(value)}")
    return out


# --- shaping a configuration for a comparison -------------------------------------------------


def scale_epochs(finetune: dict, factor: float) -> dict:
    """`finetune` with every phase's epochs scaled by `factor` (at least 1 each).

    The phase *boundaries* (cumulative epochs along the chain) are scaled and
    rounded, so configurations with the same total budget keep the same total
    where the rounding allows (0.1: 30 -> 3, 15+15 -> 2+1, 10+10+10 -> 1+1+1).
    """
    if factor <= 0:
        raise InputError(f"--epochs-scale must be > 0, got {factor}")
    chain = FinetuneParams.model_validate(finetune)

    def rnd(x: float) -> int:
        return math.floor(x * factor + 0.5)

    out = copy.deepcopy(finetune)
    for name, phase in finetune["phases"].items():
        s = chain.start_epoch(name)
        out["phases"][name]["epochs"] = max(1, rnd(s + phase["epochs"]) - rnd(s))
    return out


def parse_phase_set(items: list[str]) -> dict:
    """`KEY=VALUE` strings (YAML values) for every phase; keys checked against PhaseParams."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PhaseParams.model_fields or key == "after":
            keys = ", ".join(k for k in PhaseParams.model_fields if k != "after")
            raise InputError(
                f"--phase-set {item!r}: expected KEY=VALUE, KEY one of the phase params ({keys})"
            )
        out[key] = read_yaml(value)
    return out


def resolve(
    base: dict, name: str, epochs_scale: float = 1.0, phase_set: dict | None = None
) -> dict:
    """The overlay actually run for `name` (scaled, with `phase_set` applied to every phase).

    Raises ParamsError when the result does not validate.
    """
    from fer_tasks.lib.params import parse_params

    over = load(name)
    if "finetune" in over or epochs_scale != 1.0 or phase_set:
        ft = apply(base.get("finetune", {}), over.get("finetune", {}), ("finetune",))
        ft = scale_epochs(ft, epochs_scale) if epochs_scale != 1.0 else ft
        for phase in ft["phases"].values():
            phase.update(copy.deepcopy(phase_set or {}))
        over = {**over, "finetune": {"phases": ft["phases"], "final": ft["final"]}}
    parse_params(apply(base, over), f"params.yaml + overlay {name}")
    return over
