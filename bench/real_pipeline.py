"""The whole pipeline on real FER2013 with a preset, reporting PublicTest figures.

Runs the stage functions in order (prepare, rebalance, backbone, base, every
phase, evaluate, export) in a work directory outside the project, with
params.yaml overlaid by a preset from fer_tasks/presets/. `evaluate` and the
TFLite export are scored on PublicTest (the val split) and on the test split
carved from Training. Rerunning in the same --work skips every stage whose
params (and upstream stages) are unchanged, as `dvc repro` would: adding a
phase to a preset trains only the new phase.

    .venv/bin/python bench/real_pipeline.py --preset fer2013-cpu [--csv PATH] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "../shared/datasets/fer2013/fer2013.csv.gz"


def _timed(times: dict, name: str, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    times[name] = round(time.perf_counter() - t0, 1)
    logging.info("%s: %.1f s", name, times[name])
    return out


def _cached(times: dict, work: Path, name: str, key: dict, outputs: list[Path], fn, *args):
    """Run `fn` unless a marker says it already ran with the same `key` and its outputs exist.

    Stage functions rewrite their outputs with new bytes (save dates), which would
    make every later phase start over; like DVC, skip what has not changed.
    """
    marker = work / ".stages" / f"{name}.json"
    text = json.dumps(key, sort_keys=True, default=str)
    if marker.is_file() and marker.read_text() == text and all(o.exists() for o in outputs):
        logging.info("%s: unchanged, skipped", name)
        times[name] = 0.0
        return None
    marker.unlink(missing_ok=True)
    out = _timed(times, name, fn, *args)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(text)
    return out


def run_pipeline(p, csv: Path, work: Path, *, export: bool = True, prepared: Path | None = None):
    """The stage functions in order under `work`; returns the results dict (seconds included).

    `prepared`: an existing prepared directory to read instead of running `prepare`.
    """
    from fer_tasks.backbone import resolve_backbone
    from fer_tasks.base import build_base
    from fer_tasks.evaluate import evaluate
    from fer_tasks.export import export_tflite
    from fer_tasks.io import read_json
    from fer_tasks.phase import train_phase
    from fer_tasks.prepare import prepare
    from fer_tasks.rebalance import rebalance

    d, m, r = work / "data", work / "models", work / "reports"
    pre = prepared or d / "prepared"
    times: dict[str, float] = {}
    # each stage's key holds its upstream stage's key, so a change reruns everything after it
    keys = {"prepare": {"csv": str(csv), "prepared": str(pre), "prepare": p.prepare.model_dump()}}
    if prepared is None:  # rerun when the CSV or the split params change
        _cached(
            times,
            work,
            "prepare",
            keys["prepare"],
            [pre / "train.npz", pre / "val.npz", pre / "test.npz"],
            prepare,
            csv,
            pre,
            r / "prepare.json",
            p.prepare,
        )
    rb = d / "rebalanced"
    keys["rebalance"] = {"data": keys["prepare"], "rebalance": p.rebalance.model_dump()}
    _cached(
        times,
        work,
        "rebalance",
        keys["rebalance"],
        [rb / "train.npz"],
        rebalance,
        pre / "train.npz",
        rb / "train.npz",
        rb / "class_weights.json",
        r / "rebalance.json",
        r / "rebalance.png",
        p.rebalance,
    )
    keys["backbone"] = {"model": p.model.model_dump()}
    _cached(
        times,
        work,
        "backbone",
        keys["backbone"],
        [m / "backbone.keras"],
        resolve_backbone,
        m / "backbone.keras",
        p.model,
    )
    keys["base"] = {"backbone": keys["backbone"], "base": p.base.model_dump()}
    _cached(
        times,
        work,
        "base",
        keys["base"],
        [m / "phases/base/model.keras"],
        build_base,
        m / "backbone.keras",
        m / "phases/base",
        p.base,
    )
    for name in p.finetune.order():
        ph = p.finetune.phases[name]
        keys[name] = {"parent": keys[ph.after], "data": keys["rebalance"], "phase": ph.model_dump()}
        _cached(
            times,
            work,
            f"phase@{name}",
            keys[name],
            [m / "phases" / name / "model.keras"],
            train_phase,
            name,
            m / "phases" / ph.after,
            rb / "train.npz",
            rb / "class_weights.json",
            pre / "val.npz",
            m / "phases" / name,
            m / "checkpoints" / name,
            r / "phases" / name,
            ph,
        )
    final = m / "phases" / p.finetune.final / "model.keras"
    results = {"params": p.model_dump(), "seconds": times, "model": str(final)}
    results["final_state"] = read_json(final.parent / "state.json")
    splits = (("publictest", "val.npz", "PublicTest"), ("test_carved", "test.npz", "carved test"))
    for split, npz, title in splits:
        results[split] = _timed(
            times,
            f"evaluate {split}",
            evaluate,
            final,
            pre / npz,
            None,
            r / f"evaluate_{split}",
            p.evaluate,
            title,
        )
    if export:
        results["export_publictest"] = _timed(
            times,
            "export",
            export_tflite,
            final,
            pre / "train.npz",
            pre / "val.npz",
            m / "export",
            r / "export_publictest.json",
            p.export,
        )
    results["total_seconds"] = round(sum(times.values()), 1)
    return results


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Train/val loss and accuracy over the global epoch axis, phase boundaries dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ep = [r["epoch"] for r in history]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(ep, [r[key] for r in history], marker=".", label=f"train {key}")
        ax.plot(ep, [r[f"val_{key}"] for r in history], marker=".", label=f"PublicTest {key}")
        for a, b in zip(history, history[1:], strict=False):
            if a.get("phase") != b.get("phase"):
                ax.axvline(a["epoch"] + 0.5, color="grey", ls="--", lw=0.9)
                ax.text(
                    a["epoch"] + 0.7,
                    ax.get_ylim()[0],
                    f"{b['phase']}",
                    fontsize=8,
                    va="bottom",
                    color="grey",
                )
        ax.set_xlabel("epoch (global, across phases)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_figures(work: Path, name: str, final: str, dest: Path) -> list[Path]:
    """curves and the PublicTest confusion matrix of a finished run in `work`, into `dest`."""
    import shutil

    from fer_tasks.io import read_json

    state = work / "models" / "phases" / final / "state.json"
    dest.mkdir(parents=True, exist_ok=True)
    curves = dest / f"{name}_curves.png"
    plot_history(read_json(state)["history"], curves, f"{name} on FER2013 (2 CPU cores)")
    confusion = dest / f"{name}_confusion.png"
    shutil.copyfile(work / "reports" / "evaluate_publictest" / "confusion.png", confusion)
    return [curves, confusion]


def load_preset(name: str):
    from fer_tasks.params import ParamsError
    from fer_tasks.preset import preset_params

    try:
        return preset_params(name, ROOT / "params.yaml")
    except ParamsError as err:
        raise SystemExit(str(err)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fer2013-cpu")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--work", type=Path, help="work dir (default: /tmp/fer_real_<preset>)")
    ap.add_argument("--out", type=Path, help="JSON (default: bench/results/real_<preset>.json)")
    ap.add_argument("--figures", type=Path, help="also write curves + confusion PNGs here")
    ap.add_argument(
        "--figures-only",
        action="store_true",
        help="only (re)draw the figures of a finished run in --work",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = load_preset(args.preset)
    work = args.work or Path(f"/tmp/fer_real_{args.preset}")
    if args.figures_only:
        for f in write_figures(
            work, args.preset, p.finetune.final, args.figures or ROOT / "docs" / "img"
        ):
            print(f"written {f}")
        return
    results = {"preset": args.preset, **run_pipeline(p, args.csv, work)}
    out = args.out or ROOT / "bench" / "results" / f"real_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    pt = results["publictest"]
    print(
        f"preset {args.preset}: PublicTest accuracy {pt['accuracy']:.2%}, macro-F1 "
        f"{pt['macro_f1']:.3f}, disgust recall {pt['per_class']['disgust']['recall']:.2%}; "
        f"total {results['total_seconds']:.0f} s; details in {out} and {work / 'reports'}"
    )
    if args.figures:
        for f in write_figures(work, args.preset, p.finetune.final, args.figures):
            print(f"written {f}")


if __name__ == "__main__":
    main()
