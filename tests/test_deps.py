"""dvc.yaml's code deps are exactly what each stage's command imports.

A stage that misses a module it imports is not rerun when that module changes
(a stale result); a stage that lists a module it does not import is rerun for
nothing (an edit to predict.py must not retrain). The closure is derived from
the code: the `fer` CLI's top-level imports, the module that commands.py
names for the stage's subcommand, then every `fer_tasks` import of those
modules, transitively (function-level imports included: they run too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "fer_tasks"


def _module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _imports(nodes: list[ast.AST]) -> set[str]:
    """Project modules named by the import statements under `nodes`."""
    out: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PKG}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PKG:
            out.add(node.module)
            # `from fer_tasks.lib import io` imports the module fer_tasks.lib.io
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if _module_file(m)}


def closure(modules: set[str]) -> set[str]:
    """Files of `modules`, their parent packages and everything they import, transitively."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
            f = _module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo += _imports([ast.parse(f.read_text())])
    return {str(f.relative_to(ROOT)) for f in seen}


def command_closure(subcommand: str) -> set[str]:
    """cli.py's top-level imports plus the module commands.py names for `subcommand`."""
    from fer_tasks.commands import STAGES, TOOLS

    cli_file = ROOT / PKG / "cli.py"
    tree = ast.parse(cli_file.read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    if subcommand in STAGES:
        module = STAGES[subcommand].target.split(":")[0]
    else:
        assert subcommand in TOOLS, f"commands.py declares no `fer {subcommand}`"
        module = TOOLS[subcommand][0]
    return closure(_imports(top) | {module}) | {f"{PKG}/cli.py"}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: st.get("do", st) for name, st in stages.items()}


def _code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.startswith(f"{PKG}/") and d.endswith(".py")}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_are_its_import_closure(name):
    stage = _stages()[name]
    argv = stage["cmd"].split()
    assert argv[0] == "fer", f"stage {name}: expected a `fer` command, got {argv[0]!r}"
    expected = command_closure(argv[1])
    listed = _code_deps(stage)
    assert not expected - listed, f"dvc.yaml stage {name} misses {sorted(expected - listed)}"
    assert not listed - expected, f"dvc.yaml stage {name} lists unused {sorted(listed - expected)}"


def test_closure_sees_function_level_and_transitive_imports():
    # the derivation itself: phase.py imports model.py and data.py; only export (inside a
    # function) imports the classifiers; no stage imports a tool such as predict.py
    phase = command_closure("phase")
    assert {"fer_tasks/stages/phase.py", "fer_tasks/lib/model.py", "fer_tasks/lib/data.py"} <= phase
    assert "fer_tasks/lib/classifiers.py" not in phase
    assert "fer_tasks/lib/classifiers.py" in command_closure("export")
    for stage in _stages().values():
        sub = stage["cmd"].split()[1]
        assert not {f for f in command_closure(sub) if f.startswith("fer_tasks/tools/")}, sub


def test_a_missing_dep_is_reported(monkeypatch):
    stages = _stages()
    stages["phase"]["deps"] = [d for d in stages["phase"]["deps"] if d != "fer_tasks/lib/model.py"]
    monkeypatch.setattr(sys.modules[__name__], "_stages", lambda: stages)
    with pytest.raises(AssertionError, match="misses .*model.py"):
        test_stage_deps_are_its_import_closure("phase")
