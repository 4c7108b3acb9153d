"""A preset on real FER2013 through the project's own DVC pipeline, then extended.

What a user does, in a work clone outside the project (`--work`):

    git clone <project> WORK && cd WORK
    cp fer2013.csv.gz data/raw/ && dvc add data/raw/fer2013.csv.gz
    fer preset fer2013-cpu --source data/raw/fer2013.csv.gz && git commit -am preset
    dvc repro evaluate export              # the headline run; its dvc.lock is committed
    dvc exp run -n fer2013-cpu-plus2 -S finetune.phases.all.epochs=20   # --extend 2

The clone is of the project's last commit (commit first). Stage commands run
the clone's own `fer_tasks` (PYTHONPATH), so editing the project while a run
goes on changes nothing in it. The figures come from the pipeline's files:
`reports/evaluate/metrics.json` (the test split, read once: PublicTest under the
presets' protocol, with val carved from Training), `reports/export.json`, the
final phase's `state.json`; stage times from the time-stamped "Running stage"
lines of `dvc repro`. Rerunning with the same --work reruns nothing (DVC's
cache) and only extends.

    .venv/bin/python bench/real_pipeline.py --preset fer2013-cpu [--extend 2] [--figures docs/img]
    .venv/bin/python bench/real_pipeline.py --extend 0 --ablation   # + the use_ema rows on val
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from fer_tasks.lib import dvc_adapter as dvc
from fer_tasks.lib.plots import plot_curves

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "../shared/datasets/fer2013/fer2013.csv.gz"
IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]


def _git(work: Path, *args: str) -> str:
    return dvc.git(work, *IDENTITY, *args)


def work_env(work: Path) -> dict:
    """The environment for DVC in `work`: this venv's `fer`, importing the clone's code."""
    return dvc.env(PYTHONPATH=str(work) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _dvc(work: Path, *args: str) -> str:
    return dvc.dvc(work, *args, environ=work_env(work))


def _timed(work: Path, args: list[str], log: Path, tag: str) -> dict:
    """`dvc ARGS` in the clone, echoed with `tag`; rc, wall and per-stage seconds."""
    res = dvc.stream(
        work,
        args,
        log_path=log,
        environ=work_env(work),
        on_line=lambda line: print(f"[{tag}] {line}", flush=True),
    )
    return {"rc": res.rc, "wall_s": res.wall_s, "train_s": res.train_s, "stages": res.stages}


def full_phase_seconds(log: str, phase: str, seconds: float, phase_epochs: int) -> dict:
    """The phase's full training time, from one `dvc repro` of it that took `seconds`.

    When that repro resumed the phase from a checkpoint (after a kill or a pause),
    it trained only some of the phase's epochs: scale its time per trained epoch
    (the `epochs A-B of N` line) to all `phase_epochs` of them.
    """
    m = re.findall(rf"phase {re.escape(phase)}: epochs (\d+)-(\d+) of \d+", log)
    trained = int(m[-1][1]) - int(m[-1][0]) + 1 if m else phase_epochs
    return {
        "seconds": seconds * phase_epochs / trained,
        "epochs_trained": trained,
        "phase_epochs": phase_epochs,
        "basis": "measured" if trained == phase_epochs else f"{trained} resumed epochs, scaled",
    }


def make_work_clone(
    work: Path, preset: str | None, csv: Path, overrides: list[str] | None = None
) -> None:
    """Clone the project's HEAD into `work`, dvc-add the CSV, apply the preset, commit.

    With no preset, params.yaml only gets the CSV as `prepare.source`. `overrides`
    (``KEY=VALUE``, as `dvc exp run -S`) go over the preset, checked like `fer validate`.
    """
    from fer_tasks.lib import overlay
    from fer_tasks.lib.params import parse_params
    from fer_tasks.tools.preset import apply_preset

    if (work / ".git").is_dir():
        logging.info("%s exists: reusing it (DVC reruns only what changed)", work)
        return
    if _git(ROOT, "status", "--porcelain", "--untracked-files=no"):
        logging.warning("the project has uncommitted changes; the work clone has HEAD only")
    if not csv.is_file():
        raise SystemExit(f"{csv}: FER2013 CSV not found (--csv)")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    try:  # a clone that fails here is removed: a rerun would reuse it as it is
        raw = work / "data" / "raw" / csv.name
        raw.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv, raw)
        _dvc(work, "add", "-q", str(raw.relative_to(work)))
        source = str(raw.relative_to(work))
        if preset is None:
            params = yaml.safe_load((work / "params.yaml").read_text())
            params["prepare"]["source"] = source
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        else:
            changes = apply_preset(preset, work / "params.yaml", source)
            logging.info("preset %s: %s", preset, "; ".join(changes))
        if overrides:  # each key set in place, as dvc exp run -S does (no overlay replacement)
            params = overlay.apply(
                yaml.safe_load((work / "params.yaml").read_text()),
                overlay.parse_set(overrides),
                replaced=frozenset(),
            )
            parse_params(params, f"{work / 'params.yaml'} with --set {' '.join(overrides)}")
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            logging.info("--set %s", " ".join(overrides))
        _git(work, "add", "-A")
        _git(work, "commit", "-qm", f"preset {preset} on {csv.name}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def read_run(work: Path, final: str) -> dict:
    from fer_tasks.lib.io import read_json

    out = {"evaluate": read_json(work / "reports" / "evaluate" / "metrics.json")}
    out["final_state"] = read_json(work / "models" / "phases" / final / "state.json")
    if (work / "reports" / "export.json").is_file():
        out["export"] = read_json(work / "reports" / "export.json")
    return out


def write_figures(work: Path, name: str, final: str, dest: Path) -> list[Path]:
    """Curves and the evaluate stage's confusion matrix of the run in `work`, into `dest`."""
    from fer_tasks.lib.io import read_json

    state = work / "models" / "phases" / final / "state.json"
    dest.mkdir(parents=True, exist_ok=True)
    curves = dest / f"{name}_curves.png"
    history = read_json(state)["history"]
    plot_curves({name: history}, curves, f"{name} on FER2013 (2 CPU cores)", with_train=True)
    confusion = dest / f"{name}_confusion.png"
    shutil.copyfile(work / "reports" / "evaluate" / "confusion.png", confusion)
    return [curves, confusion]


