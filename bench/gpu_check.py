"""A short GPU check of the `fer2013-gpu` preset: images/s and one epoch's time, beside the CPU.

The preset's final phase (`all`: every layer and BatchNorm trainable, its batch,
learning rate, schedule and augmentation; Lite0 at its input size and
precision) is trained by the pipeline's own `train_phase`, in a child process
per device:

- GPU (when TensorFlow sees one): `--gpu-epochs` epochs (default 3) over the
  training split; the first epoch also traces and compiles, so the fastest
  later epoch is the steady-state figure, and it is a whole epoch's time;
- CPU (`CUDA_VISIBLE_DEVICES=""`, float32: mixed float16 is a GPU format):
  2 epochs of `--cpu-steps` steps (default 4), the second one timed;
  a whole epoch is extrapolated from its images/s.

Data: the FER2013 CSV when present (prepared with the current protocol: val
carved from Training), else the project's synthetic faces (`--n`, same
sizes; throughput does not depend on what the faces show). Validation runs
on `--val` faces each epoch (it is part of an epoch's cost in the pipeline,
kept small here). About ten minutes on one recent GPU; without a GPU it
says so, runs the CPU part and leaves the GPU figures empty.

    .venv/bin/python bench/gpu_check.py --out bench/results/gpu_check.json
    .venv/bin/python bench/gpu_check.py --size 48 --cpu-steps 2 --skip-gpu   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "../shared/datasets/fer2013/fer2013.csv.gz"
PRESET = "fer2013-gpu"

_CHILD = """
import json, sys, time
from pathlib import Path
import keras
from fer_tasks.lib.params import PhaseParams
from fer_tasks.stages.phase import train_phase

work, phase, device = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
times = []

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.t)

fit = keras.Model.fit
def timed_fit(self, *a, callbacks=None, **k):  # the pipeline's own fit, plus a timer
    return fit(self, *a, callbacks=[*(callbacks or []), Timer()], **k)
keras.Model.fit = timed_fit

import tensorflow as tf
gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
train_phase("all", work / f"base-{device}", work / "train.npz", work / "cw.json",
            work / "val.npz", work / f"out-{device}", work / f"ckpt-{device}",
            work / f"live-{device}", PhaseParams(**phase))
print(json.dumps({"epoch_s": times, "gpus": gpus}))
"""


def preset_params(size: int | None):
    """params.yaml with the preset applied, checked; `size` overrides the input size."""
    from fer_tasks.lib import overlay
    from fer_tasks.lib.params import parse_params, read_yaml

    data = overlay.apply(read_yaml((ROOT / "params.yaml").read_text()), overlay.load(PRESET))
    if size:
        data["model"]["input_size"] = size
    return parse_params(data, f"params.yaml + {PRESET}")


def make_data(work: Path, csv: Path, n: int, n_val: int) -> dict:
    """train.npz (and a small val.npz) in `work`; FER2013 when present, else synthetic."""
    from fer_tasks.lib.io import load_split, save_split, write_json
    from fer_tasks.lib.params import PrepareParams, SynthesizeParams
    from fer_tasks.stages.prepare import prepare

    if csv.is_file():
        source, kind = csv, "FER2013"
    else:
        from fer_tasks.stages.synthesize import synthesize

        source, kind = work / "synth.csv", "synthetic"
        synthesize(source, SynthesizeParams(n_samples=n))
    prepare(source, work / "prepared", work / "prepare.json", PrepareParams())
    x, y = load_split(work / "prepared" / "train.npz")
    vx, vy = load_split(work / "prepared" / "val.npz")
    save_split(work / "train.npz", x, y)
    save_split(work / "val.npz", vx[:n_val], vy[:n_val])
    write_json(work / "cw.json", {"weights": {str(i): 1.0 for i in range(7)}})
    return {"data": kind, "train_images": int(len(y)), "val_images": int(min(n_val, len(vy)))}


def build_base(work: Path, device: str, params) -> None:
    """The preset's backbone and head; float32 for the CPU."""
    from fer_tasks.stages.backbone import resolve_backbone
    from fer_tasks.stages.base import build_base as base

    model = params.model.model_copy(
        update={"precision": params.model.precision if device == "gpu" else "float32"}
    )
    resolve_backbone(work / f"backbone-{device}.keras", model)
    base(work / f"backbone-{device}.keras", work / f"base-{device}", params.base)


def run_child(work: Path, phase: dict, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(work), json.dumps(phase), device],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if r.returncode:
        raise SystemExit(f"{device} phase failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def figures(out: dict, steps: int, batch: int, train_images: int, whole: bool) -> dict:
    """Steady-state images/s (fastest epoch after the first) and one epoch's time."""
    steady = min(out["epoch_s"][1:] or out["epoch_s"])
    img_s = steps * batch / steady
    return {
        **out,
        "steps_per_epoch": steps,
        "batch_size": batch,
        "images_per_s": round(img_s, 1),
        "epoch_s": [round(t, 1) for t in out["epoch_s"]],
        "full_epoch_s": round(steady if whole else train_images / img_s, 1),
        "full_epoch_measured": whole,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--n", type=int, default=35_887, help="synthetic faces when no CSV")
    ap.add_argument("--val", type=int, default=512, help="validation faces per epoch")
    ap.add_argument("--gpu-epochs", type=int, default=3)
    ap.add_argument("--cpu-steps", type=int, default=4)
    ap.add_argument("--size", type=int, help="input size (default: the preset's)")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu_check.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = preset_params(args.size)
    final = params.finetune.phases[params.finetune.final]
    batch = final.batch_size
    import tensorflow as tf

    gpus = [] if args.skip_gpu else tf.config.list_physical_devices("GPU")
    result: dict = {
        "preset": PRESET,
        "input_size": params.model.input_size,
        "precision_gpu": params.model.precision,
        "gpus": [g.name for g in gpus],
    }
    with tempfile.TemporaryDirectory(prefix="fer-gpu-check.") as tmp:
        work = Path(tmp)
        result.update(make_data(work, args.csv.resolve(), args.n, args.val))
        n_train = result["train_images"]
        full_steps = -(-n_train // batch)
        phase = final.model_dump(exclude_unset=True)
        if gpus:
            build_base(work, "gpu", params)
            spec = {**phase, "epochs": args.gpu_epochs, "steps_per_epoch": None}
            out = run_child(work, spec, "gpu")
            result["gpu"] = figures(out, full_steps, batch, n_train, whole=True)
        else:
            result["gpu"] = None
            print("no GPU visible to TensorFlow: GPU figures left empty", flush=True)
        build_base(work, "cpu", params)
        spec = {**phase, "epochs": 2, "steps_per_epoch": args.cpu_steps}
        out = run_child(work, spec, "cpu")
        result["cpu"] = figures(out, args.cpu_steps, batch, n_train, whole=False)
    if result["gpu"]:
        result["gpu_over_cpu"] = round(
            result["gpu"]["images_per_s"] / result["cpu"]["images_per_s"], 1
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for dev in ("gpu", "cpu"):
        f = result[dev]
        if f:
            how = "measured" if f["full_epoch_measured"] else "extrapolated"
            print(
                f"{dev}: {f['images_per_s']} images/s at {result['input_size']} px, batch "
                f"{batch}; one epoch of {n_train} faces {f['full_epoch_s']} s ({how})"
            )
    if result["gpu"]:
        print(f"GPU / CPU images/s: {result['gpu_over_cpu']}x")
    print(f"details: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
