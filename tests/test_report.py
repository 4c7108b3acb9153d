import json

from fer_tasks.tools.report import metrics_table


def test_metrics_table_lists_configured_phases_in_order(tmp_path):
    def put(rel, obj):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    put(
        "svm/metrics.json",
        {"val": {"accuracy": 0.5, "macro_f1": 0.4}, "test": {"accuracy": 0.45, "macro_f1": 0.35}},
    )
    for name, step, acc in (("top", 2, 0.6), ("block5", 5, 0.7), ("stale", 9, 0.1)):
        put(
            f"phases/{name}/metrics.json",
            {"val": {"accuracy": acc, "loss": 1.0}, "val_macro_f1": acc - 0.1, "step": step},
        )
    put("evaluate/metrics.json", {"accuracy": 0.68, "macro_f1": 0.61})
    lines = metrics_table(tmp_path, ["top", "block5"]).splitlines()
    names = [line.split("  ")[0].strip() for line in lines[2:]]
    assert names == [
        "svm baseline (val)",
        "svm baseline (test)",
        "phase@top (val)",
        "phase@block5 (val)",
        "final model (test)",
    ]
    assert "0.6800" in lines[-1] and "stale" not in "\n".join(lines)


def test_metrics_table_before_any_run(tmp_path):
    assert "dvc repro" in metrics_table(tmp_path, ["top"])


def _pictures(root):
    from fer_tasks.lib.reports import PICTURES

    folder = root / "reports" / "evaluate"
    folder.mkdir(parents=True)
    for i, (_, rel) in enumerate(PICTURES[:2]):  # the third is missing
        (root / "reports" / rel).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 20)
    return PICTURES


def test_pictures_are_embedded_as_data_uris_and_missing_ones_left_out(tmp_path):
    import base64
    import re

    from fer_tasks.lib.reports import pictures_markdown

    assert pictures_markdown(tmp_path) == []  # nothing yet: no section
    pictures = _pictures(tmp_path)
    md = "\n".join(pictures_markdown(tmp_path))
    uris = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert [t for t, _ in uris] == [pictures[0][0], pictures[1][0]]
    for (_, rel), (_, data) in zip(pictures, uris, strict=False):
        assert base64.b64decode(data) == (tmp_path / "reports" / rel).read_bytes()
    assert pictures[2][1] not in md


def test_flow_report_shows_the_workspace_pictures_but_not_for_an_experiment(tmp_path):
    from flows.pipeline import render_report

    _pictures(tmp_path)
    summary = {"stages": [], "metrics": {}, "workspace": str(tmp_path)}
    assert "data:image/png;base64," in render_report(summary)
    # an experiment's outputs are in its commit, not in the workspace: no pictures
    assert "data:image/png" not in render_report({**summary, "experiment": "exp-1"})
    # a workspace run shared as an experiment (share=origin) shows the workspace's
    shared = {**summary, "experiment": "host-a", "pictures": "workspace"}
    assert "data:image/png;base64," in render_report(shared)
    # a sweep: several experiments, none of them the workspace's pictures
    assert "data:image/png" not in render_report({**summary, "pictures": None})


def test_flow_report_reads_an_experiments_pictures_from_its_commit(tmp_path, monkeypatch):
    import flows.pipeline as pipeline

    pictures = _pictures(tmp_path / "exp")  # stand-ins for the experiment's files
    asked = []

    def experiment_files(workspace, name, mode="r"):
        asked.append((workspace, name, mode))

        def read(rel):
            path = tmp_path / "exp" / rel
            return path.read_bytes() if path.is_file() else None

        return read

    monkeypatch.setattr(pipeline, "experiment_files", experiment_files)
    summary = {"stages": [], "metrics": {}, "workspace": str(tmp_path), "experiment": "svm-c05"}
    md = pipeline.render_report({**summary, "pictures": "svm-c05"})
    assert asked == [(tmp_path, "svm-c05", "rb")]
    assert md.count("data:image/png;base64,") == 2  # the two pictures the experiment has
    assert pictures[2][1] not in md