def ablation_table(plain: dict, ema: dict, phase_s: dict, tta_s: dict) -> list[dict]:
    """Issue 17's ablation rows on val: baseline, +TTA, +EMA, +both.

    `plain` and `ema` are the `calibrate` stage's reports (models/calibration.json)
    of the committed run and of its `use_ema` experiment: each holds val accuracy
    with and without flip TTA. `phase_s` gives the final phase's seconds per epoch
    (``{"plain": s, "ema": s}``), `tta_s` the seconds of one pass over val
    (``{"one": s, "two": s}``): the extra time is training time for EMA and
    inference time for TTA.
    """
    for name, cal in (("plain", plain), ("ema", ema)):
        if cal.get("split") != "val":
            raise ValueError(f"{name}: not a calibrate report on val: {sorted(cal)}")
    base = plain["accuracy"]["plain"]
    rows = []
    for label, cal, key in (
        ("baseline", plain, "plain"),
        ("+TTA", plain, "tta_flip"),
        ("+EMA", ema, "plain"),
        ("+both", ema, "tta_flip"),
    ):
        uses_ema, uses_tta = cal is ema, key == "tta_flip"
        rows.append(
            {
                "config": label,
                "val_accuracy": cal["accuracy"][key],
                "gain_points": 100 * (cal["accuracy"][key] - base),
                "extra_train_s_per_epoch": phase_s["ema"] - phase_s["plain"] if uses_ema else 0.0,
                "extra_val_pass_s": tta_s["two"] - tta_s["one"] if uses_tta else 0.0,
                "n": cal["n"],
            }
        )
    return rows


def val_pass_seconds(work: Path, final: str, batch_size: int) -> dict:
    """Seconds of the final model's logits on val as `calibrate` computes them: one pass,
    and with flip TTA. Each call builds and traces its logit model, so "two" - "one"
    is the cost of the mirror-image pass alone."""
    import time

    from fer_tasks.lib.io import load_split
    from fer_tasks.lib.model import load_fer_model, predict_logits

    model = load_fer_model(work / "models" / "phases" / final / "model.keras")
    images, _ = load_split(work / "data" / "prepared" / "val.npz")
    out = {}
    for key, tta_flip in (("one", False), ("two", True)):
        start = time.perf_counter()
        predict_logits(model, images, batch_size, tta_flip=tta_flip)
        out[key] = time.perf_counter() - start
    return out


