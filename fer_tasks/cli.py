"""`fer`: the one command line that `dvc.yaml` stage commands call.

Every subcommand first validates the *whole* params file (cheap, no
TensorFlow), then hands paths and its own params section to a stage function.
Stage modules are imported lazily so `fer validate` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fer_tasks.lib.params import Params, ParamsError, load_params
from fer_tasks.lib.quiet import filtered_stderr, show_tf_logs

log = logging.getLogger("fer")


def _cmd_validate(a: argparse.Namespace, p: Params) -> None:
    phases = p.finetune.order()
    print(f"{a.params}: ok ({len(phases)} phases: {' -> '.join(['base', *phases])})")


def _cmd_synthesize(a, p):
    from fer_tasks.stages.synthesize import synthesize

    synthesize(Path(a.out), p.synthesize)


def _cmd_prepare(a, p):
    from fer_tasks.stages.prepare import prepare

    prepare(Path(a.source or p.prepare.source), Path(a.out), Path(a.report), p.prepare)


def _cmd_rebalance(a, p):
    from fer_tasks.stages.rebalance import rebalance

    rebalance(
        Path(a.train),
        Path(a.out_train),
        Path(a.class_weights),
        Path(a.report),
        Path(a.report_png),
        p.rebalance,
    )


def _cmd_backbone(a, p):
    from fer_tasks.stages.backbone import resolve_backbone

    resolve_backbone(Path(a.out), p.model)


def _cmd_features(a, p):
    from fer_tasks.stages.features import extract_features

    extract_features(Path(a.backbone), Path(a.data), Path(a.out), p.features)


def _cmd_svm(a, p):
    from fer_tasks.stages.svm import train_svm

    train_svm(Path(a.features), Path(a.out), Path(a.reports), p.svm)


def _cmd_base(a, p):
    from fer_tasks.stages.base import build_base

    build_base(Path(a.backbone), Path(a.out), p.base)


def _cmd_phase(a, p):
    from fer_tasks.stages.phase import train_phase

    if a.name not in p.finetune.phases:
        raise ParamsError(f"{a.params}: finetune.phases has no phase {a.name!r}")
    phase = p.finetune.phases[a.name]
    parent = Path(a.models) / phase.after
    train_phase(
        a.name,
        parent,
        Path(a.train),
        Path(a.class_weights),
        Path(a.val),
        Path(a.models) / a.name,
        Path(a.ckpt),
        Path(a.live),
        phase,
    )


def _cmd_evaluate(a, p):
    from fer_tasks.stages.evaluate import evaluate

    svm = Path(a.svm_metrics) if a.svm_metrics else None
    evaluate(Path(a.model), Path(a.test), svm, Path(a.out), p.evaluate)


def _cmd_summary(a, p):
    from fer_tasks.stages.evaluate import summarize

    summarize(Path(a.metrics), Path(a.svm_metrics), Path(a.out), a.model_name)


def _cmd_export(a, p):
    from fer_tasks.stages.export import export_tflite

    export_tflite(Path(a.model), Path(a.train), Path(a.test), Path(a.out), Path(a.report), p.export)


def _cmd_predict(a) -> int:
    """Needs no params file; with a .tflite model it never imports TensorFlow."""
    from fer_tasks.tools.predict import predict

    return predict([Path(x) for x in a.paths], Path(a.model), detect=a.detect, top=a.top)


def _cmd_metrics(a, p):
    from fer_tasks.tools.report import metrics_table

    print(metrics_table(Path(a.reports), p.finetune.order()))


def _cmd_preset(a, p):
    from fer_tasks.lib import overlay
    from fer_tasks.tools.preset import apply_preset

    if a.list or a.name is None:
        print("\n".join(f"{n:<20} {overlay.describe(n)}" for n in overlay.available()))
        return
    changes = apply_preset(a.name, Path(a.params), a.source)
    print(f"{a.params}: preset {a.name} applied, {len(changes)} change(s)")
    for line in changes:
        print(f"  {line}")
    print("next: dvc repro")


def _cmd_compare(a, p):
    from fer_tasks.tools.compare import run_from_args

    run_from_args(a)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fer", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)  # accepted by every subcommand
    common.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help: str, *args: tuple[str, str]) -> None:
        sp = sub.add_parser(name, help=help, parents=[common])
        for flag, h in args:  # a trailing "?" marks an optional flag
            sp.add_argument(flag.rstrip("?"), required=not flag.endswith("?"), help=h)
        sp.set_defaults(fn=fn)

    add("validate", _cmd_validate, "validate the params file and exit")
    add(
        "synthesize",
        _cmd_synthesize,
        "write the synthetic FER2013-format CSV",
        ("--out", "CSV path"),
    )
    add(
        "prepare",
        _cmd_prepare,
        "ingest a FER2013 CSV or image-folder tree into split arrays",
        ("--source?", "input (default: prepare.source)"),
        ("--out", "output dir"),
        ("--report", "JSON report path"),
    )
    add(
        "rebalance",
        _cmd_rebalance,
        "rebalance the training split",
        ("--train", "prepared train.npz"),
        ("--out-train", "output train.npz"),
        ("--class-weights", "class weights JSON"),
        ("--report", "report JSON"),
        ("--report-png", "report bar chart"),
    )
    add(
        "backbone",
        _cmd_backbone,
        "resolve pretrained weights and save the backbone",
        ("--out", "backbone .keras path"),
    )
    add(
        "features",
        _cmd_features,
        "frozen-backbone feature vectors per split",
        ("--backbone", "backbone .keras"),
        ("--data", "prepared dir"),
        ("--out", "output dir"),
    )
    add(
        "svm",
        _cmd_svm,
        "fit the SVM baseline on feature vectors",
        ("--features", "features dir"),
        ("--out", "model dir"),
        ("--reports", "reports dir"),
    )
    add(
        "base",
        _cmd_base,
        "build the frozen base model (write-up's build_model)",
        ("--backbone", "backbone .keras"),
        ("--out", "output dir"),
    )
    sp = sub.add_parser("phase", help="run one fine-tuning phase", parents=[common])
    sp.add_argument("name", help="phase name (a key of finetune.phases)")
    for flag, h in (
        ("--models", "models/phases dir holding every phase"),
        ("--train", "training split .npz"),
        ("--class-weights", "class weights JSON"),
        ("--val", "validation split .npz"),
        ("--ckpt", "persistent checkpoint dir"),
        ("--live", "dvclive dir"),
    ):
        sp.add_argument(flag, required=True, help=h)
    sp.set_defaults(fn=_cmd_phase)
    add(
        "evaluate",
        _cmd_evaluate,
        "score the final model on the test split, side by side with the SVM baseline",
        ("--model", "final phase model.keras"),
        ("--test", "test split .npz"),
        ("--svm-metrics?", "SVM metrics.json for the comparison table"),
        ("--out", "reports dir"),
    )
    add(
        "summary",
        _cmd_summary,
        "the fine-tuned model vs the SVM baseline (comparison.md), no TensorFlow",
        ("--metrics", "evaluate metrics.json"),
        ("--svm-metrics", "svm metrics.json"),
        ("--model-name?", "how to name the model in the table"),
        ("--out", "comparison.md to write"),
    )
    add(
        "export",
        _cmd_export,
        "TFLite float32/float16/int8 exports with test accuracy, size and latency",
        ("--model", "final phase model.keras"),
        ("--train", "training split .npz (int8 calibration images)"),
        ("--test", "test split .npz"),
        ("--out", "output dir for the .tflite files"),
        ("--report", "export report JSON"),
    )
    sp = sub.add_parser(
        "predict", help="expression probabilities for the faces in image files", parents=[common]
    )
    sp.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    sp.add_argument(
        "--model",
        default="models/export/model_int8.tflite",
        help=".keras or .tflite model (default: the pipeline's int8 export, %(default)s)",
    )
    sp.add_argument(
        "--no-detect",
        dest="detect",
        action="store_false",
        help="the images are cropped faces: skip face detection",
    )
    sp.add_argument(
        "--top", type=int, metavar="K", help="print the K likeliest classes as text, not JSON"
    )
    sp.set_defaults(fn=None)
    add(
        "metrics",
        _cmd_metrics,
        "print the metrics table of a finished run",
        ("--reports", "reports dir"),
    )
    sp = sub.add_parser(
        "preset",
        help="merge a shipped preset (e.g. fer2013-cpu) into the params file",
        parents=[common],
    )
    sp.add_argument("name", nargs="?", help="preset name (omit, or --list, to list them)")
    sp.add_argument("--list", action="store_true", help="list the shipped presets")
    sp.add_argument("--source", help="also set prepare.source (e.g. data/raw/fer2013.csv)")
    sp.set_defaults(fn=_cmd_preset)
    from fer_tasks.tools.compare import add_arguments as add_compare_arguments

    sp = sub.add_parser(
        "compare",
        help="run the write-up's configurations as DVC experiments; table + curves",
        parents=[common],
    )
    add_compare_arguments(sp)
    sp.set_defaults(fn=_cmd_compare)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning chatter
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # TensorFlow's start-up notices that TF_CPP_MIN_LOG_LEVEL cannot hide (no CUDA
    # driver, cuInit, ...) are dropped from stderr unless -v or FER_TF_LOGS=1 (quiet.py)
    with filtered_stderr(enabled=not show_tf_logs(args.verbose)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "predict":  # no params file needed, and no TensorFlow for a .tflite
        return _cmd_predict(args)
    try:
        params = load_params(args.params)
        args.fn(args, params)
    except (ParamsError, ValueError, RuntimeError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"fer {args.cmd}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
