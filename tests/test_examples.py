"""Every script in examples/ runs (quick settings) and does what it says."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert sorted(path.stem for path in EXAMPLES.glob("*.py")) == ["custom_optimizer", "ddp", "fsdp", "hf_trainer",
                                                                    "learned_optimizer", "lightning_module",
                                                                    "meta_training", "own_model_vs_optuna",
                                                                    "train_loop"]  # (hf_trainer: test_transformers.py)


def test_the_lightning_module_learns_its_lr_and_logs_it_every_step(tmp_path, capsys):
    learned, valid_loss = load("lightning_module").main(["--steps", "100", "--out", str(tmp_path)])
    assert len(learned) == 100 and learned[-1] > 5 * learned[0] and valid_loss < 0.5
    assert "metrics.csv" in capsys.readouterr().out


def test_own_model_vs_optuna_compares_on_equal_budgets(tmp_path, capsys):
    rows = load("own_model_vs_optuna").main(["--quick", "--out", str(tmp_path)])
    spent = {row["method"]: row["gradient_evaluations"] for row in rows}
    assert spent == {"recommended": 40, "Adam depth 1": 40, "grid": 160, "random": 160, "tpe": 160}
    losses = {row["method"]: row["loss"] for row in rows}
    assert all(losses[name] < 0.69 for name in ("recommended", "Adam depth 1"))  # (chance: log 2 = 0.693)
    assert all(losses[name] < 0.1 for name in ("grid", "random", "tpe"))  # (their best lr learns it in 40 steps)
    assert "| grid |" in capsys.readouterr().out and (tmp_path / "summary.md").exists()


def test_train_loop_learns_the_rate(capsys):
    learned, valid_loss = load("train_loop").main(["--steps", "150"])
    assert learned[-1] > 10 * learned[0] and valid_loss < 0.5
    assert "validation loss" in capsys.readouterr().out


def test_custom_optimizer_works_as_a_level():
    start, end, values = load("custom_optimizer").main()
    assert end < 0.1 * start and values["0.lr"] != 1e-3 and values["1.lr"] != 0.05


def test_meta_training_learns_a_rate_that_transfers():
    learned, before, after = load("meta_training").main(["--tasks", "3"])
    assert learned > 2e-3 and after < before


def test_the_learned_optimizer_example_trains_saves_and_reloads_an_lstm(tmp_path, capsys):
    results = load("learned_optimizer").main(["--meta-steps", "60", "--out", str(tmp_path / "lstm.pt")])
    assert results["LSTM, meta-trained (loaded back)"] < results["LSTM before meta-training"] - 0.3
    assert (tmp_path / "lstm.pt").exists() and "Adam (lr 0.1)" in capsys.readouterr().out


def run_under_torchrun(script, *args):
    """``torchrun --nproc_per_node 2 examples/<script> args``, once more where
    a rank aborted at gloo's tear-down after the run had finished."""
    import os
    import socket
    import subprocess
    import sys
    import warnings

    def launch():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), str(EXAMPLES / script),
                               *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash prints every thread's stack

    done = launch()
    if done.returncode != 0 and "2 process(es)" in done.stdout and "SIGABRT" in done.stderr:
        # The run finished and printed its result, then a rank aborted while
        # gloo was torn down (PyTorch; seen once in many full-suite runs,
        # never alone). Say so, and run it once more.
        warnings.warn(f"examples/{script} aborted at gloo tear-down after finishing:\n{done.stderr[-3000:]}")
        done = launch()
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_ddp_runs_under_torchrun_on_two_processes():
    assert "2 process(es): lr" in run_under_torchrun("ddp.py", "--steps", "60")


def test_fsdp_learns_its_lr_on_sharded_parameters_and_saves_the_run(tmp_path):
    import re

    out = run_under_torchrun("fsdp.py", "--steps", "60", "--out", str(tmp_path))
    lr, valid_loss = map(float, re.search(r"2 process\(es\), fully_shard: lr ([\d.]+), validation loss ([\d.]+)",
                                          out).groups())
    assert lr > 2e-3 and valid_loss < 0.5  # (from the default lr 1e-3; the untrained network's loss is 2.3)
    assert {path.name for path in tmp_path.iterdir()} == {"model", "optimizer"}
    assert len(list((tmp_path / "optimizer").glob("*.distcp"))) == 2  # (each rank wrote its shards)