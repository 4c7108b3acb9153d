"""Small I/O helpers shared by the stages: atomic outputs and split arrays.

Every output goes through `atomic_path`: the new file or directory is written
in the DVC repository's scratch folder (`.dvc/tmp/fer-atomic`, or beside its
final path outside a repository), fsync'ed, then swapped in with one rename. Directories
are swapped with Linux's `renameat2(RENAME_EXCHANGE)`, so the final path never
goes missing; where that call is unavailable the old directory is renamed aside
first, and the next write of the same output restores it if a kill came in
between. Outputs that belong together (a model and its state, the rebalanced
training set and its class weights) live in one directory swapped as a whole,
so a later stage never reads a new file beside an old one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_tasks import IMAGE_SIZE, NUM_CLASSES
from fer_tasks.lib.errors import InputError, MissingInput

log = logging.getLogger(__name__)

# temporary siblings of an output `x`: `.x.tmp-*` (being written) and `.x.old-*`
# (the previous version, renamed aside); a killed run leaves them behind
_TMP, _OLD = ".tmp-", ".old-"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (AttributeError, OSError):  # not Linux, or a libc without it (glibc < 2.28)
    _renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # e.g. a file system without RENAME_EXCHANGE
    raise OSError(err, f"cannot swap {b} with its new version: {os.strerror(err)}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too, on POSIX
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory under a directory (itself included)."""
    if path.is_dir() and not path.is_symlink():
        for parent, _dirs, files in os.walk(path):
            for name in files:
                p = Path(parent, name)
                if not p.is_symlink():
                    _fsync(p)
            _fsync(Path(parent))
    else:
        _fsync(path)


