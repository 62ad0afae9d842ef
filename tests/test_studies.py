"""Every study script runs in --quick mode and writes its outputs."""

import csv
import importlib.util
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
