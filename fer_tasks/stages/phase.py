"""`phase@<name>` stage: one fine-tuning phase of the write-up's staged schedule.

Loads the previous phase's model, unfreezes more layers (BatchNorm stays
frozen unless asked), recompiles and trains on with the global epoch count
continuing (`initial_epoch`). After every epoch the full training state
(weights, optimizer, epoch, history) is checkpointed atomically into a
persistent directory, which gives two things:

- a killed run resumes from its last completed epoch when rerun;
- when only `epochs` grew, the rerun trains just the new epochs from the
  checkpoint of the previous run and ends where a straight run would
  (data order and dropout masks are seeded per epoch).

The checkpoint directory is a DVC-cached output, so `dvc push`/`dvc pull`
carry it and a fresh clone can extend a pulled phase. It is reused only when
its fingerprint (parent model, training data, class weights and every phase
param except `epochs`) matches; an unreadable one is reported and ignored.
Under a `strategy` (fer_tasks/lib/distribute.py) the model is loaded and
compiled inside the strategy's scope; the checkpoint stays a plain .keras model.
With `use_ema` the optimizer's moving average of the weights is part of the
checkpoint (the model there keeps its raw weights), and the phase's model
gets the averaged weights, so an extended phase ends where a straight one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.data import eval_dataset, train_dataset
from fer_tasks.lib.distribute import make_strategy, scope, write_dirs
from fer_tasks.lib.errors import FerError
from fer_tasks.lib.io import (
    atomic_group,
    atomic_path,
    load_split,
    read_json,
    save_model,
    write_json,
)
from fer_tasks.lib.model import compile_model, unfreeze_model
from fer_tasks.lib.params import FinetuneParams, ParamsError, PhaseParams

log = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# params that do not change what an epoch computes; a checkpoint survives edits to them.
# `strategy`/`devices` only spread the same global batches over devices (equal up to
# float summation order), and a checkpoint is a plain .keras model: a phase killed
# on two GPUs may resume on one. Left out, they also keep older fingerprints valid.
_NOT_FINGERPRINTED = {"epochs", "max_class_share", "on_collapse", "strategy", "devices"}


class CollapseError(FerError, RuntimeError):
    """The model predicts (almost) a single class on the validation split."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(params: PhaseParams, inputs: list[Path]) -> str:
    # EMA keys only when EMA is on, so checkpoints from before they existed stay valid
    off = set() if params.use_ema else {"use_ema", "ema_momentum"}
    fields = params.model_dump(exclude=_NOT_FINGERPRINTED | off)
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for p in inputs:
        h.update(_sha256(p).encode())
    return h.hexdigest()


def _learning_rate(params: PhaseParams, start: int):
    """Per-epoch learning rate as a function of the global epoch index alone.

    Never of `epochs`: a run extended from a checkpoint then sees the same rates
    as a straight run of the new length (cosine holds lr_min past its horizon).
    """

    def lr(epoch: int, _current: float | None = None) -> float:
        t = epoch - start
        if params.lr_schedule == "exponential":
            return params.learning_rate * params.lr_decay_rate**t
        if params.lr_schedule == "cosine":
            frac = min(t, params.lr_horizon) / params.lr_horizon
            top, floor = params.learning_rate, params.lr_min
            return floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * frac))
        return params.learning_rate

    return lr


