"""Method 1 on real FER2013: frozen-backbone features + SVM, at several input sizes.

Runs the pipeline's own stage functions (prepare, backbone, features, svm) on
the shared FER2013 copy and prints feature throughput and the SVM's PublicTest
(val split) accuracy and macro-F1. Nothing is written into the project.

    .venv/bin/python bench/svm_baseline.py [--csv PATH] [--sizes 48 96] [--layer pooled]

The features and svm settings are those of params.yaml; `--layer pooled` uses
the backbone's pooled last feature map (the write-up's feature vector) instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from fer_tasks.lib.params import ModelParams, PrepareParams, load_params
from fer_tasks.stages.backbone import resolve_backbone
from fer_tasks.stages.features import extract_features
from fer_tasks.stages.prepare import prepare
from fer_tasks.stages.svm import train_svm

DEFAULT_CSV = Path(__file__).resolve().parents[1] / "../shared/datasets/fer2013/fer2013.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--layer", help="features.layer override; 'pooled' for the pooled map")
    ap.add_argument("--out", type=Path, default=Path("bench/results/svm_baseline.json"))
    args = ap.parse_args()
    project = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    feat_params = project.features
    if args.layer:
        layer = None if args.layer == "pooled" else args.layer
        feat_params = feat_params.model_copy(update={"layer": layer})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = {
        "csv": str(args.csv),
        "backbone": args.backbone,
        "runs": [],
        "features": feat_params.model_dump(),
        "svm": project.svm.model_dump(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        report = prepare(args.csv, tmp / "prepared", tmp / "prepare.json", PrepareParams())
        results["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        n_images = sum(s["total"] for s in report["splits"].values())
        for size in args.sizes:
            mp = ModelParams(backbone=args.backbone, input_size=size)
            resolve_backbone(tmp / f"bb{size}.keras", mp)
            t0 = time.perf_counter()
            extract_features(
                tmp / f"bb{size}.keras", tmp / "prepared", tmp / f"f{size}", feat_params
            )
            feat_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_svm(tmp / f"f{size}", tmp / f"svm{size}", tmp / f"rep{size}", project.svm)
            svm_s = time.perf_counter() - t0
            m = json.loads((tmp / f"rep{size}" / "metrics.json").read_text())
            run = {
                "input_size": size,
                "images": n_images,
                "features_seconds": round(feat_s, 1),
                "images_per_second": round(n_images / feat_s, 1),
                "svm_seconds": round(svm_s, 1),
                "publictest_accuracy": round(m["val"]["accuracy"], 4),
                "publictest_macro_f1": round(m["val"]["macro_f1"], 4),
                "disgust_recall": round(m["val"]["per_class"]["disgust"]["recall"], 4),
            }
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'size':>5} {'img/s':>8} {'feat s':>7} {'svm s':>6} {'acc':>7} {'macroF1':>8}")
    for r in results["runs"]:
        print(
            f"{r['input_size']:>5} {r['images_per_second']:>8} {r['features_seconds']:>7} "
            f"{r['svm_seconds']:>6} {r['publictest_accuracy']:>7.2%} "
            f"{r['publictest_macro_f1']:>8.3f}"
        )


if __name__ == "__main__":
    main()
