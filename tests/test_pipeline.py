"""End to end through DVC on a tiny config: caching, selective reruns, validation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@example.invalid")
TINY = {
    "synthesize": {"n_samples": 420},
    "svm": {"max_iter": 500, "pca_components": 64},  # 290 training faces
    # a 2-step model is barely trained; int8 parity is tested on a trained model in test_export
    "export": {"max_int8_drop": 100.0, "latency_runs": 5, "representative_samples": 20},
    "finetune": {
        "phases": {
            "top": {
                "after": "base",
                "unfreeze": "top",
                "epochs": 1,
                "batch_size": 32,
                "steps_per_epoch": 2,
                "deterministic": True,
                "on_collapse": "warn",
            },
            "block7": {
                "after": "top",
                "unfreeze": "block7",
                "epochs": 1,
                "batch_size": 32,
                "steps_per_epoch": 2,
                "learning_rate": 0.0005,
                # the fer2013-cpu preset's schedule for its last phase
                "lr_schedule": "cosine",
                "lr_horizon": 2,
                "lr_min": 0.00001,
                "unfreeze_bn": True,
                "label_smoothing": 0.1,
                "shift": 0.1,
                "rotate": 10,
                "zoom": 0.1,
                "deterministic": True,
                "on_collapse": "warn",
            },
        },
        "final": "block7",
    },
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and k != "phases" else v
    return out


class Repo:
    def __init__(self, path: Path):
        self.path = path
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            args, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=1200
        )
        if check and r.returncode != 0:
            raise AssertionError(f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def ran(self, r: subprocess.CompletedProcess) -> set[str]:
        return {
            line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage")
        }

    def changed(self) -> set[str]:
        return set(json.loads(self.dvc("status", "--json").stdout)) - {"validate"}

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, data: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def restore(self, params: dict, lock: bytes) -> None:
        """Back to a finished run: its params and dvc.lock, outputs from DVC's cache.

        `dvc checkout`, not `dvc repro`: phases keep persistent checkpoints, which DVC's
        run-cache leaves out, so a repro would train them again.
        """
        self.set_params(params)
        (self.path / "dvc.lock").write_bytes(lock)
        self.dvc("checkout", "--force")
        assert self.changed() == set()


def tiny_project(path: Path, overrides: dict) -> Repo:
    """A committed git + DVC copy of the pipeline with params.yaml shrunk by `overrides`."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(
        ROOT / "fer_tasks", path / "fer_tasks", ignore=shutil.ignore_patterns("__pycache__")
    )
    repo = Repo(path)
    repo.set_params(_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides))
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    repo.dvc("config", "core.analytics", "false")
    # dvclive and DVC experiments need a repository with at least one commit
    repo.run("git", "add", "-A")
    repo.run("git", *IDENTITY, "commit", "-qm", "tiny project")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    repo = tiny_project(tmp_path_factory.mktemp("project"), TINY)
    first = repo.dvc("repro")
    repo.first_run = repo.ran(first)
    repo.lock = (repo.path / "dvc.lock").read_bytes()
    return repo


def test_full_run_then_nothing_to_do(repo):
    assert {
        "synthesize",
        "prepare",
        "rebalance",
        "backbone",
        "features",
        "svm",
        "base",
        "phase@top",
        "phase@block7",
    } <= repo.first_run
    second = repo.dvc("repro")
    assert repo.ran(second) == set(), second.stdout
    assert (repo.path / "reports" / "svm" / "metrics.json").is_file()


def test_rebalance_edit_reruns_only_dependents(repo):
    original = repo.params()
    repo.set_params(_merge(original, {"rebalance": {"method": "oversample"}}))
    try:
        ran = repo.ran(repo.dvc("repro"))
        assert {"rebalance", "phase@top", "phase@block7"} <= ran
        assert not ran & {"synthesize", "prepare", "features", "svm", "backbone", "base"}
    finally:
        repo.restore(original, repo.lock)


def test_svm_c_edit_reruns_svm_and_summary_alone(repo):
    original = repo.params()
    repo.set_params(_merge(original, {"svm": {"C": 0.5}}))
    try:
        # what dvc repro ran, not `dvc status` (which never lists downstream stages)
        assert repo.ran(repo.dvc("repro")) - {"validate"} == {"svm", "summary"}
    finally:
        repo.restore(original, repo.lock)


def _append_comment(path: Path):
    text = path.read_text()
    path.write_text(text + "\n# an edit\n")
    return text


@pytest.mark.parametrize(
    ("module", "phases_stale", "only"),
    [
        ("lib/model.py", True, None),
        ("lib/data.py", True, None),
        ("lib/classifiers.py", False, {"export"}),  # export scores its TFLite models with it
        ("tools/predict.py", False, set()),  # a user tool: no stage imports it
    ],
)
def test_code_edit_marks_exactly_the_stages_that_import_it(repo, module, phases_stale, only):
    path = repo.path / "fer_tasks" / module
    text = _append_comment(path)
    try:
        changed = repo.changed()
        phases = {s for s in changed if s.startswith("phase@")}
        assert phases == ({"phase@top", "phase@block7"} if phases_stale else set()), changed
        if only is not None:
            assert changed == only
    finally:
        path.write_text(text)


def _state(repo: Repo, phase: str) -> dict:
    return json.loads((repo.path / "models" / "phases" / phase / "state.json").read_text())


