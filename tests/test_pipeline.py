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
                "on_collapse": "warn",
            },
            "block7": {
                "after": "top",
                "unfreeze": "block7",
                "epochs": 1,
                "batch_size": 32,
                "steps_per_epoch": 2,
                "learning_rate": 0.0005,
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
    identity = ("-c", "user.name=t", "-c", "user.email=t@example.invalid")
    repo.run("git", *identity, "commit", "-qm", "tiny project")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    repo = tiny_project(tmp_path_factory.mktemp("project"), TINY)
    first = repo.dvc("repro")
    repo.first_run = repo.ran(first)
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
        repo.set_params(original)
        repo.dvc("repro")  # back to the committed state (restored from DVC's run cache)


def test_svm_c_edit_reruns_svm_alone(repo):
    original = repo.params()
    repo.set_params(_merge(original, {"svm": {"C": 0.5}}))
    try:
        assert repo.changed() == {"svm"}
    finally:
        repo.set_params(original)


def test_second_phase_learning_rate_reruns_it_and_later_only(repo):
    original = repo.params()
    edited = json.loads(json.dumps(original))
    edited["finetune"]["phases"]["block7"]["learning_rate"] = 0.0001
    repo.set_params(edited)
    try:
        assert repo.changed() == {"phase@block7"}
        ran = repo.ran(repo.dvc("repro"))
        assert ran - {"validate"} == {"phase@block7", "evaluate", "summary", "export"}
    finally:
        repo.set_params(original)
        repo.dvc("repro")


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
    assert repo.ran(r) - {"validate", "evaluate", "summary", "export"} == {"phase@all"}
    state = json.loads((repo.path / "models/phases/all/state.json").read_text())
    assert (state["epoch_start"], state["epoch_end"]) == (2, 3)
