"""Every study script runs in --quick mode and writes its outputs."""

import csv
import importlib.util
import math
from pathlib import Path

STUDIES = Path(__file__).parent.parent / "studies"


def load(name):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_horizon_bias_quick_writes_a_row_per_method_and_batch(tmp_path, capsys):
    load("short_horizon_bias").main(["--quick", "--out", str(tmp_path)])
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["batch_size"], row["method"]) for row in rows} == {
        (batch, method) for batch in ("32", "512") for method in load("short_horizon_bias").methods()
    }
    fixed = [row for row in rows if row["method"] == "SGD fixed lr 1e-3"]
    assert all(float(row["lr_end"]) == 1e-3 for row in fixed)
    assert (tmp_path / "learning_rates.png").stat().st_size > 10_000
    assert "| batch | method |" in capsys.readouterr().out


def test_vs_optuna_quick_writes_a_verdict_per_task_and_sampler(tmp_path, capsys):
    rows = load("vs_optuna").main(["--quick", "--out", str(tmp_path)])
    assert {(row["task"], row["versus"]) for row in rows} == {
        (task, sampler) for task in ("digits", "mnist1d") for sampler in ("grid", "random", "tpe")}
    for row in rows:  # one run of 150 steps against 16 trials of 150 steps
        assert row["evaluation_ratio"] == 1 / 16
        assert math.isfinite(row["loss_ratio"]) and row["loss_ratio"] > 0
    assert (tmp_path / "verdict.md").read_text().startswith("| task |")
    assert (tmp_path / "digits-sgd" / "optuna.db").exists()
    assert "target met" in capsys.readouterr().out


def test_ultimate_optimizer_quick_reports_stacks_and_sensitivity(tmp_path):
    stack_rows, sensitivity = load("ultimate_optimizer").main(["--quick", "--out", str(tmp_path)])
    assert [row["stack"] for row in stack_rows][:2] == ["SGD", "SGD/SGD"]
    assert len(sensitivity) == 4 * 8
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    with open(tmp_path / "sensitivity.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 32


def test_depth_sweep_quick_measures_every_depth(tmp_path):
    rows = load("depth_sweep").main(["--quick", "--out", str(tmp_path)])
    assert [row["depth"] for row in rows] == [0, 1, 2, 4, 8]
    assert all(math.isfinite(row["valid_loss"]) and row["ms_per_step"] > 0 for row in rows)
    assert (tmp_path / "depth_sweep.png").stat().st_size > 10_000
