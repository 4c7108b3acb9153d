"""Training throughput: the write-up's plain `model.fit` on numpy arrays vs a pipeline phase.

Same model (Lite0 base + head, block-top unfrozen), same batch size, same
images; each side trains `--epochs` epochs twice, interleaved, and the best
steady-state epoch (the first epoch of each run, which traces the graph, is
skipped) gives images/s. Then a phase of the real pipeline (`train_phase`)
runs in a child process on the full training split at `--mem-size` (default
96) for a few steps, and its peak RSS is reported.

    .venv/bin/python bench/train_throughput.py [--prepared DIR | --csv PATH] [--n 4096]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "../shared/datasets/fer2013/fer2013.csv.gz"

_MEM_CHILD = """
import sys, json, resource
from pathlib import Path
from fer_tasks.stages.phase import train_phase
from fer_tasks.lib.params import PhaseParams
d, work = Path(sys.argv[1]), Path(sys.argv[2])
p = PhaseParams(after="base", unfreeze="top", epochs=1, steps_per_epoch=int(sys.argv[3]),
                on_collapse="warn")
train_phase("top", work / "base", d / "train.npz", work / "cw.json", d / "val.npz",
            work / "top", work / "ckpt", work / "live", p)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


class _EpochTimer:
    def __init__(self):
        import keras

        class T(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.t)

        self.cb = T()


def _model(size: int, unfreeze: str = "top", lr: float = 1e-3, unfreeze_bn: bool = False, **model):
    """Lite0 with the method's head, `unfreeze` trainable, compiled with Adam at `lr`;
    `model` sets other ModelParams (bench/input_size_throughput: weights="none")."""
    from fer_tasks.lib.backbones import build_backbone
    from fer_tasks.lib.model import build_model, compile_model, unfreeze_model
    from fer_tasks.lib.params import BaseModelParams, ModelParams

    backbone = build_backbone(ModelParams(input_size=size, **model))
    m = build_model(backbone, BaseModelParams())
    unfreeze_model(m, unfreeze, unfreeze_bn=unfreeze_bn)
    compile_model(m, lr)
    return m


def _plain(model, x, y, batch, epochs) -> float:
    import keras

    x3 = x[..., None].astype("float32")  # the write-up: the whole set as float arrays in RAM
    yo = keras.utils.to_categorical(y, 7)
    t = _EpochTimer()
    model.fit(x3, yo, batch_size=batch, epochs=epochs, callbacks=[t.cb], verbose=0, shuffle=True)
    return len(x) / min(t.cb.times[1:])


def _pipeline(model, x, y, batch, epochs, augment: bool = False, **geometry) -> float:
    """Best steady-state epoch (images/s) of `model.fit` on the pipeline's tf.data
    input; `augment` and `geometry` (shift, rotate, zoom) go to train_dataset."""
    from fer_tasks.lib.data import train_dataset

    ds, steps = train_dataset(
        x,
        y,
        batch_size=batch,
        first_epoch=0,
        last_epoch=epochs,
        seed=0,
        augment=augment,
        **geometry,
    )
    t = _EpochTimer()
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=[t.cb], verbose=0)
    return len(x) / min(t.cb.times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, help="a prepared dir (train.npz, val.npz)")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--n", type=int, default=4096, help="training images for the speed test")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--mem-size", type=int, default=96)
    ap.add_argument("--mem-steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/train_throughput.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from fer_tasks.lib.io import load_split, write_json

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.prepared
        if data is None:
            from fer_tasks.lib.params import PrepareParams
            from fer_tasks.stages.prepare import prepare

            data = tmp / "prepared"
            prepare(args.csv, data, tmp / "prepare.json", PrepareParams())
        x, y = load_split(data / "train.npz")
        x, y = x[: args.n], y[: args.n]
        plain, piped = [], []
        for _ in range(2):  # interleaved, best of two
            plain.append(_plain(_model(args.size), x, y, args.batch, args.epochs))
            piped.append(_pipeline(_model(args.size), x, y, args.batch, args.epochs))
        result = {
            "images": len(x),
            "batch": args.batch,
            "input_size": args.size,
            "plain_fit_img_s": round(max(plain), 1),
            "pipeline_img_s": round(max(piped), 1),
            "ratio": round(max(piped) / max(plain), 3),
        }
        # peak memory of a real phase on the full training split at --mem-size
        from fer_tasks.lib.params import BaseModelParams, ModelParams
        from fer_tasks.stages.backbone import resolve_backbone
        from fer_tasks.stages.base import build_base

        work = tmp / "mem"
        resolve_backbone(work / "bb.keras", ModelParams(input_size=args.mem_size))
        build_base(work / "bb.keras", work / "base", BaseModelParams())
        write_json(work / "cw.json", {"weights": {str(i): 1.0 for i in range(7)}})
        r = subprocess.run(
            [sys.executable, "-c", _MEM_CHILD, str(data), str(work), str(args.mem_steps)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if r.returncode != 0:
            raise SystemExit(r.stderr[-3000:])
        child = json.loads(r.stdout.strip().splitlines()[-1])
        result.update(
            mem_input_size=args.mem_size,
            mem_train_images=int(len(load_split(data / "train.npz")[1])),
            phase_peak_rss_mb=round(child["max_rss_mb"], 1),
            children_peak_rss_mb=round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"pipeline / plain model.fit: {result['ratio']:.3f} "
        f"({result['pipeline_img_s']} vs {result['plain_fit_img_s']} img/s); "
        f"peak RSS of a phase at {args.mem_size}px on {result['mem_train_images']} images: "
        f"{result['phase_peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