def epoch_seconds(log: str, phase: str) -> list[float]:
    """Seconds of each epoch of `phase` in a `dvc repro`/`dvc exp run` log: Keras'
    ``404/404 - 503s - ...`` lines inside the ``Running stage 'phase@PHASE'`` part."""
    out, inside = [], False
    for line in log.splitlines():
        text = line.split("] ", 1)[-1] if line.startswith("[") else line  # tagged echo
        if text.startswith("Running stage "):
            inside = text.startswith(f"Running stage 'phase@{phase}'")
        elif inside and (m := re.match(r"\s*\d+/\d+ - (\d+(?:\.\d+)?)s - ", text)):
            out.append(float(m.group(1)))
    return out


def run_ablation(work: Path, preset: str, final: str, logs: Path, plain_log: Path) -> dict:
    """The committed run against its `use_ema` experiment, on val (the `calibrate` stage).

    The workspace first goes back to the committed run (an extension experiment
    leaves its params and outputs there), unless an interrupted run of this
    experiment is in it: then it resumes from its phase checkpoint. Training time
    per epoch is each run's fastest epoch of the final phase (the least disturbed
    by anything else on the machine), from `plain_log` (the log of the run that
    trained it) and the experiment's log.
    """
    from fer_tasks.lib.io import read_json
    from fer_tasks.lib.params import load_params

    plain_epochs = epoch_seconds(plain_log.read_text(), final)
    if not plain_epochs:
        raise SystemExit(f"{plain_log}: no epoch of phase {final} in it (--plain-log)")
    saved = logs / "ablation_plain.json"  # the committed run's figures, read before the exp
    params = yaml.safe_load((work / "params.yaml").read_text())
    if params["finetune"]["phases"][final].get("use_ema") and saved.is_file():
        # an interrupted experiment: keep its phase checkpoint, which a checkout would replace
        logging.info("resuming the use_ema experiment; committed run's figures from %s", saved)
        figures = read_json(saved)
        plain, tta_s = figures["calibration"], figures["val_pass_s"]
    else:
        _git(work, "checkout", "--", "params.yaml", "dvc.lock")
        # only calibrate and what it depends on: stages the run skipped have no cache
        _dvc(work, "checkout", "--force", "--with-deps", "calibrate")
        plain = read_json(work / "models" / "calibration.json")
        batch_size = load_params(work / "params.yaml").calibrate.batch_size
        tta_s = val_pass_seconds(work, final, batch_size)
        saved.write_text(json.dumps({"calibration": plain, "val_pass_s": tta_s}, indent=2))
    name = f"{preset}-ema"
    key = f"finetune.phases.{final}.use_ema"
    # ++: set the key whether or not the preset has it (Hydra's add-or-override)
    r = _timed(
        work,
        ["exp", "run", "-n", name, "-S", f"++{key}=true", "calibrate"],
        logs / "ema.log",
        "ema",
    )
    if r["rc"] != 0:
        raise SystemExit(f"dvc exp run failed (rc {r['rc']}); log: {logs / 'ema.log'}")
    ema_epochs = epoch_seconds((logs / "ema.log").read_text(), final)
    ema = read_json(work / "models" / "calibration.json")
    per_epoch = {"plain": min(plain_epochs), "ema": min(ema_epochs)}
    return {
        "experiment": name,
        "rows": ablation_table(plain, ema, per_epoch, tta_s),
        "calibration": {"plain": plain, "ema": ema},
        "phase_s_per_epoch": per_epoch,
        "epoch_seconds": {"plain": plain_epochs, "ema": ema_epochs},
        "val_pass_s": tta_s,
    }


