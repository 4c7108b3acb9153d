"""A phase on several devices (issue 16.4): `strategy`, `devices` and TF_CONFIG.

TensorFlow fixes its logical devices when it first initialises them, so every
training here runs in a fresh interpreter (`_SCRIPT`) that first splits the
CPU into two logical devices, /cpu:0 and /cpu:1: a MirroredStrategy over them
is two replicas, each computing half of every batch. The params and TF_CONFIG
checks run in-process and build no strategy.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fer_tasks.lib.errors import InputError
from fer_tasks.lib.io import read_json
from fer_tasks.lib.params import BaseModelParams, ParamsError, PhaseParams, load_params

ROOT = Path(__file__).resolve().parents[1]
TWO_CPUS = {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]}

# argv: root, data folder, {phase name: PhaseParams keywords} trained in that order
_SCRIPT = """
import json, logging, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fer_tasks.lib.params import PhaseParams
from fer_tasks.stages.phase import train_phase
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
root, data = Path(sys.argv[1]), Path(sys.argv[2])
for name, kw in json.loads(sys.argv[3]).items():
    kw = {"unfreeze": "all", "batch_size": 16, "deterministic": True, "on_collapse": "warn", **kw}
    train_phase(name, root / "phases/base", data / "train.npz", data / "class_weights.json",
                data / "val.npz", root / "phases" / name, root / "ckpt" / name,
                root / "live" / name, PhaseParams(after="base", **kw))
