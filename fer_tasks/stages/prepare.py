"""Stage `prepare`: FER2013 CSV or image-folder tree -> train/val/test `.npz` splits.

Sources
    * the ICML 2013 challenge CSV ``emotion,pixels,Usage`` (plain or gzip, detected by
      the ``.gz`` suffix or the gzip magic bytes; without a ``Usage`` column every row
      is Training).
    * an image-folder tree ``<source>/train/<class>/*`` and ``<source>/test/<class>/*``
      (the common FER2013 image release, whose test/ holds PublicTest). When a
      ``val/`` folder exists too, it is PublicTest and test/ is PrivateTest. Class
      folder names are matched case-insensitively; every image is converted to
      48x48 grayscale.

Roles (``prepare.roles``). Training is always train. With ``auto`` (the
default), a source with both held-out splits gives the standard protocol,
PublicTest -> val and PrivateTest -> test; a source with one of them (the
shared FER2013 copy lacks PrivateTest) makes that one the test split and
carves val from Training; a source with neither carves both. Either role can
also name its source split or ``carve``. A held-out split that plays no role
is left out and listed in the report as unused. Carving is stratified by
class and seeded (test first, then val, each sized from the original train
count), so model choices are made on val and test is read once, by evaluate.

The readers are in lib/sources.py (the CSV is streamed in blocks of
``chunk_rows`` records, so peak memory is the uint8 output plus one block).
Outputs are written atomically: on any
error nothing new appears at ``out_dir`` or ``report_path`` and a previous output is
left whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fer_tasks import CLASS_NAMES, NUM_CLASSES
from fer_tasks.lib.io import atomic_path, save_split, write_json
from fer_tasks.lib.params import USAGES, PrepareParams, SplitRoles
from fer_tasks.lib.sources import SPLITS, PrepareError, Skips, read_csv, read_folder

logger = logging.getLogger(__name__)


def _stratified_take(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of k rows drawn per class in proportion (largest remainder)."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    ideal = counts * (k / len(labels))
    per_class = np.floor(ideal).astype(np.int64)
    short = k - int(per_class.sum())
    if short > 0:
        per_class[np.argsort(per_class - ideal, kind="stable")[:short]] += 1
    per_class = np.minimum(per_class, counts)
    taken = [
        rng.permutation(np.flatnonzero(labels == c))[: per_class[c]] for c in range(NUM_CLASSES)
    ]
    return np.sort(np.concatenate(taken))


HELD_OUT = USAGES[1:]  # PublicTest, PrivateTest


def resolve_roles(present: set[str], roles: SplitRoles) -> dict[str, str]:
    """Role (val, test) -> the held-out source split that plays it, or "carve".

    `present`: the held-out splits the source has. `auto` gives test the
    PrivateTest when there is one, else the PublicTest, and val the PublicTest
    only when test did not take it; an explicit source split must be present.
    """
    chosen = {"val": roles.val, "test": roles.test}
    for role, src in chosen.items():
        if src in HELD_OUT and src not in present:
            have = ", ".join(sorted(present)) or "no held-out split"
            raise PrepareError(
                f"prepare.roles.{role} is {src}, but the source has {have} (use auto or carve)"
            )
    for role, prefer in (("test", ("PrivateTest", "PublicTest")), ("val", ("PublicTest",))):
        if chosen[role] == "auto":
            taken = set(chosen.values())
            free = [u for u in prefer if u in present and u not in taken]
            chosen[role] = free[0] if free else "carve"
    return chosen


def _carve_missing(source: Path, splits: dict[str, tuple], params: PrepareParams) -> list[str]:
    """Fill empty val/test from train in place (test first, then val); return their names."""
    images, labels = splits["train"]
    n = len(labels)
    if n == 0:
        raise PrepareError(f"{source}: no training rows/images (Training / train/)")
    fractions = {"test": params.test_fraction, "val": params.val_fraction}
    missing = [s for s in ("test", "val") if len(splits[s][1]) == 0]
    if not missing:
        return []
    sizes = {s: max(1, round(n * fractions[s])) for s in missing}
    if n - sum(sizes.values()) < 1:
        raise PrepareError(
            f"{source}: only {n} training rows, too few to carve {' and '.join(missing)}"
        )
    rng = np.random.default_rng(params.seed)
    keep = np.arange(n)
    for s in missing:
        taken = _stratified_take(labels[keep], sizes[s], rng)
        splits[s] = (images[keep[taken]], labels[keep[taken]])
        keep = np.delete(keep, taken)
    splits["train"] = (images[keep], labels[keep])
    logger.info("carved %s from train (seed %d)", ", ".join(missing), params.seed)
    return missing


# ------------------------------------------------------------------------ stage


def _detect_kind(source: Path, fmt: str) -> str:
    if not source.exists():
        raise PrepareError(f"{source}: source not found")
    kind = fmt if fmt != "auto" else ("folder" if source.is_dir() else "csv")
    if kind == "csv" and source.is_dir():
        raise PrepareError(f"{source}: format is csv but the source is a directory")
    if kind == "folder" and not source.is_dir():
        raise PrepareError(f"{source}: format is folder but the source is not a directory")
    return kind


def _inside(path: Path, folder: Path) -> Path | None:
    """`path` relative to `folder` when it lies inside it, else None."""
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


def _write_outputs(
    out_dir: Path, report_path: Path, splits: dict[str, tuple], report: dict
) -> None:
    """All of out_dir (and the report) appear together or not at all."""
    report_in_out = _inside(report_path, out_dir)
    report_written = False
    try:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            for name in SPLITS:
                save_split(tmp / f"{name}.npz", *splits[name])
            if report_in_out is not None:
                write_json(tmp / report_in_out, report)
            else:
                write_json(report_path, report)
                report_written = True
    except BaseException:
        if report_written:
            report_path.unlink(missing_ok=True)
        raise


def _split_summary(labels: np.ndarray, origin: str) -> dict:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return {
        "origin": origin,
        "counts": {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)},
        "total": int(len(labels)),
    }


def _assign_roles(
    source: Path, splits: dict[str, tuple], origins: dict[str, str], roles: SplitRoles
) -> list[str]:
    """Put each held-out split in the role `roles` gives it (in place); return the unused.

    The readers file PublicTest under "val" and PrivateTest under "test"; a role
    to be carved is left empty for `_carve_missing`.
    """
    held = {
        u: (splits[s], origins.get(s, u)) for u, s in zip(HELD_OUT, ("val", "test"), strict=True)
    }
    present = {u for u, (data, _) in held.items() if len(data[1])}
    try:
        chosen = resolve_roles(present, roles)
    except PrepareError as err:
        raise PrepareError(f"{source}: {err}") from None
    empty = (splits["train"][0][:0], splits["train"][1][:0])
    for role, src in chosen.items():
        splits[role], origins[role] = held[src] if src != "carve" else (empty, "carve")
    unused = sorted(present - set(chosen.values()))
    for u in unused:
        logger.warning("%s: %s plays no role (prepare.roles) and is left out", source, u)
    return unused


def prepare(source: Path | None, out_dir: Path, report_path: Path, params: PrepareParams) -> dict:
    """Read `source` (default: `prepare.source`), a CSV or image-folder tree; write
    out_dir/{train,val,test}.npz and a report.

    Returns the report: source, kind, per split the origin, per-class counts and
    total, the carved splits, the unused held-out splits and the skipped rows.
    Raises PrepareError naming the file and line (or path) on bad input;
    nothing is written then.
    """
    source = Path(source if source is not None else params.source)
    out_dir, report_path = Path(out_dir), Path(report_path)
    kind = _detect_kind(source, params.format)
    if _inside(source, out_dir) is not None:
        raise PrepareError(f"{out_dir}: output folder contains the source {source}")
    skips = Skips(params.on_bad_row)
    if kind == "csv":
        splits = read_csv(source, params.chunk_rows, skips)
        origins = {s: u for u, s in zip(USAGES, SPLITS, strict=True)}
    else:
        splits, origins = read_folder(source, skips)
    unused = _assign_roles(source, splits, origins, params.roles)
    carved = _carve_missing(source, splits, params)
    for s in carved:
        origins[s] = "carved from train"
    report = {
        "source": str(source),
        "kind": kind,
        "splits": {s: _split_summary(splits[s][1], origins[s]) for s in SPLITS},
        "carved": carved,
        "unused": unused,
        "skipped": {"count": skips.count, "first": skips.first},
        "params": params.model_dump(),
    }
    _write_outputs(out_dir, report_path, splits, report)
    logger.info(
        "prepared %s: %s", source, ", ".join(f"{s} {report['splits'][s]['total']}" for s in SPLITS)
    )
    return report