def main() -> None:
    from fer_tasks.lib.params import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fer2013-cpu")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--work", type=Path, help="work clone (default: /tmp/fer_real_<preset>)")
    ap.add_argument("--out", type=Path, help="JSON (default: bench/results/real_<preset>.json)")
    ap.add_argument("--extend", type=int, default=2, help="then extend the final phase by N")
    ap.add_argument("--figures", type=Path, help="also write curves + confusion PNGs here")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="then retrain the final phase with use_ema and print the val ablation table",
    )
    ap.add_argument(
        "--plain-log",
        type=Path,
        help="--ablation: a log of the run that trained the final phase "
        "(default: this run's bench_logs/repro.log)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param over the preset, as dvc exp run -S (repeatable; "
        "a new --work only: an existing clone keeps its params)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = (args.work or Path(f"/tmp/fer_real_{args.preset}")).resolve()
    make_work_clone(work, args.preset, args.csv.resolve(), args.overrides)
    p = load_params(work / "params.yaml")
    final = p.finetune.final
    logs = work / "bench_logs"
    results: dict = {"preset": args.preset, "overrides": args.overrides, "work": str(work)}

    full = _timed(work, ["repro", "evaluate", "export"], logs / "repro.log", "repro")
    if full["rc"] != 0:
        raise SystemExit(f"dvc repro failed (rc {full['rc']}); log: {logs / 'repro.log'}")
    results["run"] = {**full, **read_run(work, final)}
    _git(work, "add", "-A")
    if _git(work, "status", "--porcelain"):
        _git(work, "commit", "-qm", f"{args.preset}: dvc repro")
    results["run"]["commit"] = _git(work, "rev-parse", "HEAD")
    if args.figures:  # of the committed run, before any extension
        results["figures"] = [str(f) for f in write_figures(work, args.preset, final, args.figures)]

    if args.extend:
        epochs = p.finetune.phases[final].epochs + args.extend
        name = f"{args.preset}-plus{args.extend}"
        key = f"finetune.phases.{final}.epochs"
        ext = _timed(
            work,
            ["exp", "run", "-n", name, "-S", f"{key}={epochs}", "evaluate", "export"],
            logs / "extend.log",
            "extend",
        )
        if ext["rc"] != 0:
            raise SystemExit(f"dvc exp run failed (rc {ext['rc']}); log: {logs / 'extend.log'}")
        results["extend"] = {"experiment": name, "epochs": epochs, **ext, **read_run(work, final)}
        phase = f"phase@{final}"
        whole = full_phase_seconds(
            (logs / "repro.log").read_text(),
            final,
            full["stages"][phase],
            p.finetune.phases[final].epochs,
        )
        results["phase_full"] = whole
        results["extend_cost"] = results["extend"]["stages"].get(phase, 0.0) / whole["seconds"]
        results["exp_show"] = _dvc(work, "exp", "show", "--no-pager", "--md", "--only-changed")
    if args.ablation:
        plain_log = args.plain_log or logs / "repro.log"
        results["ablation"] = run_ablation(work, args.preset, final, logs, plain_log)

    out = args.out or ROOT / "bench" / "results" / f"real_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    ev = results["run"]["evaluate"]
    print(
        f"preset {args.preset} ({ev.get('split', 'test')} split, n={ev['n']}): accuracy "
        f"{ev['accuracy']:.2%}, macro-F1 {ev['macro_f1']:.3f}; dvc repro {full['wall_s']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in full['stages'].items())})"
    )
    if args.extend:
        e = results["extend"]
        print(
            f"extended {final} by {args.extend} epochs: "
            f"{e['stages'].get(f'phase@{final}', 0):.0f} s"
            f" = {results['extend_cost']:.3f}x the phase's full time"
            f" ({whole['seconds']:.0f} s, {whole['basis']}); accuracy "
            f"{e['evaluate']['accuracy']:.2%}, macro-F1 {e['evaluate']['macro_f1']:.3f}"
        )
        print(results["exp_show"])
    for row in results.get("ablation", {}).get("rows", []):
        print(
            f"{row['config']:9} val {row['val_accuracy']:.2%} ({row['gain_points']:+.2f} points),"
            f" +{row['extra_train_s_per_epoch']:.0f} s/epoch training,"
            f" +{row['extra_val_pass_s']:.1f} s per pass over val (n={row['n']})"
        )
    print(f"details: {out}")


if __name__ == "__main__":
    main()