"""


def _cmd(root: Path, data: Path, runs: dict) -> list[str]:
    return [sys.executable, "-c", _SCRIPT, str(root), str(data), json.dumps(runs)]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _train(root: Path, data: Path, runs: dict, **env: str) -> str:
    r = subprocess.run(
        _cmd(root, data, runs), env=_env(**env), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def _history(root: Path, name: str) -> list[dict]:
    return read_json(root / "phases" / name / "state.json")["history"]


def _base(root: Path, backbone: Path, dropout: float = 0.2) -> None:
    from fer_tasks.stages.base import build_base

    build_base(backbone, root / "phases" / "base", BaseModelParams(dropout=dropout))


# --- params and TF_CONFIG, checked before any work --------------------------------------


def test_strategy_defaults_to_one_device_and_is_validated():
    assert PhaseParams(after="base", epochs=1).strategy == "default"
    assert PhaseParams(after="base", epochs=1, **TWO_CPUS).devices == ["/cpu:0", "/cpu:1"]
    with pytest.raises(ValidationError, match="strategy"):
        PhaseParams(after="base", epochs=1, strategy="tpu")
    for strategy in ("default", "multi_worker"):
        with pytest.raises(ValidationError, match="devices is only for strategy mirrored"):
            PhaseParams(after="base", epochs=1, strategy=strategy, devices=["/cpu:0"])
    with pytest.raises(ValidationError, match="names a device twice"):
        PhaseParams(after="base", epochs=1, strategy="mirrored", devices=["/cpu:0", "/cpu:0"])
    with pytest.raises(ValidationError):
        PhaseParams(after="base", epochs=1, strategy="mirrored", devices=[])


def test_unknown_strategy_in_params_yaml_names_the_key(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    old = "      unfreeze: block5\n"
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, old + "      strategy: horovod\n"))
    with pytest.raises(ParamsError, match=r"finetune\.phases\.block5\.strategy: Input should be"):
        load_params(path)


def _phase_without_inputs(tmp_path: Path, strategy: str = "multi_worker") -> None:
    """train_phase on inputs that do not exist: only a check made before any work passes."""
    from fer_tasks.stages.phase import train_phase

    missing = tmp_path / "missing"
    train_phase(
        "top",
        missing / "base",
        missing / "train.npz",
        missing / "class_weights.json",
        missing / "val.npz",
        tmp_path / "out",
        tmp_path / "ckpt",
        tmp_path / "live",
        PhaseParams(after="base", epochs=1, strategy=strategy),
    )


_WORKER = {"type": "worker", "index": 0}


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "strategy multi_worker needs the TF_CONFIG environment variable"),
        ("", "strategy multi_worker needs the TF_CONFIG environment variable"),
        ("{cluster: [", "TF_CONFIG is not valid JSON"),
        (json.dumps({"task": _WORKER}), "TF_CONFIG needs a 'cluster' and a 'task'"),
        (json.dumps({"cluster": {"worker": "h:1"}, "task": _WORKER}), "TF_CONFIG cluster.worker"),
        (
            json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}),
            "TF_CONFIG task .* is not a member of its cluster",
        ),
        (
            json.dumps({"cluster": {"worker": ["h:1", "h:2"]}, "task": _WORKER}),
            r"TF_CONFIG lists 2 workers, but Keras 3\.15\.1's model\.fit fails .*keras#20585",
        ),
    ],
    ids=["unset", "empty", "garbled", "no-cluster", "hosts-not-a-list", "index", "two-workers"],
)
def test_multi_worker_checks_tf_config_before_any_work(tmp_path, monkeypatch, tf_config, message):
    import keras

    # the Keras seen to fail with two workers, whatever Keras is installed
    monkeypatch.setattr(keras, "__version__", "3.15.1")
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(InputError, match=message):
        _phase_without_inputs(tmp_path)
    assert not any(tmp_path.iterdir())  # it failed before reading or writing anything


def test_a_device_the_machine_lacks_is_refused_by_name():
    from fer_tasks.lib.distribute import make_strategy

    # refused before a MirroredStrategy is made (which would accept it and fail later)
    params = PhaseParams(after="base", epochs=1, strategy="mirrored", devices=["/cpu:0", "/gpu:7"])
    with pytest.raises(InputError, match=r"devices: '/gpu:7' is not a device of this machine"):
        make_strategy(params)


# --- training on two logical CPUs (subprocesses, seconds each) ---------------------------


@pytest.mark.slow
def test_mirrored_first_epoch_loss_matches_one_device(tmp_path, tiny_backbone, splits):
    # no dropout: its masks are drawn per replica (two half-batch masks instead of one
    # full-batch mask), the one part of an epoch that is not the same computation.
    # Frozen BatchNorm (the default) has no batch statistics to differ either.
    _base(tmp_path, tiny_backbone, dropout=0.0)
    data = splits["train"].parent
    out = _train(tmp_path, data, {"single": {"epochs": 1}, "mirrored": {"epochs": 1, **TWO_CPUS}})
    assert "strategy mirrored: 2 replicas, global batch 16" in out
    single, mirrored = _history(tmp_path, "single")[0], _history(tmp_path, "mirrored")[0]
    # Same global batches (210 faces = 13 x 16 + 2: every batch splits evenly in two) and
    # the same seeds, so the same sums, but added in another order: each replica sums
    # the gradient of its half, then the all-reduce adds the halves, and float32
    # addition is not associative. That perturbs each of the 14 Adam steps by about
    # float32 rounding (~1e-7 relative); 1e-5 leaves a wide margin and is still far
    # below what a wrong global batch or loss scaling would change (~1e-2).
    tol = 1e-5
    print(f"first-epoch loss: single {single['loss']!r}, mirrored {mirrored['loss']!r}")
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=tol)
    assert mirrored["val_loss"] == pytest.approx(single["val_loss"], rel=tol)


@pytest.mark.slow
def test_killed_mirrored_phase_resumes_then_extends_on_one_device(tmp_path, tiny_backbone, splits):
    _base(tmp_path, tiny_backbone)
    data = splits["train"].parent  # 27 batches of 8 an epoch: a second or so
    run = {"top": {"epochs": 3, "batch_size": 8, **TWO_CPUS}}
    proc = subprocess.Popen(
        _cmd(tmp_path, data, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    meta = tmp_path / "ckpt" / "top" / "last" / "ckpt.json"
    deadline = time.monotonic() + 300
    while not meta.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert not (tmp_path / "phases" / "top" / "model.keras").exists()
    done = json.loads(meta.read_text())["epoch"]
    print(f"killed after epoch {done} of 3")
    assert 1 <= done < 3

    out = _train(tmp_path, data, run)
    assert f"resuming from checkpoint at epoch {done} (target 3)" in out
    assert "strategy mirrored: 2 replicas" in out
    assert [h["epoch"] for h in _history(tmp_path, "top")] == [1, 2, 3]

    # strategy is not in the fingerprint: one more epoch on one device continues
    # the mirrored checkpoint (a .keras model like any other)
    out = _train(tmp_path, data, {"top": {"epochs": 4, "batch_size": 8}})
    assert "resuming from checkpoint at epoch 3 (target 4)" in out
    assert "epochs 4-4 of 4" in out
    state = read_json(tmp_path / "phases" / "top" / "state.json")
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert np.isfinite(state["val_loss"])


@pytest.mark.slow
def test_multi_worker_phase_trains_on_a_one_worker_cluster(tmp_path, tiny_backbone, splits):
    with socket.socket() as s:  # a free port for the worker's gRPC server
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    tf_config = json.dumps({"cluster": {"worker": [f"localhost:{port}"]}, "task": _WORKER})
    _base(tmp_path, tiny_backbone)
    run = {"top": {"epochs": 2, "strategy": "multi_worker"}}
    out = _train(tmp_path, splits["train"].parent, run, TF_CONFIG=tf_config)
    assert "strategy multi_worker: 1 replicas" in out
    state = read_json(tmp_path / "phases" / "top" / "state.json")  # the chief wrote it
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert (tmp_path / "ckpt" / "top" / "last" / "ckpt.json").is_file()
