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
