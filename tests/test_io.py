"""Atomic outputs: no window where an output is missing or mixed, and no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fer_tasks.lib import io


def _write_dir(path: Path, **files: str) -> None:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)


def _read_dir(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_directory_swap_replaces_the_contents_and_leaves_nothing_beside(tmp_path) -> None:
    final = tmp_path / "out"
    with io.atomic_path(final) as tmp:
        _write_dir(tmp, a="1", b="1")
    with io.atomic_path(final) as tmp:
        _write_dir(tmp, a="2")
    assert _read_dir(final) == {"a": "2"}  # b is gone: the directory is replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_reader_never_finds_the_directory_missing_or_mixed(tmp_path) -> None:
    final = tmp_path / "pair"
    with io.atomic_path(final) as tmp:
        _write_dir(tmp, model="0", state="0")
    seen: list[object] = []
    stop = threading.Event()

    def read_pair() -> dict[str, str] | None:
        # a reader of a pair opens the directory once and reads both files from it
        fd = os.open(final, os.O_RDONLY)  # FileNotFoundError here: the output was missing
        try:
            out = {}
            for name in ("model", "state"):
                try:
                    f = os.open(name, os.O_RDONLY, dir_fd=fd)
                except FileNotFoundError:
                    return None  # an old version, deleted once replaced: the reader retries
                out[name] = os.read(f, 100).decode()
                os.close(f)
            return out
        finally:
            os.close(fd)

    def reader() -> None:
        while not stop.is_set():
            try:
                files = read_pair()
            except FileNotFoundError as err:
                seen.append(err)
                continue
            if files is None:
                continue
            if len(set(files.values())) != 1 or len(files) != 2:
                seen.append(files)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 300):
            with io.atomic_path(final) as tmp:
                _write_dir(tmp, model=str(i), state=str(i))
    finally:
        stop.set()
        t.join()
    assert io._renameat2 is not None, "this test expects Linux's renameat2"
    assert seen == []
    assert _read_dir(final) == {"model": "299", "state": "299"}


def test_an_exception_leaves_the_old_output_and_no_temporary(tmp_path) -> None:
    final = tmp_path / "m.json"
    io.write_json(final, {"v": 1})
    with pytest.raises(RuntimeError), io.atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert io.read_json(final) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_writing_nothing_is_an_error_that_names_the_output(tmp_path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="out.txt: nothing was written"),
        io.atomic_path(tmp_path / "out.txt"),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_what_a_killed_run_left(tmp_path, caplog) -> None:
    final = tmp_path / "features"
    with io.atomic_path(final) as tmp:
        _write_dir(tmp, train="old")
    debris = [tmp_path / ".features.tmp-abc123", tmp_path / ".features.old-1f2e"]
    for d in debris:
        _write_dir(d, train="half")
    other = tmp_path / ".features-notes.tmp-x"  # another output's name: not ours to remove
    other.write_text("keep")
    with caplog.at_level("INFO", logger="fer_tasks.lib.io"), io.atomic_path(final) as tmp:
        _write_dir(tmp, train="new")
    assert not any(d.exists() for d in debris)
    assert other.read_text() == "keep"
    assert _read_dir(final) == {"train": "new"}
    assert "removed 2 leftover(s)" in caplog.text


def test_recover_is_quiet_when_there_is_nothing_to_do(tmp_path, caplog) -> None:
    io.write_json(tmp_path / "a.json", {})
    with caplog.at_level("INFO", logger="fer_tasks.lib.io"):
        io.recover(tmp_path / "a.json")
        io.recover(tmp_path / "missing" / "b.json")
    assert caplog.text == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


_KILL_IN_WINDOW = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from fer_tasks.lib import io

    io._exchange = lambda a, b: False  # force the rename-aside fallback
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the old directory is aside, the new one not yet in
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)

    io.os.rename = rename
    with io.atomic_path(Path(sys.argv[1])) as tmp:
        tmp.mkdir()
        (tmp / "model").write_text("new")
        (tmp / "state").write_text("new")
    """
)


def test_a_kill_in_the_rename_aside_window_keeps_the_old_output_readable(tmp_path) -> None:
    """The fallback (no RENAME_EXCHANGE) has a window: the old directory is aside
    and the new one not yet in. A SIGKILL there loses neither: the old version is
    whole and readable aside, and the next write of the output restores it first."""
    final = tmp_path / "pair"
    with io.atomic_path(final) as tmp:
        _write_dir(tmp, model="old", state="old")
    r = subprocess.run([sys.executable, "-c", _KILL_IN_WINDOW, str(final)], cwd=tmp_path)
    assert r.returncode == -signal.SIGKILL
    assert not final.exists()
    (aside,) = tmp_path.glob(".pair.old-*")
    assert _read_dir(aside) == {"model": "old", "state": "old"}
    assert len(list(tmp_path.glob(".pair.tmp-*"))) == 1  # the new one, never published

    io.recover(final)  # what the next run of the stage does before it writes
    assert _read_dir(final) == {"model": "old", "state": "old"}
    assert sorted(os.listdir(tmp_path)) == ["pair"]


