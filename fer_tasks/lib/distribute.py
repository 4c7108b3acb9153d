"""A phase's `strategy`: training on one device, several local ones, or several machines.

- `default`: no tf.distribute strategy at all, so the phase runs exactly as it
  always has (one device, bit-identical results);
- `mirrored`: tf.distribute.MirroredStrategy, one replica per local GPU, or per
  device named in `devices` (e.g. ["/gpu:0", "/gpu:1"], or two logical CPUs in
  the tests);
- `multi_worker`: tf.distribute.MultiWorkerMirroredStrategy over the machines of
  the TF_CONFIG environment variable, which is checked before any work. Keras
  up to 3.15.1 fails in model.fit with more than one worker, so such a TF_CONFIG
  is refused with that reason (a one-worker cluster trains).

The model and its optimizer are built (or loaded) and compiled inside
`scope(strategy)`; Keras' `model.fit` then splits every batch of the tf.data
pipeline across the replicas, so a phase's `batch_size` is the global batch
(each of n replicas computes on batch_size / n faces) and the data order, the
learning rates and the checkpoints are those of a single-device run. The
numbers agree up to float summation order, except that dropout masks and the
batch statistics of trainable BatchNorm layers are drawn per replica.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from fer_tasks.lib.errors import InputError
from fer_tasks.lib.params import PhaseParams

log = logging.getLogger(__name__)

_TF_CONFIG_HELP = (
    'format: TF_CONFIG=\'{"cluster": {"worker": ["host:port", ...]}, '
    '"task": {"type": "worker", "index": i}}\', i = this machine\'s place in the list'
)


def check_tf_config() -> dict:
    """TF_CONFIG parsed and checked: a cluster of host:port lists and this machine's task."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise InputError(
            f"strategy multi_worker needs the TF_CONFIG environment variable ({_TF_CONFIG_HELP})"
        )
    try:
        cfg = json.loads(raw)
    except ValueError as err:
        raise InputError(f"TF_CONFIG is not valid JSON ({err}); {_TF_CONFIG_HELP}") from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise InputError(f"TF_CONFIG needs a 'cluster' and a 'task' mapping; {_TF_CONFIG_HELP}")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            raise InputError(f"TF_CONFIG cluster.{job} must be a list of host:port strings")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise InputError(
            f"TF_CONFIG task {task} is not a member of its cluster {sorted(cluster)}; "
            f"{_TF_CONFIG_HELP}"
        )
    if kind not in ("chief", "worker"):
        raise InputError(f"TF_CONFIG task type {kind!r}: a phase runs on a chief or a worker")
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if workers > 1 and _keras_version() <= _KERAS_MULTI_WORKER_BROKEN:
        raise InputError(
            f"TF_CONFIG lists {workers} workers, but Keras {keras.__version__}'s model.fit "
            "fails on more than one (keras-team/keras#20585); use strategy mirrored "
            "on one machine until a Keras release fixes it"
        )
    return cfg


# the last Keras seen to fail model.fit under MultiWorkerMirroredStrategy with two
# workers (first in reducing a batch to build the model, then the step's logs)
_KERAS_MULTI_WORKER_BROKEN = (3, 15, 1)


def _keras_version() -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", keras.__version__)[:3])


def _check_devices(devices: list[str]) -> None:
    """Refuse a device this machine lacks (MirroredStrategy would fail later, obscurely)."""
    have = {d.name: tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()}
    kinds = {(spec.device_type, spec.device_index) for spec in have.values()}
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name)
        except ValueError:
            spec = None
        if spec is None or (spec.device_type, spec.device_index) not in kinds:
            short = [f"/{s.device_type.lower()}:{s.device_index}" for s in have.values()]
            raise InputError(f"devices: {name!r} is not a device of this machine (it has {short})")


def make_strategy(params: PhaseParams) -> tf.distribute.Strategy | None:
    """The phase's strategy (None for `default`); call it before any other TensorFlow work:
    MultiWorkerMirroredStrategy must configure the runtime before it starts."""
    if params.strategy == "default":
        return None
    if params.strategy == "multi_worker":
        check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        _check_devices(params.devices or [])
        strategy = tf.distribute.MirroredStrategy(devices=params.devices)
    n = strategy.num_replicas_in_sync
    log.info("strategy %s: %d replicas, global batch %d", params.strategy, n, params.batch_size)
    if params.batch_size % n:
        log.warning("batch_size %d does not split evenly over %d replicas", params.batch_size, n)
    return strategy


def scope(strategy: tf.distribute.Strategy | None):
    """Where the model and its optimizer are built, loaded and compiled."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the phase's files: always, but for the non-chief
    workers of a multi_worker cluster (every worker but `chief`, or worker 0 if none)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    kind, index = resolver.task_type, resolver.task_id
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in resolver.cluster_spec().jobs


def write_dirs(strategy, *dirs: Path) -> tuple[Path, ...]:
    """`dirs` for the chief; for another worker, scratch folders in their place.

    Every worker runs the same saves (saving can need all of them), but only the
    chief's land in the pipeline's outputs; the others read the chief's checkpoint
    to resume, so a multi_worker phase wants a folder that every machine sees.
    """
    if is_chief(strategy):
        return dirs
    scratch = Path(tempfile.mkdtemp(prefix="fer-worker-"))
    log.info("not the chief: this worker writes its copies under %s", scratch)
    return tuple(scratch / f"{i}" for i in range(len(dirs)))
