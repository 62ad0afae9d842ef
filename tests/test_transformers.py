"""rc.HyperOptimizer under Hugging Face's Trainer (the ``transformers``
extra, installed with the test extras so that this runs in CI): Trainer's
schedules scale the learned lr, LearnedHyperparameters logs it, and a run
resumed from a Trainer checkpoint ends where the uninterrupted run ends."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).parent.parent / "examples" / "hf_trainer.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("hf_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("schedule", ["linear", "constant", "cosine"])
def test_a_tower_learns_its_lr_under_trainer_s_schedules(example, schedule, tmp_path):
    """"linear" (Trainer's default) decays to 0 at the last step: it runs to
    the end, and that step takes none."""
    trainer = example.trainer_for(str(tmp_path), steps=24, schedule=schedule)
    untrained = example.evaluation_loss(trainer)
    trainer.model.train()
    trainer.train()
    opt = trainer.optimizer.optimizer  # (accelerate's wrapper around ours)
    logged = [entry["recurse/0.lr"] for entry in trainer.state.log_history if "recurse/0.lr" in entry]
    assert len(logged) >= 4 and logged[-1] == opt.learned_hyperparameters()["0.lr"] != 1e-3
    assert opt.step_count == 24 and opt.nonfinite_steps == 0
    if schedule == "linear":
        assert trainer.lr_scheduler.get_last_lr() == [0.0] and opt.group_lrs() == [0.0]
    if schedule == "constant":
        assert opt.group_lrs() == [opt.learned_hyperparameters()["0.lr"]]
    assert example.evaluation_loss(trainer) < untrained - 0.5


def test_a_run_resumed_from_a_trainer_checkpoint_ends_where_the_whole_run_ends(example, tmp_path):
    whole = example.trainer_for(str(tmp_path / "whole"), steps=20, save_steps=10)
    whole.train()
    resumed = example.trainer_for(str(tmp_path / "resumed"), steps=20, save_steps=10)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-10"))
    assert resumed.optimizer.optimizer.hyperparameters() == whole.optimizer.optimizer.hyperparameters()
    assert resumed.optimizer.optimizer.step_count == 20
    for (name, mine), theirs in zip(resumed.model.named_parameters(), whole.model.parameters()):
        assert torch.equal(mine, theirs), name


def test_the_example_runs_and_logs_the_learned_lr(example, capsys):
    learned, loss = example.main(["--steps", "12"])
    assert len(learned) >= 4 and learned[-1] != 1e-3 and loss < 5.4  # (ln 256 = 5.55 untrained)
    assert "learned lr at each log" in capsys.readouterr().out