class _SeedDropout(keras.callbacks.Callback):
    """Reset every layer's random-seed state at each epoch start from (seed, epoch).

    Dropout masks then depend only on the epoch, not on how many epochs this
    process has run, which is what makes a resumed run equal a straight one.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        for i, layer in enumerate(self.model.layers):
            for sg in getattr(layer, "_seed_generators", []):
                sg.state.assign(np.array([self.seed + i, epoch], dtype=sg.state.dtype))


class _Checkpoint(keras.callbacks.Callback):
    """Atomically save model + optimizer + epoch + history after every epoch."""

    def __init__(self, ckpt_dir: Path, fingerprint: str, history: list[dict], lr_fn):
        super().__init__()
        self.ckpt_dir, self.fingerprint, self.history, self.lr_fn = (
            ckpt_dir,
            fingerprint,
            history,
            lr_fn,
        )

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_KEYS if k in logs}}
        row["learning_rate"] = float(self.lr_fn(epoch))
        self.history.append(row)
        with atomic_path(self.ckpt_dir / "last") as tmp:
            tmp.mkdir()
            save_model(self.model, tmp / "model.keras")
            (tmp / "ckpt.json").write_text(
                json.dumps(
                    {"fingerprint": self.fingerprint, "epoch": epoch + 1, "history": self.history},
                    indent=1,
                )
            )


def publish_live(live_dir: Path, rows: list[dict], summary: dict | None = None) -> None:
    """Write the dvclive directory (metrics.json, plots/metrics/*.tsv) for `rows`,
    one per epoch with the global epoch as the step, and swap it in whole.

    Rewritten from the full history each time: a few dozen rows, and no file is
    ever seen half-written or from two different epochs.
    """
    from dvclive import Live

    with atomic_path(live_dir) as tmp:
        live = Live(dir=str(tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in rows:
            live.step = row["epoch"]
            for k in (*HISTORY_KEYS, "learning_rate"):
                if k in row:
                    live.log_metric(
                        f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", row[k]
                    )
        for k, v in (summary or {}).items():
            live.summary[k] = v
        live.make_summary()
        if summary is not None:
            _write_history_csv(tmp / "history.csv", rows)


class _LiveLogger(keras.callbacks.Callback):
    """Publishes the dvclive directory after every epoch (curves join across phases)."""

    def __init__(self, live_dir: Path, before: list[dict], history: list[dict]):
        super().__init__()
        self.live_dir, self.before, self.history = live_dir, before, history

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        publish_live(self.live_dir, self.before + self.history)


def _load_checkpoint(ckpt_dir: Path, fingerprint: str, target_epoch: int):
    """(model, epoch, history) from a matching checkpoint, or None."""
    meta_path, model_path = ckpt_dir / "last" / "ckpt.json", ckpt_dir / "last" / "model.keras"
    if not meta_path.is_file() and not model_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        epoch, history = int(meta["epoch"]), list(meta["history"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("checkpoint %s is unreadable (%s); starting the phase over", meta_path, err)
        return None
    if meta.get("fingerprint") != fingerprint:
        log.info(
            "checkpoint in %s is from other inputs or params; starting the phase over", ckpt_dir
        )
        return None
    if epoch > target_epoch:
        log.info("checkpoint at epoch %d, past the target %d; starting over", epoch, target_epoch)
        return None
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a damaged file
        # a truncated or corrupt file: retraining is the only way on, and it is safe
        log.warning("checkpoint %s is unreadable (%s); starting the phase over", model_path, err)
        return None
    return model, epoch, history


def _class_weights(path: Path) -> dict[int, float]:
    weights = read_json(path)["weights"]
    return {int(k): float(v) for k, v in weights.items()}


def _collapse_check(pred: np.ndarray, params: PhaseParams, name: str) -> dict:
    shares = np.bincount(pred, minlength=NUM_CLASSES) / max(len(pred), 1)
    top = int(shares.argmax())
    out = {
        "max_class_share": float(shares[top]),
        "max_class": CLASS_NAMES[top],
        "predicted_share": {c: float(s) for c, s in zip(CLASS_NAMES, shares, strict=True)},
    }
    out["collapsed"] = bool(shares[top] > params.max_class_share)
    out["message"] = (
        f"phase {name!r} collapsed: it predicts {CLASS_NAMES[top]!r} for {shares[top]:.1%} "
        f"of the validation faces (max_class_share {params.max_class_share}); "
        f"try a lower learning_rate or fewer unfrozen layers"
    )
    return out


def run_phase(
    name: str,
    models: Path,
    train: Path,
    class_weights: Path,
    val: Path,
    ckpt: Path,
    live: Path,
    finetune: FinetuneParams,
) -> dict:
    """`fer phase NAME`: train phase NAME of `finetune` on from its parent in `models`."""
    if name not in finetune.phases:
        raise ParamsError(f"finetune.phases has no phase {name!r} (have {list(finetune.phases)})")
    phase = finetune.phases[name]
    models = Path(models)
    return train_phase(
        name, models / phase.after, train, class_weights, val, models / name, ckpt, live, phase
    )


def train_phase(
    name: str,
    parent_dir: Path,
    train_path: Path,
    class_weights_path: Path,
    val_path: Path,
    out_dir: Path,
    ckpt_dir: Path,
    live_dir: Path,
    params: PhaseParams,
) -> dict:
    """Run one phase; write out_dir/{model.keras,state.json} and dvclive logs in live_dir."""
    from sklearn.metrics import f1_score

    parent_dir, out_dir, ckpt_dir, live_dir = map(Path, (parent_dir, out_dir, ckpt_dir, live_dir))
    strategy = make_strategy(params)  # first: checks TF_CONFIG before any work
    # a non-chief worker of a multi_worker cluster writes scratch copies only
    ckpt_out, live_dir, out_dir = write_dirs(strategy, ckpt_dir, live_dir, out_dir)
    parent_state = read_json(parent_dir / "state.json")
    start = int(parent_state["epoch_end"])
    target = start + params.epochs
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()

    fingerprint = _fingerprint(params, [parent_dir / "model.keras", train_path, class_weights_path])
    lr_fn = _learning_rate(params, start)
    with scope(strategy):  # model and optimizer variables are created on every replica
        resumed = _load_checkpoint(ckpt_dir, fingerprint, target)
        if resumed is not None:
            model, initial, own_history = resumed
            log.info(
                "phase %s: resuming from checkpoint at epoch %d (target %d)", name, initial, target
            )
        else:
            model = keras.saving.load_model(
                parent_dir / "model.keras", compile=False, safe_mode=True
            )
            unfreeze_model(model, params.unfreeze, params.unfreeze_bn)
            # recompile: trainability changes need it
            compile_model(
                model, lr_fn(start), params.label_smoothing, params.use_ema, params.ema_momentum
            )
            initial, own_history = start, []

    x_train, y_train = load_split(train_path)
    x_val, y_val = load_split(val_path)
    publish_live(live_dir, parent_state["history"] + own_history)
    if initial < target:
        ds, steps = train_dataset(
            x_train,
            y_train,
            batch_size=params.batch_size,
            first_epoch=initial,
            last_epoch=target,
            seed=params.seed,
            augment=params.augment,
            max_steps=params.steps_per_epoch,
            shift=params.shift,
            rotate=params.rotate,
            zoom=params.zoom,
            mixup=params.mixup,
        )
        ckpt = _Checkpoint(ckpt_out, fingerprint, own_history, lr_fn)
        logger = _LiveLogger(live_dir, parent_state["history"], own_history)
        log.info(
            "phase %s: epochs %d-%d of %d, unfreeze=%r, %d trainable weights",
            name,
            initial + 1,
            target,
            target,
            params.unfreeze,
            len(model.trainable_weights),
        )
        model.fit(
            ds,
            epochs=target,
            initial_epoch=initial,
            steps_per_epoch=steps,
            validation_data=eval_dataset(x_val, y_val, 256),
            class_weight=_class_weights(class_weights_path),
            callbacks=[
                keras.callbacks.LearningRateScheduler(lr_fn),
                _SeedDropout(params.seed),
                ckpt,
                logger,
            ],
            shuffle=False,  # the dataset is already shuffled, seeded per epoch
            verbose=1 if sys.stdout.isatty() else 2,
        )

    if params.use_ema:  # what fit ends with; also when a checkpoint at the target was resumed
        model.optimizer.finalize_variable_values(model.trainable_variables)
    probs = model.predict(eval_dataset(x_val, None, 256), verbose=0)
    pred = probs.argmax(1)
    summary = {
        "phase": name,
        "epoch_start": start,
        "epoch_end": target,
        "val_accuracy": float((pred == y_val).mean()),
        "val_macro_f1": float(f1_score(y_val, pred, average="macro", labels=range(NUM_CLASSES))),
        "val_loss": own_history[-1]["val_loss"] if own_history else None,
        "trainable_weights": len(model.trainable_weights),
    }
    guard = _collapse_check(pred, params, name)
    summary.update({k: guard[k] for k in ("max_class_share", "max_class", "collapsed")})
    history = parent_state["history"] + [dict(r, phase=name) for r in own_history]
    # recorded even when the guard fails the phase below
    publish_live(live_dir, history, {k: summary[k] for k in ("val_macro_f1", "max_class_share")})
    if guard["collapsed"]:
        if params.on_collapse == "fail":
            raise CollapseError(guard["message"])
        log.warning(guard["message"])

    with atomic_group(out_dir) as tmp:  # the pair the next phase reads, published together
        save_model(model, tmp / "model.keras")
        write_json(tmp / "state.json", {**summary, "history": history})
    return summary


def _write_history_csv(path: Path, history: list[dict]) -> None:
    cols = ["epoch", "phase", *HISTORY_KEYS, "learning_rate"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in history]
    path.write_text("\n".join(lines) + "\n")  # inside publish_live's temporary directory
