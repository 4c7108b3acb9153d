"""Phase training: chaining, extension equals a straight run, kill/resume, collapse guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fer_tasks.lib.io import read_json
from fer_tasks.lib.params import BaseModelParams, PhaseParams
from fer_tasks.stages.base import build_base
from fer_tasks.stages.phase import CollapseError, train_phase

pytestmark = pytest.mark.slow


def _run(root: Path, splits: dict, name: str, after: str, **kw) -> dict:
    kw.setdefault("deterministic", True)
    kw.setdefault("on_collapse", "warn")
    params = PhaseParams(after=after, batch_size=16, **kw)
    return train_phase(
        name,
        root / "phases" / after,
        splits["train"],
        splits["class_weights"],
        splits["val"],
        root / "phases" / name,
        root / "ckpt" / name,
        root / "live" / name,
        params,
    )


@pytest.fixture
def root(tmp_path, tiny_backbone):
    build_base(tiny_backbone, tmp_path / "phases" / "base", BaseModelParams())
    return tmp_path


def test_two_phases_chain_and_epochs_continue(root, splits):
    s1 = _run(root, splits, "top", "base", unfreeze="top", epochs=2)
    s2 = _run(root, splits, "b2", "top", unfreeze="block2", epochs=2, learning_rate=5e-4)
    assert (s1["epoch_start"], s1["epoch_end"], s2["epoch_start"], s2["epoch_end"]) == (0, 2, 2, 4)
    assert s2["trainable_weights"] > s1["trainable_weights"]
    hist = read_json(root / "phases" / "b2" / "state.json")["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert [r["phase"] for r in hist] == ["top", "top", "b2", "b2"]
    # dvclive logged the global epoch index, so the curves of both phases join
    tsv = (root / "live" / "b2" / "plots" / "metrics" / "val" / "loss.tsv").read_text().split("\n")
    assert [line.split("\t")[0] for line in tsv[1:] if line] == ["1", "2", "3", "4"]
    assert json.loads((root / "live" / "b2" / "metrics.json").read_text())["step"] == 4
    csv = (root / "live" / "b2" / "history.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,phase,loss") and len(csv) == 5


# the fer2013-cpu preset's last phase in small: cosine (over its own horizon),
# label smoothing, geometric augmentation, trainable BatchNorm
PRESET_LIKE = {
    "lr_schedule": "cosine",
    "lr_horizon": 4,
    "lr_min": 1e-5,
    "label_smoothing": 0.1,
    "shift": 0.1,
    "rotate": 10,
    "zoom": 0.1,
    "unfreeze_bn": True,
}


def test_learning_rate_never_depends_on_epochs():
    from fer_tasks.stages.phase import _learning_rate

    for kw in ({}, {"lr_schedule": "exponential", "lr_decay_rate": 0.5}, PRESET_LIKE):
        short, long = (PhaseParams(after="base", epochs=n, **kw) for n in (3, 9))
        assert [_learning_rate(short, 2)(e) for e in range(2, 5)] == [
            _learning_rate(long, 2)(e) for e in range(2, 5)
        ]
    cos = _learning_rate(PhaseParams(after="base", epochs=9, **PRESET_LIKE), 0)
    assert cos(0) == pytest.approx(1e-3)
    assert cos(2) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half way down the horizon
    assert cos(4) == cos(7) == pytest.approx(1e-5)  # then it holds lr_min


def test_cosine_needs_its_own_horizon():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lr_schedule cosine needs lr_horizon"):
        PhaseParams(after="base", epochs=4, lr_schedule="cosine")
    with pytest.raises(ValidationError, match="lr_min"):
        PhaseParams(after="base", epochs=4, learning_rate=1e-4, lr_min=1e-3)


@pytest.mark.parametrize("schedule", [{}, PRESET_LIKE], ids=["constant", "preset-cosine"])
def test_extending_epochs_runs_only_new_ones_and_equals_straight_run(
    tmp_path, tiny_backbone, splits, caplog, schedule
):
    import logging

    caplog.set_level(logging.INFO, logger="fer_tasks.stages.phase")
    results = {}
    for variant in ("straight", "extended"):
        root = tmp_path / variant
        build_base(tiny_backbone, root / "phases" / "base", BaseModelParams())
        _run(root, splits, "top", "base", unfreeze="top", epochs=1)
        if variant == "extended":
            _run(root, splits, "b2", "top", unfreeze="block2", epochs=2, **schedule)
            caplog.clear()
        results[variant] = _run(root, splits, "b2", "top", unfreeze="block2", epochs=4, **schedule)
    assert "resuming from checkpoint at epoch 3 (target 5)" in caplog.text
    assert "epochs 4-5 of 5" in caplog.text
    assert abs(results["straight"]["val_loss"] - results["extended"]["val_loss"]) < 1e-4


def test_changed_params_do_not_reuse_checkpoint(root, splits, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="fer_tasks.stages.phase")
    _run(root, splits, "top", "base", unfreeze="top", epochs=1)
    _run(root, splits, "top", "base", unfreeze="top", epochs=2, learning_rate=1e-4)
    assert "starting the phase over" in caplog.text
    assert "epochs 1-2 of 2" in caplog.text


def test_collapse_guard_fails_with_class_name(root, splits):
    # a huge learning rate on the head drives every prediction to one class
    with pytest.raises(CollapseError, match=r"collapsed: it predicts '\w+' for"):
        _run(
            root,
            splits,
            "top",
            "base",
            unfreeze="top",
            epochs=1,
            learning_rate=1.0,
            max_class_share=0.3,
            on_collapse="fail",
        )
    # the metric is recorded, and no model is left for a later stage to read
    summary = json.loads((root / "live" / "top" / "metrics.json").read_text())
    assert summary["max_class_share"] > 0.3
    assert not (root / "phases" / "top" / "model.keras").exists()


def test_healthy_phase_passes_the_collapse_guard_set_to_fail(root, splits):
    # the guard's other direction: a phase that learns is not stopped. Four epochs, not
    # two: after two, the tiny random backbone's head is still near the bound (87 % one
    # class alone, 91 % beside another pytest worker on an AVX-512 host); after four,
    # about 53 %.
    s = _run(root, splits, "top", "base", unfreeze="top", epochs=4, on_collapse="fail")
    assert not s["collapsed"] and s["max_class_share"] <= 0.9
    assert (root / "phases" / "top" / "model.keras").is_file()


@pytest.mark.parametrize("damage", ["truncated model", "garbled ckpt.json"])
def test_damaged_checkpoint_warns_and_starts_over(root, splits, caplog, damage):
    import logging

    caplog.set_level(logging.INFO, logger="fer_tasks.stages.phase")
    _run(root, splits, "top", "base", unfreeze="top", epochs=1)
    last = root / "ckpt" / "top" / "last"
    if damage == "truncated model":
        bad = last / "model.keras"
        bad.write_bytes(bad.read_bytes()[:1000])
    else:
        bad = last / "ckpt.json"
        bad.write_text('{"fingerprint": "x", "epo')
    caplog.clear()
    s = _run(root, splits, "top", "base", unfreeze="top", epochs=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(bad) in w and "starting the phase over" in w for w in warnings), warnings
    assert "epochs 1-2 of 2" in caplog.text  # trained from the parent, not from the checkpoint
    assert s["epoch_end"] == 2 and np.isfinite(s["val_loss"])


def test_saving_the_same_model_twice_gives_the_same_bytes(root, splits):
    import hashlib

    import keras

    from fer_tasks.lib.io import save_model

    _run(root, splits, "top", "base", unfreeze="top", epochs=1)
    model = keras.saving.load_model(root / "phases" / "top" / "model.keras")
    digests = set()
    for name in ("a.keras", "b.keras"):
        save_model(model, root / name)
        digests.add(hashlib.sha256((root / name).read_bytes()).hexdigest())
        time.sleep(1.1)  # zip timestamps have 2 s resolution, Keras' date_saved 1 s
    assert len(digests) == 1
    # and the phase's own output is that same file: a rerun does not ripple downstream
    out = hashlib.sha256((root / "phases" / "top" / "model.keras").read_bytes()).hexdigest()
    assert digests == {out}


_KILL_SCRIPT = """
import sys
from pathlib import Path
from fer_tasks.lib.params import PhaseParams
from fer_tasks.stages.phase import train_phase
import logging; logging.basicConfig(level=logging.INFO)
root, data = Path(sys.argv[1]), Path(sys.argv[2])
p = PhaseParams(after="base", unfreeze="all", epochs=4, batch_size=8, deterministic=True,
                on_collapse="warn")