def _siblings(final: Path, tag: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}{tag}*"), key=lambda p: p.stat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(final: str | Path) -> None:
    """Undo what a killed write of `final` left: restore an old version renamed
    aside when `final` is missing, and remove temporary siblings.

    One writer per output is assumed (DVC's repository lock gives that), so
    every sibling found here is a leftover, not another run's work in progress.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    old = _siblings(final, _OLD)
    if old and not os.path.lexists(final):
        os.rename(old[-1], final)
        log.warning("%s: restored the previous version (a killed run had moved it aside)", final)
        old = old[:-1]
    debris = _siblings(final, _TMP) + old
    for p in debris:
        _remove(p)
    if debris:
        log.info("%s: removed %d leftover(s) of a killed run", final, len(debris))


def _publish(new: Path, final: Path) -> None:
    """Move `new` to `final`; `final` names the old or the new version at every instant
    except in the rename-aside fallback, which `recover` repairs."""
    replacing_dir = final.is_dir() and not final.is_symlink()
    if not replacing_dir:
        os.replace(new, final)  # atomic for a file over a file (or over nothing)
    elif new.is_dir() and _exchange(new, final):
        pass  # `new` now holds the old directory; the caller deletes it
    else:
        aside = final.with_name(f".{final.name}{_OLD}{secrets.token_hex(4)}")
        os.rename(final, aside)
        os.rename(new, final)
        _remove(aside)
    _fsync(final.parent)


SCRATCH = Path(".dvc") / "tmp" / "fer-atomic"  # under a DVC repository's root


def _scratch(final: Path) -> Path | None:
    """The DVC repository's scratch folder for `final`'s temporaries, if `final` is in
    one and on the same file system (a rename cannot cross file systems); else None.

    Temporaries there are named `<pid>-...`: once that process is gone, the next
    write anywhere in the repository removes them, even when the killed stage
    itself never runs again (DVC may restore it from its run-cache instead).
    """
    for root in final.resolve().parents:
        if (root / ".dvc").is_dir():
            scratch = root / SCRATCH
            scratch.mkdir(parents=True, exist_ok=True)
            if scratch.stat().st_dev != final.parent.stat().st_dev:
                return None
            for entry in scratch.iterdir():
                pid = entry.name.split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    _remove(entry)
                    log.info("%s: removed a leftover of killed process %s", entry, pid)
            return scratch
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path; swap it in for `final` only on success.

    Works for files and directories. On success the new content is fsync'ed
    before the swap and the parent directory after it. An exception leaves
    `final` untouched and removes the temporary path. Inside a DVC repository
    the temporary is in its scratch folder (`_scratch`), elsewhere beside
    `final`; a kill leaves it behind until the next write removes it (see
    `_scratch` and `recover`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    scratch = _scratch(final)
    if scratch is not None:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{final.name}.", dir=scratch))
    else:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}{_TMP}", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"{final}: nothing was written to {tmp}")
        fsync_tree(tmp)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_group(directory: str | Path) -> Iterator[Path]:
    """Files that belong together, published in one swap of their `directory`.

    Yields an empty temporary directory to write them into. Entries of the
    existing `directory` that the block does not write (another stage's output
    in the same folder) are carried over, by hard link where possible, so the
    swap replaces the group and nothing else. A reader never sees a new file
    beside an old one.
    """
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        yield tmp
        if directory.is_dir() and not directory.is_symlink():
            for entry in directory.iterdir():
                dst = tmp / entry.name
                if os.path.lexists(dst):
                    continue
                if entry.is_symlink():
                    os.symlink(os.readlink(entry), dst)
                elif entry.is_dir():
                    shutil.copytree(entry, dst, symlinks=True)
                else:
                    try:
                        os.link(entry, dst)
                    except OSError:
                        shutil.copy2(entry, dst)


@contextlib.contextmanager
def atomic_files(*finals: str | Path) -> Iterator[list[Path]]:
    """Temporary paths for files that belong together; those sharing a directory
    are published in one `atomic_group` swap of it, and nothing is published
    unless the whole block succeeds."""
    finals_ = [Path(f) for f in finals]
    with contextlib.ExitStack() as stack:
        tmp = {
            parent: stack.enter_context(atomic_group(parent))
            for parent in dict.fromkeys(f.parent for f in finals_)
        }
        yield [tmp[f.parent] / f.name for f in finals_]


def save_model(model, path: str | Path) -> None:
    """`model.save(path)` with no volatile metadata: the same model gives the same bytes.

    Keras writes the save time into the archive's metadata.json, a timestamp on
    every zip entry, and, for an object shared by several layers (a dtype policy),
    its Python `id()` as `shared_object_id` in config.json; so an unchanged model
    got a new hash on every save and made DVC rerun everything downstream. All
    three are fixed here (the ids are renumbered in order of appearance, which
    keeps what is shared with what); the HDF5 weights are a function of the model.
    """
    path = Path(path)
    raw = path.with_name(f".raw.{path.name}")
    model.save(raw)
    try:
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = stable_config(data)
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
                dst.writestr(fixed, data)
    finally:
        raw.unlink(missing_ok=True)


def stable_config(data: bytes) -> bytes:
    """A Keras config.json with `shared_object_id`s renumbered 1, 2, ... in order of
    appearance (Keras writes `id(obj)`, a memory address); unchanged if it has none."""
    if b"shared_object_id" not in data:
        return data
    ids: dict[int, int] = {}

    def walk(node):
        if isinstance(node, dict):
            return {
                k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return json.dumps(walk(json.loads(data))).encode()


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def save_split(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split as an .npz with uint8 `images` (N, 48, 48) and int64 `labels` (N,)."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(
            f"{path}: images must be uint8 (N, H, W), got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels):
        raise InputError(f"{path}: {len(images)} images but {len(labels)} labels")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images, labels=labels.astype(np.int64))


def load_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a split: uint8 images (N, 48, 48) and int64 labels in 0..6.

    Raises FileNotFoundError for a missing file and ValueError naming the file
    for anything else that is not such a split.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: split file not found")
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a split .npz with images and labels ({err})") from None
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(
            f"{path}: images must be uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{path}: {len(images)} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got {labels.dtype}")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise InputError(
            f"{path}: {int(bad.sum())} labels outside 0..{NUM_CLASSES - 1} "
            f"(first: {int(labels[bad][0])} at index {int(np.flatnonzero(bad)[0])})"
        )
    return images, labels.astype(np.int64)
