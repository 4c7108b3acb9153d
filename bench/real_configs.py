"""The write-up's five fine-tuning configurations on real FER2013, side by side.

Each configuration (`fer_tasks/experiments/*.yaml`, as `fer compare` runs them)
is overlaid on `params.yaml` (Lite0 at the write-up's 48 px, balanced class
weights), its epochs scaled by `--epochs-scale` with `fer compare`'s rule, and
run through the stage functions (`bench/real_pipeline.py`'s `run_pipeline`),
each in its own work directory, all reading one prepared copy of FER2013.
PublicTest is the validation split and the score. Writes
`comparison.{md,csv}` and `curves.png` (`fer compare`'s report) plus
`bench/results/real_configs.json`.

    .venv/bin/python bench/real_configs.py [--epochs-scale 0.2] [--only EFN_base ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_pipeline import DEFAULT_CSV, ROOT, run_pipeline  # noqa: E402

from fer_tasks import compare  # noqa: E402
from fer_tasks.params import parse_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--epochs-scale", type=float, default=0.2)
    ap.add_argument("--only", nargs="+", choices=compare.available(), help="a subset to run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fer_real_configs"))
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "real_configs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = args.only or compare.available()
    prepared = args.work / "prepared"
    rows, curves, raw = [], {}, {}
    for name in names:
        over = compare.resolve(base, name, args.epochs_scale)
        p = parse_params(compare.merge_params(base, over), f"params.yaml + {name}")
        logging.info("=== %s: %s", name, compare._phase_summary(over, base))
        t0 = time.perf_counter()
        res = run_pipeline(p, args.csv, args.work / name, export=False, prepared=prepared)
        wall = time.perf_counter() - t0
        state = res["final_state"]
        hist = state["history"]
        pt = res["publictest"]
        rows.append(
            {
                "config": name,
                "phases": compare._phase_summary(over, base),
                "epochs": state["epoch_end"],
                "val_accuracy": pt["accuracy"],
                "val_loss": hist[-1]["val_loss"] if hist else None,
                "val_macro_f1": pt["macro_f1"],
                "max_class_share": state["max_class_share"],
                "collapsed": state["collapsed"],
                "test_accuracy": res["test_carved"]["accuracy"],
                "wall_s": round(wall, 1),
                "train_s": round(
                    sum(v for k, v in res["seconds"].items() if k.startswith("phase@")), 1
                ),
                "status": "ok",
            }
        )
        curves[name] = hist
        raw[name] = {"overrides": over, **res}
        logging.info(
            "%s: PublicTest %.2f %%, macro-F1 %.3f, %.0f s",
            name,
            100 * pt["accuracy"],
            pt["macro_f1"],
            wall,
        )

    notes = [
        f"real FER2013; PublicTest ({raw[names[0]]['publictest']['n']} faces) is "
        "the validation split and the score; test: carved from Training",
        f"epochs scaled by {args.epochs_scale} from the write-up's 30 per configuration",
        "Lite0 at 48 px, batch 32, Adam 1e-3, balanced class weights (params.yaml)",
    ]
    paths = compare.write_comparison(rows, curves, args.out_dir, notes)
    out = ROOT / "bench" / "results" / "real_configs.json"
    out.write_text(
        json.dumps(
            {"epochs_scale": args.epochs_scale, "rows": rows, "runs": raw}, indent=2, default=str
        )
        + "\n"
    )
    print(paths["md"].read_text())
    print(f"written: {paths['md']}, {paths['png']}, {out}")


if __name__ == "__main__":
    main()
