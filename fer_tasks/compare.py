"""`fer compare`: the write-up's five configurations as named DVC experiments, side by side.

Each configuration is a params-override YAML in `fer_tasks/experiments/`
(only `model.weights`, `finetune.phases`, `finetune.final`). For each one this
module runs

    dvc exp run --temp -n NAME -S '++model.weights="..."' -S '~finetune.phases'
                -S '+finetune.phases={top:{after:"base",...},...}'
                -S '++finetune.final="..."' evaluate

(Hydra override syntax: `~` then `+` replaces the whole phase mapping; a plain
`-S key={...}` would merge into it and keep the baseline's phases. Not `-f`:
that also forces every stage to rerun; a same-named experiment of the same
commit is removed first instead.) `--temp` runs in a throwaway
copy of the last commit plus uncommitted edits to tracked files, so the
workspace and its `params.yaml` are never touched; the experiment is kept as
`refs/exps/.../NAME` (`dvc exp show`, `dvc exp apply NAME`). The per-phase
reports (`reports/phases/<phase>/{metrics.json,history.csv}`) and the test
metrics are then read back from the experiment commit with `dvc.api`, and
`comparison.{md,csv}` plus `curves.png` are written.

Cheap to import (no TensorFlow, DVC or matplotlib at module level): the CLI
builds its parser from `add_arguments`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from fer_tasks.io import atomic_path, write_json
from fer_tasks.params import ParamsError, PhaseParams, parse_params, read_yaml

log = logging.getLogger(__name__)

# the write-up's order; any further YAML in experiments/ sorts after these
ORDER = (
    "EFN_base_init",
    "EFN_base",
    "EFN_2StepsToBlock7",
    "EFN_2StepsToAll",
    "EFN_3StepsToAll",
)
# mappings an override replaces wholesale instead of merging into
_REPLACED = {("finetune", "phases")}
_STAGE = re.compile(r"^Running stage '([^']+)'")
_STAGE_END = re.compile(
    r"^(Updating|Generating) lock file|^Stage '[^']+' (is cached|didn't change)"
)

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


# --- configurations ---------------------------------------------------------------------------


def _experiments_dir():
    return resources.files("fer_tasks.experiments")


def available() -> list[str]:
    """Configuration names: the write-up's five first, then any other YAML, sorted."""
    names = {p.name[:-5] for p in _experiments_dir().iterdir() if p.name.endswith(".yaml")}
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def load_config(name: str) -> dict:
    """The params overrides of configuration `name`."""
    path = _experiments_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown configuration {name!r}; have {', '.join(available())}")
    data = read_yaml(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of params sections")
    return data


def merge_params(base: dict, overrides: dict, _at: tuple[str, ...] = ()) -> dict:
    """`base` with `overrides` deep-merged in; `finetune.phases` is replaced, not merged."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        at = (*_at, key)
        if isinstance(value, dict) and at not in _REPLACED and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value, at)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scale_epochs(finetune: dict, factor: float) -> dict:
    """`finetune` with every phase's epochs scaled by `factor` (at least 1 each).

    The phase *boundaries* (cumulative epochs along the chain) are scaled and
    rounded, so configurations with the same total budget keep the same total
    where the rounding allows (0.1: 30 -> 3, 15+15 -> 2+1, 10+10+10 -> 1+1+1).
    """
    if factor <= 0:
        raise ValueError(f"--epochs-scale must be > 0, got {factor}")
    phases = finetune["phases"]

    def start(name: str) -> int:
        total, cur = 0, phases[name]["after"]
        while cur != "base":
            total += phases[cur]["epochs"]
            cur = phases[cur]["after"]
        return total

    def rnd(x: float) -> int:
        return math.floor(x * factor + 0.5)

    out = copy.deepcopy(finetune)
    for name, phase in phases.items():
        s = start(name)
        out["phases"][name]["epochs"] = max(1, rnd(s + phase["epochs"]) - rnd(s))
    return out


def _parse_phase_set(items: list[str]) -> dict:
    """`KEY=VALUE` strings (YAML values) for every phase; keys checked against PhaseParams."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PhaseParams.model_fields or key == "after":
            keys = ", ".join(k for k in PhaseParams.model_fields if k != "after")
            raise ValueError(
                f"--phase-set {item!r}: expected KEY=VALUE, KEY one of the phase params ({keys})"
            )
        out[key] = read_yaml(value)
    return out


def resolve(
    base: dict, name: str, epochs_scale: float = 1.0, phase_set: dict | None = None
) -> dict:
    """The overrides actually run for `name` (scaled, with `phase_set` applied to every phase).

    Raises ParamsError when the merged params do not validate.
    """
    over = load_config(name)
    ft = merge_params(base.get("finetune", {}), over.get("finetune", {}), ("finetune",))
    if "finetune" in over or epochs_scale != 1.0 or phase_set:
        ft = scale_epochs(ft, epochs_scale) if epochs_scale != 1.0 else ft
        for phase in ft["phases"].values():
            phase.update(copy.deepcopy(phase_set or {}))
        over = {**over, "finetune": {"phases": ft["phases"], "final": ft["final"]}}
    parse_params(merge_params(base, over), f"params.yaml + experiments/{name}.yaml")
    return over


# --- DVC --------------------------------------------------------------------------------------


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


def set_params_args(overrides: dict, _at: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run -S` values for `overrides`: replaced mappings are deleted and re-added."""
    out: list[str] = []
    for key, value in overrides.items():
        at = (*_at, key)
        dotted = ".".join(at)
        if at in _REPLACED:
            out += [f"~{dotted}", f"+{dotted}={_hydra(value)}"]
        elif isinstance(value, dict):
            out += set_params_args(value, at)
        else:
            out.append(f"++{dotted}={_hydra(value)}")
    return out


def exp_run_command(name: str, overrides: dict, target: str | None) -> list[str]:
    # not -f: it would also force every stage to rerun (no run-cache); a previous
    # experiment of the same name is removed first instead (run_experiment)
    cmd = ["dvc", "exp", "run", "--temp", "-n", name]
    for s in set_params_args(overrides):
        cmd += ["-S", s]
    if target == "final":  # the configuration's last phase: training only, no test metrics
        target = f"phase@{overrides['finetune']['final']}"
    return cmd + ([target] if target else [])


def exp_ref(baseline: str, name: str) -> str:
    """The git ref DVC keeps experiment `name` of commit `baseline` under."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def _env() -> dict:
    bindir = str(Path(sys.executable).parent)  # stage commands must find this venv's `fer`
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",  # stage output arrives as it is printed: stage timings
    }


def _git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {root}: {r.stderr.strip()}")
    return r.stdout.strip()


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds per stage that ran, from time-stamped `dvc exp run` output lines."""
    out: dict[str, float] = {}
    current, since = None, 0.0
    for t, line in lines:
        m = _STAGE.match(line)
        if (m or _STAGE_END.match(line)) and current is not None:
            out[current] = out.get(current, 0.0) + t - since
            current = None
        if m:
            current, since = m.group(1), t
    if current is not None:
        out[current] = out.get(current, 0.0) + end - since
    return out


def run_experiment(
    root: Path, name: str, overrides: dict, target: str | None, log_path: Path
) -> dict:
    """Run one configuration as DVC experiment `name`; return rc, baseline, timings."""
    baseline = _git(root, "rev-parse", "HEAD")
    ref = exp_ref(baseline, name)
    if (
        subprocess.run(
            ["git", "rev-parse", "-q", "--verify", ref], cwd=root, capture_output=True
        ).returncode
        == 0
    ):
        log.info("removing the previous experiment %s (%s)", name, ref)
        subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "remove", ref], cwd=root, env=_env(), check=True
        )
    cmd = exp_run_command(name, overrides, target)
    run = run_dvc(root, cmd[1:], log_path, tag=name)
    return {"baseline": baseline, **run}


def run_dvc(
    root: Path, args: list[str], log_path: Path, tag: str = "dvc", env: dict | None = None
) -> dict:
    """Run `dvc ARGS` in `root`, echo and log its output; return rc, wall and stage timings.

    Stage timings come from the time-stamped "Running stage" lines.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with open(log_path, "w") as fh:
        fh.write("$ dvc " + " ".join(shlex.quote(c) for c in args) + "\n")
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env or _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line))
            fh.write(line)
            fh.flush()
            print(f"[{tag}] {line}", end="", flush=True)
        rc = proc.wait()
    wall = time.monotonic() - t0
    stages = stage_seconds(lines, wall)
    return {
        "rc": rc,
        "wall_s": wall,
        "train_s": sum(s for k, s in stages.items() if k.startswith("phase@")),
        "stages": stages,
    }


def read_results(root: Path, rev: str, overrides: dict, base: dict) -> dict:
    """Final-phase val metrics, per-phase collapse and the joined curve of experiment `rev`."""
    import dvc.api

    def read(path: str) -> str:
        return dvc.api.read(path, repo=str(root), rev=rev)

    ft = merge_params(base.get("finetune", {}), overrides.get("finetune", {}), ("finetune",))
    final = ft["final"]
    collapsed = []
    for name in _chain(ft, final):
        m = json.loads(read(f"reports/phases/{name}/metrics.json"))
        limit = PhaseParams.model_validate(ft["phases"][name]).max_class_share
        if m.get("max_class_share", 0.0) > limit:
            collapsed.append(f"{name} ({m['max_class_share']:.0%})")
    m = json.loads(read(f"reports/phases/{final}/metrics.json"))
    history = list(csv.DictReader(io.StringIO(read(f"reports/phases/{final}/history.csv"))))
    try:
        test_accuracy = json.loads(read("reports/evaluate/metrics.json"))["accuracy"]
    except Exception:  # noqa: BLE001 - evaluate not among the targets, or failed
        test_accuracy = None
    return {
        "val_accuracy": m.get("val", {}).get("accuracy"),
        "val_loss": m.get("val", {}).get("loss"),
        "val_macro_f1": m.get("val_macro_f1"),
        "max_class_share": m.get("max_class_share"),
        "collapsed": "; ".join(collapsed) or "no",
        "epochs": len(history) or m.get("step"),
        "test_accuracy": test_accuracy,
        "history": [
            {
                "epoch": int(r["epoch"]),
                "phase": r.get("phase", ""),
                **{k: float(r[k]) for k in ("val_loss", "val_accuracy") if r.get(k)},
            }
            for r in history
        ],
    }


def _chain(ft: dict, final: str) -> list[str]:
    chain, cur = [], final
    while cur != "base":
        chain.append(cur)
        cur = ft["phases"][cur]["after"]
    return chain[::-1]


def _phase_summary(overrides: dict, base: dict) -> str:
    ft = merge_params(base.get("finetune", {}), overrides.get("finetune", {}), ("finetune",))
    return " -> ".join(
        f"{ft['phases'][p].get('unfreeze', 'top')}:{ft['phases'][p]['epochs']}"
        for p in _chain(ft, ft["final"])
    )


# --- report -----------------------------------------------------------------------------------


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
    _plot(curves, paths["png"])
    return paths


def _plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, hist) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        for ax, key in zip(axes, ("val_loss", "val_accuracy"), strict=True):
            pts = [(r["epoch"], r[key]) for r in hist if r.get(key) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, color=color, label=name)
            # phase boundaries: after the last epoch of every phase but the final one
            for a, b in zip(hist, hist[1:], strict=False):
                if a.get("phase") != b.get("phase"):
                    ax.axvline(a["epoch"] + 0.5, color=color, ls="--", lw=0.9, alpha=0.6)
    for ax, title in zip(axes, ("validation loss", "validation accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch (global, across phases)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("dashed lines: phase boundaries (unfreeze more), in each configuration's colour")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --- command ----------------------------------------------------------------------------------


def compare(
    params_path: Path = Path("params.yaml"),
    configs: list[str] | None = None,
    epochs_scale: float = 1.0,
    out_dir: Path = Path("reports/compare"),
    phase_set: list[str] = (),
    target: str | None = "evaluate",
    dry_run: bool = False,
    report_only: bool = False,
) -> list[dict]:
    """Run each configuration as a DVC experiment, then write the comparison; return its rows.

    Every run leaves `out_dir/runs/NAME.json` (experiment commit, timings, the
    overrides run); `report_only` skips running and rebuilds the report from those.
    """
    params_path = Path(params_path)
    if params_path.name != "params.yaml":  # `dvc exp run -S key=...` edits params.yaml
        raise ValueError(f"{params_path}: fer compare works on the project's params.yaml")
    root = params_path.resolve().parent
    if not (root / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{root}/dvc.yaml: run fer compare from the project root")
    base = read_yaml(params_path.read_text())
    names = configs or available()
    pset = _parse_phase_set(list(phase_set))
    resolved = {n: resolve(base, n, epochs_scale, pset) for n in names}  # all validate first
    if dry_run:
        for n, over in resolved.items():
            print(" ".join(shlex.quote(c) for c in exp_run_command(n, over, target)))
        return []
    out_dir = root / out_dir if not Path(out_dir).is_absolute() else Path(out_dir)
    if not report_only:
        untracked = _git(root, "ls-files", "--others", "--exclude-standard")
        if untracked:
            log.warning(
                "dvc exp run --temp sees only files git tracks; these untracked files are "
                "left out of every experiment (git add them if a stage needs them):\n  %s",
                "\n  ".join(untracked.splitlines()[:20]),
            )
    records: dict[str, dict] = {}
    for n, over in resolved.items():
        record_path = out_dir / "runs" / f"{n}.json"
        if not report_only:
            log.info("configuration %s: %s", n, _phase_summary(over, base))
            run = run_experiment(root, n, over, target, out_dir / "logs" / f"{n}.log")
            rev = None
            if run["rc"] == 0:
                try:
                    rev = _git(root, "rev-parse", "--verify", exp_ref(run["baseline"], n))
                except RuntimeError as err:
                    log.error("configuration %s: no experiment commit: %s", n, err)
            record = {
                "config": n,
                **run,
                "rev": rev,
                "epochs_scale": epochs_scale,
                "phase_set": pset,
                "target": target,
                "overrides": over,
                "finished": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            }
            write_json(record_path, record)
        elif record_path.is_file():
            record = json.loads(record_path.read_text())
        else:
            log.warning("configuration %s: no run recorded in %s", n, record_path)
            record = {"config": n, "overrides": over, "rc": None}
        records[n] = record
        if not report_only:  # rewritten after every run: a long run leaves a partial table
            rows = _report(root, base, records, out_dir)
            log.info("configuration %s: %s", n, rows[-1]["status"])
    return _report(root, base, records, out_dir) if report_only else rows


def _row(root: Path, base: dict, rec: dict) -> tuple[dict, list[dict] | None]:
    n, over = rec["config"], rec["overrides"]
    row = {"config": n, "phases": _phase_summary(over, base)}
    for k in ("wall_s", "train_s"):
        if rec.get(k) is not None:
            row[k] = round(rec[k], 1)
    if rec.get("rc") is None:
        return {**row, "status": "not run"}, None
    if rec["rc"] != 0:
        return {**row, "status": f"failed (rc {rec['rc']}, logs/{n}.log)"}, None
    if not rec.get("rev"):
        return {**row, "status": "no experiment commit"}, None
    try:
        res = read_results(root, rec["rev"], over, base)
    except Exception as err:  # noqa: BLE001 - one unreadable run must not lose the rest
        log.error("configuration %s: cannot read results: %s", n, err)
        return {**row, "status": f"no results: {err}"}, None
    curve = res.pop("history")
    return {**row, **res, "status": f"ok (exp {n}, {rec['rev'][:7]})"}, curve


def _setting(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _report(root: Path, base: dict, records: dict[str, dict], out_dir: Path) -> list[dict]:
    rows, curves = [], {}
    for n, rec in records.items():
        row, curve = _row(root, base, rec)
        rows.append(row)
        if curve:
            curves[n] = curve
    ran = [r for r in records.values() if r.get("rc") is not None]
    done = [r["finished"] for r in ran if r.get("finished")]
    notes = [
        f"data: `{base.get('prepare', {}).get('source', '?')}`; backbone: "
        f"`{base.get('model', {}).get('backbone', '?')}`; "
        "runs finished " + (" to ".join(sorted({min(done), max(done)})) if done else "-"),
    ]
    for key, what in (
        ("epochs_scale", "epochs scaled by (the write-up: 30 epochs per configuration)"),
        ("phase_set", "set in every phase"),
        ("target", "stages run up to"),
    ):
        seen = sorted({_setting(r.get(key)) for r in ran} - {""})
        if seen:
            notes.append(f"{what}: {' / '.join(f'`{v}`' for v in seen)}")
    notes.append(
        "each row is a DVC experiment named after the configuration (`dvc exp show`, "
        "`dvc exp apply NAME`); configurations: `fer_tasks/experiments/NAME.yaml`, "
        "docs/experiments.md; the `epochs` column is what ran"
    )
    paths = write_comparison(rows, curves, out_dir, notes)
    log.info("wrote %s, %s, %s", paths["md"], paths["csv"], paths["png"])
    return rows


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The `fer compare` options (the CLI adds --params and -v)."""
    sp.add_argument(
        "--configs",
        nargs="+",
        metavar="NAME",
        help=f"configurations to run (default: all: {', '.join(available())})",
    )
    sp.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every phase's epochs by F, at least 1 each (0.1: 3 of 30 epochs)",
    )
    sp.add_argument("--out", default="reports/compare", help="output folder (default: %(default)s)")
    sp.add_argument(
        "--phase-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a phase param in every phase of every configuration, e.g. steps_per_epoch=20",
    )
    sp.add_argument(
        "--target",
        default="evaluate",
        help="last stage each experiment runs (default: %(default)s; 'final': the last "
        "phase, training only; 'export': the whole pipeline)",
    )
    sp.add_argument(
        "--dry-run", action="store_true", help="validate and print the dvc commands; run nothing"
    )
    sp.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the report from the runs recorded in OUT/runs/",
    )


def run_from_args(a: argparse.Namespace) -> int:
    rows = compare(
        Path(a.params),
        configs=a.configs,
        epochs_scale=a.epochs_scale,
        out_dir=Path(a.out),
        phase_set=a.phase_set,
        target=a.target or None,
        dry_run=a.dry_run,
        report_only=a.report_only,
    )
    failed = [r["config"] for r in rows if not str(r.get("status", "")).startswith("ok")]
    if failed:
        raise RuntimeError(f"configurations without results: {', '.join(failed)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m fer_tasks.compare` (same options as `fer compare`)."""
    ap = argparse.ArgumentParser(prog="fer compare", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-v", "--verbose", action="store_true")
    add_arguments(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return run_from_args(a)
    except (ParamsError, ValueError, RuntimeError, FileNotFoundError) as err:
        if a.verbose:
            raise
        print(f"fer compare: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
