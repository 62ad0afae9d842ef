"""The command line: the demo writes its files, errors are one line."""

import csv
import json
import math

import pytest

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
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| method | final loss: geometric mean over tasks")  # (as the ratio beside it)
    assert config["methods"]["SGD depth 2"] in summary  # (what each row ran, in both)
    assert 'rc.SGD(0.05, normalize="rms")' in config["methods"]["SGD depth 2"]


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


def test_compare_help_says_where_a_quick_run_writes(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "with -quick after it for --quick" in " ".join(capsys.readouterr().out.split())


def test_graph_describes_and_draws_a_tower(tmp_path, capsys):
    assert main(["graph", "adam:1e-3", "sgd:1e-2", "sgd:1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "model_opt/2: rc.SGD(lr=0.001) steps model_opt/1.hyper" in printed
    assert "steps model (1 value in 1 tensor)" in printed
    assert main(["graph", "sgd:0.1", "--tie", "3", "--format", "dot", "--out", str(tmp_path / "t.dot")]) == 0
    assert "style=dashed" in (tmp_path / "t.dot").read_text()
    assert main(["graph", "adam:1e-3", "sgd:1e-2", "--format", "png", "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 5_000
    assert main(["graph", "lbfgs:1"]) == 1
    assert "unknown optimizer 'lbfgs'" in capsys.readouterr().err


def test_run_forwards_options_to_a_study(tmp_path, capsys):
    assert main(["run", "precision", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "metrics.csv").exists() and "sqrt(eps)" in capsys.readouterr().out
    assert main(["run", "nosuch"]) == 1
    assert "unknown study 'nosuch'" in capsys.readouterr().err


def test_the_main_job_runs_end_to_end_within_two_minutes(tmp_path):
    import subprocess
    import sys
    import time

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "recurse", "demo", "--quiet", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 120
    for name in ("config.json", "metrics.csv", "summary.md", "demo.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| SGD depth 2 |" in done.stdout
