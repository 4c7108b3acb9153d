"""Training speed of the `fer2013-cpu` preset's phase `all` at several input sizes, side by side.

Every layer and BatchNorm trainable, batch 64, the preset's shift/rotation/zoom
augmentation, the pipeline's own tf.data input (`train_dataset` from uint8
48x48 faces). Sizes are measured in interleaved rounds (48, 64, 80, 96, 48, ...)
and each keeps its best steady-state epoch (the first, which traces the graph,
is skipped), so a busy moment on the machine hurts one reading, not one size.
Images are random: the speed of a convolution does not depend on its content.

    .venv/bin/python bench/input_size_throughput.py [--sizes 48 64 80 96] [--n 640]
        [--precisions float32 mixed_bfloat16]

It prints images/s, the seconds one epoch of the carved FER2013 training split
(25,838 faces) would take, and each reading's speed relative to the largest size
in the first precision listed. `--precisions` adds `model.precision` to the
interleaving (a CPU with AVX-512 BF16 but no AMX runs mixed_bfloat16 slower:
docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from train_throughput import _model, _pipeline  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
FER2013_TRAIN = 25_838  # Training minus the carved 10 % val (docs/results.md)


def images_per_second(
    size: int, x: np.ndarray, y: np.ndarray, batch: int, epochs: int, precision: str = "float32"
) -> float:
    """Best steady-state epoch of phase `all` training at `size`, in images/s."""
    model = _model(size, "all", 5e-4, unfreeze_bn=True, weights="none", precision=precision)
    return _pipeline(model, x, y, batch, epochs, augment=True, shift=0.1, rotate=10, zoom=0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 80, 96])
    ap.add_argument("--n", type=int, default=640, help="images per epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="per reading; the first is skipped")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["float32"],
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
        help="model.precision values to interleave with the sizes",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/input_size_throughput.json")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch traces the graph)")
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, 48, 48), dtype=np.uint8)
    y = rng.integers(0, 7, args.n).astype(np.int64)
    best: dict[tuple[int, str], float] = {}
    for r in range(args.rounds):
        for size in args.sizes:
            for prec in args.precisions:
                ips = images_per_second(size, x, y, args.batch, args.epochs, prec)
                best[size, prec] = max(best.get((size, prec), 0.0), ips)
                print(f"round {r + 1}: {size} px {prec} {ips:.1f} img/s", flush=True)
    ref = (max(args.sizes), args.precisions[0])
    vs = f"speed_vs_{ref[0]}px_{ref[1]}"
    rows = [
        {
            "input_size": s,
            "precision": p,
            "img_s": round(best[s, p], 1),
            "epoch_s_fer2013": round(FER2013_TRAIN / best[s, p]),
            vs: round(best[s, p] / best[ref], 2),
        }
        for s in args.sizes
        for p in args.precisions
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "n": args.n, "rows": rows}, indent=2))
    head = f"s per epoch of {FER2013_TRAIN:,} faces | speed vs {ref[0]} px {ref[1]}"
    print(f"| input | precision | img/s | {head} |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['input_size']} | {row['precision']} | {row['img_s']} "
            f"| {row['epoch_s_fer2013']} | {row[vs]:.2f}x |"
        )


if __name__ == "__main__":
    main()
