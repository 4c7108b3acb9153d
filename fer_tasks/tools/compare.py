"""`fer compare`: the write-up's five configurations as named DVC experiments, side by side.

Each configuration is a params-override YAML in `fer_tasks/overlays/`
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

Overlays and their `-S` form: fer_tasks/lib/overlay.py; DVC: fer_tasks/lib/dvc_adapter.py;
the report: compare_report.py. Cheap to import (no TensorFlow, DVC or matplotlib
at module level).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from fer_tasks.lib import dvc_adapter as dvc
from fer_tasks.lib import overlay
from fer_tasks.lib.errors import FerError, InputError, MissingInput
from fer_tasks.lib.io import write_json
from fer_tasks.lib.params import FinetuneParams, read_yaml
from fer_tasks.lib.reports import read_metrics
from fer_tasks.tools.compare_report import write_comparison

log = logging.getLogger(__name__)


def exp_run_command(name: str, over: dict, target: str | None) -> list[str]:
    # not -f: it would also force every stage to rerun (no run-cache); a previous
    # experiment of the same name is removed first instead (run_experiment)
    if target == "final":  # the configuration's last phase: training only, no test metrics
        target = f"phase@{over['finetune']['final']}"
    set_params = overlay.to_set_params(over)
    return ["dvc", *dvc.exp_run_args(name, set_params, [target] if target else [], temp=True)]


def run_experiment(root: Path, name: str, over: dict, target: str | None, log_path: Path) -> dict:
    """Run one configuration as DVC experiment `name`; return rc, baseline, timings."""
    baseline = dvc.git(root, "rev-parse", "HEAD")
    ref = dvc.exp_ref(baseline, name)
    exists = subprocess.run(["git", "rev-parse", "-q", "--verify", ref], cwd=root).returncode == 0
    if exists:
        log.info("removing the previous experiment %s (%s)", name, ref)
        dvc.dvc(root, "exp", "remove", ref)
    res = dvc.stream(
        root,
        exp_run_command(name, over, target)[1:],
        log_path=log_path,
        on_line=lambda line: print(f"[{name}] {line}", flush=True),
    )
    return {
        "baseline": baseline,
        "rc": res.rc,
        "wall_s": res.wall_s,
        "train_s": res.train_s,
        "stages": res.stages,
    }


def _finetune(over: dict, base: dict) -> FinetuneParams:
    ft = overlay.apply(base.get("finetune", {}), over.get("finetune", {}), ("finetune",))
    return FinetuneParams.model_validate(ft)


def read_results(root: Path, rev: str, over: dict, base: dict) -> dict:
    """Final-phase val metrics, per-phase collapse and the joined curve of experiment `rev`."""

    def read(path: str) -> str | None:
        try:
            return dvc.read(root, path, rev)
        except Exception:  # noqa: BLE001 - absent at that commit (evaluate not a target)
            return None

    ft = _finetune(over, base)
    chain = ft.chain()
    models = {m.name: m for m in read_metrics(read, chain)}
    collapsed = [
        f"{n} ({m.max_class_share:.0%})"
        for n in chain
        if (m := models.get(f"phase@{n} (val)")) is not None
        and (m.max_class_share or 0.0) > ft.phases[n].max_class_share
    ]
    final = models[f"phase@{ft.final} (val)"]  # KeyError: the run has no final phase metrics
    history = list(
        csv.DictReader(io.StringIO(read(f"reports/phases/{ft.final}/history.csv") or ""))
    )
    test = [m.accuracy for m in models.values() if m.name.startswith("final model")]
    return {
        "val_accuracy": final.accuracy,
        "val_loss": final.loss,
        "val_macro_f1": final.macro_f1,
        "max_class_share": final.max_class_share,
        "collapsed": "; ".join(collapsed) or "no",
        "epochs": len(history) or final.epochs,
        "test_accuracy": test[0] if test else None,
        "history": [
            {
                "epoch": int(r["epoch"]),
                "phase": r.get("phase", ""),
                **{k: float(r[k]) for k in ("val_loss", "val_accuracy") if r.get(k)},
            }
            for r in history
        ],
    }


def _phase_summary(over: dict, base: dict) -> str:
    ft = _finetune(over, base)
    return " -> ".join(f"{ft.phases[p].unfreeze}:{ft.phases[p].epochs}" for p in ft.chain())


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
        raise InputError(f"{params_path}: fer compare works on the project's params.yaml")
    root = params_path.resolve().parent
    if not (root / "dvc.yaml").is_file():
        raise MissingInput(f"{root}/dvc.yaml: run fer compare from the project root")
    base = read_yaml(params_path.read_text())
    names = configs or list(overlay.WRITEUP)
    pset = overlay.parse_phase_set(list(phase_set))
    resolved = {
        n: overlay.resolve(base, n, epochs_scale, pset) for n in names
    }  # all validate first
    if dry_run:
        for n, over in resolved.items():
            print(" ".join(shlex.quote(c) for c in exp_run_command(n, over, target)))
        return []
    out_dir = root / out_dir if not Path(out_dir).is_absolute() else Path(out_dir)
    if not report_only:
        untracked = dvc.git(root, "ls-files", "--others", "--exclude-standard")
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
                    rev = dvc.git(root, "rev-parse", "--verify", dvc.exp_ref(run["baseline"], n))
                except dvc.DvcError as err:
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
        "`dvc exp apply NAME`); configurations: `fer_tasks/overlays/NAME.yaml`, "
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
        help=f"overlays to run (default: the write-up's five: {', '.join(overlay.WRITEUP)}; "
        "any of `fer preset --list`)",
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


def run(a: argparse.Namespace) -> int:
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
        raise FerError(f"configurations without results: {', '.join(failed)}")
    return 0
