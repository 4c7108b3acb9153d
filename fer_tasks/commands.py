"""Every `fer` subcommand, declared once.

A stage command is a row: the function it calls, its help, its path flags in
the order the function takes them (a trailing `?` marks an optional one), and
the params section passed last. Flag names are the keyword names of the paths
in `dvc.yaml`'s `cmd` lines. A tool with richer options (predict, preset,
compare) names its module, which provides `add_arguments(parser)` and
`run(args) -> exit status`. The CLI (cli.py) is a loop over this table, and
tests/test_deps.py reads it to derive each stage's code deps.
"""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    target: str  # "module:function", imported only when the command runs
    help: str
    flags: tuple[tuple[str, str], ...] = ()  # (flag, help); values passed as Paths, in order
    section: str | None = None  # params section passed last ("*": all params)
    positional: tuple[str, ...] = ()  # plain string arguments passed first


M = "fer_tasks.stages."
STAGES: dict[str, Stage] = {
    "validate": Stage("fer_tasks.lib.params:report_valid", "validate the params file", (), "*"),
    "synthesize": Stage(
        M + "synthesize:synthesize",
        "write the synthetic FER2013-format CSV",
        (("--out", "CSV path"),),
        "synthesize",
    ),
    "prepare": Stage(
        M + "prepare:prepare",
        "ingest a FER2013 CSV or image-folder tree into split arrays",
        (
            ("--source?", "input (default: prepare.source)"),
            ("--out", "output dir"),
            ("--report", "JSON report path"),
        ),
        "prepare",
    ),
    "rebalance": Stage(
        M + "rebalance:rebalance",
        "rebalance the training split",
        (
            ("--train", "prepared train.npz"),
            ("--out-train", "output train.npz"),
            ("--class-weights", "class weights JSON"),
            ("--report", "report JSON"),
            ("--report-png", "report bar chart"),
        ),
        "rebalance",
    ),
    "backbone": Stage(
        M + "backbone:resolve_backbone",
        "resolve pretrained weights and save the backbone",
        (("--out", "backbone .keras path"),),
        "model",
    ),
    "features": Stage(
        M + "features:extract_features",
        "frozen-backbone feature vectors per split",
        (("--backbone", "backbone .keras"), ("--data", "prepared dir"), ("--out", "output dir")),
        "features",
    ),
    "svm": Stage(
        M + "svm:train_svm",
        "fit the SVM baseline on feature vectors",
        (("--features", "features dir"), ("--out", "model dir"), ("--reports", "reports dir")),
        "svm",
    ),
    "base": Stage(
        M + "base:build_base",
        "build the frozen base model (the write-up's build_model)",
        (("--backbone", "backbone .keras"), ("--out", "output dir")),
        "base",
    ),
    "phase": Stage(
        M + "phase:run_phase",
        "run one fine-tuning phase",
        (
            ("--models", "models/phases dir holding every phase"),
            ("--train", "training .npz"),
            ("--class-weights", "class weights JSON"),
            ("--val", "validation .npz"),
            ("--ckpt", "persistent checkpoint dir"),
            ("--live", "dvclive dir"),
        ),
        "finetune",
        ("name",),
    ),
    "calibrate": Stage(
        M + "calibrate:calibrate",
        "fit the temperature (and fix flip TTA) on the validation split",
        (
            ("--model", "final phase model.keras"),
            ("--val", "validation split .npz"),
            ("--out", "calibration JSON to write (the recipe and its val figures)"),
        ),
        "calibrate",
    ),
    "evaluate": Stage(
        M + "evaluate:evaluate",
        "score the final model on the test split, side by side with the SVM baseline",
        (
            ("--model", "final phase model.keras"),
            ("--calibration?", "calibrate's JSON (default: T = 1, no TTA)"),
            ("--test", "test split .npz"),
            ("--svm-metrics?", "SVM metrics.json for the comparison table"),
            ("--out", "reports dir"),
        ),
        "evaluate",
    ),
    "summary": Stage(
        M + "evaluate:summarize",
        "the fine-tuned model vs the SVM baseline (comparison.md), no TensorFlow",
        (
            ("--metrics", "evaluate metrics.json"),
            ("--svm-metrics", "svm metrics.json"),
            ("--out", "comparison.md to write"),
            ("--model-name?", "the model's name in the table"),
        ),
    ),
    "export": Stage(
        M + "export:export_tflite",
        "calibrated TFLite float32/float16/int8 exports with test accuracy, size and latency",
        (
            ("--model", "final phase model.keras"),
            ("--calibration?", "calibrate's JSON (default: T = 1, no TTA)"),
            ("--train", "train .npz (int8 representative images)"),
            ("--test", "test split .npz"),
            ("--out", "output dir for the .tflite files"),
            ("--report", "export report JSON"),
        ),
        "export",
    ),
    "metrics": Stage(
        "fer_tasks.tools.report:print_metrics",
        "print the metrics table of a finished run",
        (("--reports", "reports dir"),),
        "finetune",
    ),
}
TOOLS = {  # name: (module, help); the module is imported only when its command runs
    "predict": ("fer_tasks.tools.predict", "expression probabilities for faces in image files"),
    "preset": ("fer_tasks.tools.preset", "lay a shipped overlay (e.g. fer2013-cpu) over params"),
    "compare": ("fer_tasks.tools.compare", "the write-up's configurations as DVC experiments"),
}
