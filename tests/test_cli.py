"""The command line: the demo writes its files, errors are one line."""

import csv
import json
import math

from recurse.cli import main


def test_demo_writes_table_config_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--tasks", "2", "--steps", "30", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| SGD depth 2 |" in printed and "wrote" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["tasks"] == 2 and config["steps"] == 30
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(config["methods"]) * 2 * 30
    assert (out / "demo.png").stat().st_size > 10_000
    assert (out / "summary.md").read_text().startswith("| method |")


def test_bad_device_is_a_one_line_error(capsys):
    assert main(["demo", "--device", "nonsense", "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("recurse: error: unknown --device 'nonsense'") and "\n" not in error


def test_compare_quick_prints_the_table_and_writes_finite_results(tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--task", "digits", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    methods = ["fixed", "depth1", "depth2", "unroll10", "grid", "random", "tpe"]
    for method in methods:
        assert f"| {method} |" in printed
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == methods
    for row in rows:
        assert math.isfinite(float(row["valid_loss_mean"])) and 0 <= float(row["valid_accuracy_mean"]) <= 1
    for plot in ("loss_vs_evaluations.png", "hyperparameters.png", "optuna_history_grid.png",
                 "optuna_history_random.png", "optuna_history_tpe.png"):
        assert (out / plot).stat().st_size > 10_000, plot


def test_search_and_compare_reject_unknown_names(capsys):
    assert main(["compare", "--methods", "depth2", "bayes", "--quiet"]) == 1
    assert "unknown method 'bayes'" in capsys.readouterr().err
    assert main(["search", "--storage", "nosuchdriver://x", "--trials", "1"]) == 1
    assert "cannot open Optuna storage 'nosuchdriver://x'" in capsys.readouterr().err