def test_the_fallback_swap_without_a_kill_publishes_and_cleans_up(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    final = tmp_path / "pair"
    for v in ("1", "2"):
        with io.atomic_path(final) as tmp:
            _write_dir(tmp, model=v, state=v)
    assert _read_dir(final) == {"model": "2", "state": "2"}
    assert sorted(os.listdir(tmp_path)) == ["pair"]


def test_outputs_are_fsynced_before_they_are_published(tmp_path, monkeypatch) -> None:
    synced: list[str] = []
    real = io._fsync
    monkeypatch.setattr(io, "_fsync", lambda p: (synced.append(p.name), real(p)))
    published: list[list[str]] = []
    real_publish = io._publish
    monkeypatch.setattr(
        io,
        "_publish",
        lambda new, final: (published.append(list(synced)), real_publish(new, final)),
    )
    with io.atomic_path(tmp_path / "d") as tmp:
        _write_dir(tmp, a="1", b="2")
    assert {"a", "b", "d"} <= set(published[0])  # both files and the directory itself
    assert synced[-1] == tmp_path.name  # then the parent, after the rename


def test_a_group_replaces_its_files_together_and_keeps_the_folder_s_others(tmp_path) -> None:
    folder = tmp_path / "evaluate"
    with io.atomic_files(folder / "metrics.json", folder / "confusion.csv") as (m, c):
        m.write_text("1")
        c.write_text("1")
    (folder / "comparison.md").write_text("another stage's output")
    ino = (folder / "comparison.md").stat().st_ino
    with io.atomic_files(folder / "metrics.json", folder / "confusion.csv") as (m, c):
        m.write_text("2")
        c.write_text("2")
    assert _read_dir(folder) == {
        "comparison.md": "another stage's output",
        "confusion.csv": "2",
        "metrics.json": "2",
    }
    assert (folder / "comparison.md").stat().st_ino == ino  # carried over by hard link


def test_a_group_that_fails_halfway_publishes_none_of_its_files(tmp_path) -> None:
    a, b = tmp_path / "x" / "train.npz", tmp_path / "y" / "weights.json"
    with io.atomic_files(a, b) as (ta, tb):
        ta.write_text("old")
        tb.write_text("old")
    with pytest.raises(OSError), io.atomic_files(a, b) as (ta, tb):
        ta.write_text("new")
        raise OSError("disk full while writing the second file")
    assert (a.read_text(), b.read_text()) == ("old", "old")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["train.npz", "weights.json", "x", "y"]


def test_in_a_dvc_repository_temporaries_live_in_its_scratch_folder(tmp_path) -> None:
    (tmp_path / ".dvc").mkdir()
    final = tmp_path / "reports" / "svm"
    scratch = tmp_path / io.SCRATCH
    with io.atomic_path(final) as tmp:
        assert tmp.parent.parent == scratch  # not beside the output
        assert tmp.parent.name.startswith(f"{os.getpid()}-svm.")
        _write_dir(tmp, a="1")
    assert _read_dir(final) == {"a": "1"}
    assert list(scratch.iterdir()) == [] and os.listdir(final.parent) == ["svm"]


def test_the_next_write_anywhere_removes_what_a_killed_process_left(tmp_path, caplog) -> None:
    (tmp_path / ".dvc").mkdir()
    scratch = tmp_path / io.SCRATCH
    scratch.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now
    left = scratch / f"{dead.pid}-model.keras.x1"
    _write_dir(left, part="half")
    alive = scratch / f"{os.getppid()}-state.json.x2"  # a live process's work in progress
    _write_dir(alive, part="busy")
    with caplog.at_level("INFO", logger="fer_tasks.lib.io"):
        io.write_json(tmp_path / "elsewhere" / "m.json", {})  # another output altogether
    assert not left.exists() and alive.exists()
    assert f"leftover of killed process {dead.pid}" in caplog.text


def test_keras_shared_object_ids_are_renumbered_keeping_what_is_shared() -> None:
    import json

    def config(a: int, b: int) -> bytes:
        policy = {"class_name": "DTypePolicy", "shared_object_id": a}
        other = {"class_name": "DTypePolicy", "shared_object_id": b}
        return json.dumps({"layers": [{"dtype": policy}, {"dtype": policy}, {"dtype": other}]})

    first = io.stable_config(config(140132964534096, 140132964599999).encode())
    again = io.stable_config(config(140179135657936, 140179135600000).encode())
    assert first == again  # two saves of the same model: same bytes
    ids = [layer["dtype"]["shared_object_id"] for layer in json.loads(first)["layers"]]
    assert ids == [1, 1, 2]  # shared stays shared, distinct stays distinct
    plain = b'{"layers": []}'
    assert io.stable_config(plain) is plain