def test_pushed_run_travels_to_a_fresh_clone_and_extends_there(repo, tmp_path):
    remote = tmp_path / "remote"
    repo.dvc("remote", "add", "-f", "-d", "shared", str(remote))
    repo.run("git", "add", "-A")
    repo.run("git", *IDENTITY, "commit", "-qm", "a finished run")
    repo.dvc("push")

    clone = Repo(tmp_path / "clone")
    repo.run("git", "clone", "-q", str(repo.path), str(clone.path))
    clone.dvc("pull")
    assert json.loads(clone.dvc("status", "--json").stdout) == {}
    nothing = clone.dvc("repro")
    assert clone.ran(nothing) == set(), nothing.stdout

    # one more epoch for the last phase (cosine, as the preset): it resumes from the
    # pulled checkpoint
    params = clone.params()
    params["finetune"]["phases"]["block7"]["epochs"] = 2
    clone.set_params(params)
    r = clone.dvc("repro")
    log = r.stdout + r.stderr
    assert clone.ran(r) - {"validate"} == {
        "phase@block7",
        "calibrate",
        "evaluate",
        "summary",
        "export",
    }
    assert "phase block7: resuming from checkpoint at epoch 2 (target 3)" in log
    assert "phase block7: epochs 3-3 of 3" in log  # exactly one epoch trained
    extended = _state(clone, "block7")

    # a straight two-epoch run of the same phase, from scratch, in the first project
    original = repo.params()
    straight_params = json.loads(json.dumps(original))
    straight_params["finetune"]["phases"]["block7"]["epochs"] = 2
    repo.set_params(straight_params)
    shutil.rmtree(repo.path / "models" / "checkpoints" / "block7")
    try:
        r = repo.dvc("repro", "phase@block7")
        assert "phase block7: epochs 2-3 of 3" in r.stdout + r.stderr
        straight = _state(repo, "block7")
    finally:
        repo.restore(original, repo.lock)
    assert [h["epoch"] for h in extended["history"]] == [1, 2, 3]
    assert abs(extended["val_loss"] - straight["val_loss"]) < 1e-4
    assert abs(extended["val_accuracy"] - straight["val_accuracy"]) < 1e-4


def test_sigkill_of_fer_phase_under_dvc_repro_then_resume(tmp_path):
    import signal
    import time

    cfg = json.loads(json.dumps(TINY))
    top = cfg["finetune"]["phases"]["top"]
    top.update({"unfreeze": "block5", "epochs": 5})
    del top["steps_per_epoch"]  # whole epochs: a window to kill in
    proj = tiny_project(tmp_path / "kill", cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "phase@top"],
        cwd=proj.path,
        env=proj.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # dvc and the `fer phase` it runs: one process group
    )
    meta = proj.path / "models" / "checkpoints" / "top" / "last" / "ckpt.json"
    deadline = time.monotonic() + 900
    while not meta.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the next epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(meta.read_text())["epoch"]
    assert 1 <= done < 5, "the phase finished before the kill: make its epochs longer"
    assert not (proj.path / "models" / "phases" / "top" / "model.keras").exists()

    r = proj.dvc("repro", "phase@top")
    assert "phase@top" in proj.ran(r)
    assert f"phase top: resuming from checkpoint at epoch {done} (target 5)" in r.stdout + r.stderr
    resumed = _state(proj, "top")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]

    # an unkilled run of the same stage gives the same result
    shutil.rmtree(proj.path / "models" / "checkpoints" / "top")
    r = proj.dvc("repro", "--force", "--single-item", "phase@top")
    assert "phase top: epochs 1-5 of 5" in r.stdout + r.stderr
    assert abs(_state(proj, "top")["val_loss"] - resumed["val_loss"]) < 1e-4


def test_second_phase_learning_rate_reruns_it_and_later_only(repo):
    original = repo.params()
    edited = json.loads(json.dumps(original))
    edited["finetune"]["phases"]["block7"]["learning_rate"] = 0.0001
    repo.set_params(edited)
    try:
        assert repo.changed() == {"phase@block7"}
        ran = repo.ran(repo.dvc("repro"))
        assert ran - {"validate"} == {"phase@block7", "calibrate", "evaluate", "summary", "export"}
    finally:
        repo.restore(original, repo.lock)


def test_typo_in_params_fails_even_when_all_cached(repo):
    original = repo.params()
    edited = json.loads(json.dumps(original))
    edited["rebalance"]["methd"] = "x"
    repo.set_params(edited)
    try:
        r = repo.dvc("repro", check=False)
        assert r.returncode != 0
        assert "rebalance.methd: unknown key" in r.stdout + r.stderr
        assert repo.ran(r) == {"validate"}
    finally:
        repo.set_params(original)
    # the restored file is the one dvc.lock recorded: nothing at all runs
    assert repo.ran(repo.dvc("repro")) == set()


def test_adding_a_third_phase_runs_only_it(repo):
    edited = repo.params()
    edited["finetune"]["phases"]["all"] = {
        "after": "block7",
        "unfreeze": "all",
        "epochs": 1,
        "batch_size": 32,
        "steps_per_epoch": 2,
        "learning_rate": 0.0001,
        "on_collapse": "warn",
    }
    edited["finetune"]["final"] = "all"
    repo.set_params(edited)
    r = repo.dvc("repro")
    assert repo.ran(r) - {"validate", "calibrate", "evaluate", "summary", "export"} == {"phase@all"}
    state = json.loads((repo.path / "models/phases/all/state.json").read_text())
    assert (state["epoch_start"], state["epoch_end"]) == (2, 3)
