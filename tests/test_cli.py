"""The command line: the demo writes its files, errors are one line."""

import csv
import json

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