train_phase("top", root / "phases/base", data / "train.npz", data / "class_weights.json",
            data / "val.npz", root / "phases/top", root / "ckpt/top", root / "live/top", p)
"""


def test_sigkill_mid_epoch_then_resume(root, tmp_path):
    from conftest import make_splits

    data = make_splits(tmp_path / "big", n_train=1400)["train"].parent
    cmd = [sys.executable, "-c", _KILL_SCRIPT, str(root), str(data)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = root / "ckpt" / "top" / "last" / "ckpt.json"
    deadline = time.monotonic() + 240
    while not meta.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "phases" / "top" / "model.keras").exists()  # nothing half-written
    done = json.loads(meta.read_text())["epoch"]
    assert 1 <= done < 4
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from checkpoint at epoch {done} (target 4)" in r.stderr
    assert f"Epoch {done + 1}/4" in r.stdout + r.stderr
    state = read_json(root / "phases" / "top" / "state.json")
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert np.isfinite(state["val_loss"])


def test_label_smoothing_reaches_the_saved_model(root, splits):
    import keras

    _run(root, splits, "top", "base", unfreeze="top", epochs=1, label_smoothing=0.2)
    _run(root, splits, "plain", "base", unfreeze="top", epochs=1)
    smoothed = keras.saving.load_model(root / "phases" / "top" / "model.keras")
    plain = keras.saving.load_model(root / "phases" / "plain" / "model.keras")
    assert smoothed.loss.get_config()["label_smoothing"] == pytest.approx(0.2)
    assert plain.loss.get_config()["label_smoothing"] == 0.0


def test_mixup_phase_trains_with_class_weights(root, splits):
    # soft labels and Keras' class_weight together (it weights by the dominant class)
    s = _run(root, splits, "top", "base", unfreeze="top", epochs=1, mixup=0.4)
    assert s["epoch_end"] == 1 and np.isfinite(s["val_loss"])


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


def test_ema_extended_run_equals_straight_run(tmp_path, tiny_backbone, splits, caplog):
    """With use_ema the checkpoint carries the moving average: resuming continues it."""
    import logging

    caplog.set_level(logging.INFO, logger="fer_tasks.stages.phase")
    ema = {"use_ema": True, "ema_momentum": 0.9}
    for variant in ("straight", "extended"):
        root = tmp_path / variant
        build_base(tiny_backbone, root / "phases" / "base", BaseModelParams())
        if variant == "extended":
            _run(root, splits, "top", "base", unfreeze="top", epochs=2, **ema)
            caplog.clear()
        _run(root, splits, "top", "base", unfreeze="top", epochs=4, **ema)
    assert "resuming from checkpoint at epoch 2 (target 4)" in caplog.text
    straight, extended = (
        _weights(tmp_path / v / "phases/top/model.keras") for v in ("straight", "extended")
    )
    assert max(float(np.abs(a - b).max()) for a, b in zip(straight, extended, strict=True)) < 1e-5
    # the phase's model holds the averaged weights; the checkpoint the raw ones, so they differ
    raw = _weights(tmp_path / "straight" / "ckpt/top/last/model.keras")
    assert max(float(np.abs(a - b).max()) for a, b in zip(straight, raw, strict=True)) > 1e-4


def test_ema_resumed_at_its_target_still_gets_the_average(root, splits):
    """A checkpoint at the target epoch (killed after the last epoch): no fit runs, yet the
    published model is the averaged one, as after a straight run."""
    ema = {"use_ema": True, "ema_momentum": 0.9}
    _run(root, splits, "top", "base", unfreeze="top", epochs=2, **ema)
    first = _weights(root / "phases" / "top" / "model.keras")
    (root / "phases" / "top" / "model.keras").unlink()
    _run(root, splits, "top", "base", unfreeze="top", epochs=2, **ema)
    again = _weights(root / "phases" / "top" / "model.keras")
    assert max(float(np.abs(a - b).max()) for a, b in zip(first, again, strict=True)) < 1e-6


def test_ema_keys_enter_the_fingerprint_only_when_on(tmp_path):
    from fer_tasks.stages.phase import _fingerprint

    plain = PhaseParams(after="base", epochs=1)
    on = PhaseParams(after="base", epochs=1, use_ema=True)
    faster = PhaseParams(after="base", epochs=1, use_ema=True, ema_momentum=0.9)
    prints = {_fingerprint(p, []) for p in (plain, on, faster)}
    assert len(prints) == 3
    # a checkpoint written before the EMA keys existed keeps its fingerprint
    fields = plain.model_dump(
        exclude={
            "epochs",
            "max_class_share",
            "on_collapse",
            "strategy",
            "devices",
            "use_ema",
            "ema_momentum",
        }
    )
    import hashlib

    old = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    assert _fingerprint(plain, []) == old
