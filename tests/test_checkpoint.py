"""Checkpoints survive SIGKILL: a killed run resumes bit for bit, and a kill
during a save leaves the previous checkpoint loadable."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import recurse as rc

JOB = Path(__file__).parent / "resumable_job.py"


def run_job(out, *extra):
    subprocess.run([sys.executable, str(JOB), str(out), *extra], check=True, capture_output=True, timeout=300)


def test_a_sigkilled_run_resumes_to_the_same_parameters_bit_for_bit(tmp_path):
    steps, every = 60, 5
    run_job(tmp_path / "whole", "--steps", str(steps), "--every", str(every))

    kill_after = random.Random().randint(every + 1, steps - 2)  # some step after the first checkpoint
    job = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "killed"), "--steps", str(steps),
                            "--every", str(every)], stdout=subprocess.PIPE, text=True)
    for line in job.stdout:
        if int(line.split()[1]) >= kill_after:
            job.send_signal(signal.SIGKILL)
            break
    job.wait()
    assert job.returncode == -signal.SIGKILL, f"the job ended before the kill at step {kill_after}"
    assert not (tmp_path / "killed" / "final.pt").exists()
    run_job(tmp_path / "killed", "--steps", str(steps), "--every", str(every))  # resumes

    whole = rc.checkpoint.load(tmp_path / "whole" / "final.pt")
    resumed = rc.checkpoint.load(tmp_path / "killed" / "final.pt")
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), (name, kill_after)
    assert whole["hyper"] == resumed["hyper"]


WRITER = """
import sys, torch
import recurse as rc
path = sys.argv[1]
version = 1
while True:
    version += 1
    rc.checkpoint.save({"version": version, "data": torch.full((4_000_000,), float(version))}, path)
    print(version, flush=True)
"""


def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rc.checkpoint.save({"version": 1, "data": torch.full((4_000_000,), 1.0)}, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    writer.stdout.readline()  # at least one more save has finished; kill during a later one
    time.sleep(random.Random().uniform(0.0, 0.3))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    saved = rc.checkpoint.load(path)
    assert saved["version"] >= 2
    assert torch.equal(saved["data"], torch.full((4_000_000,), float(saved["version"])))


def test_loading_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        rc.checkpoint.load(tmp_path / "nothing.pt")


def _two_heads():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"body": torch.nn.Linear(3, 4), "head": torch.nn.Linear(4, 1),
                                "spare": torch.nn.Linear(4, 1)})


def _train(model, opt, steps, step0=0, skips=True):
    inputs = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for step in range(step0, step0 + steps):
        opt.zero_grad()
        hidden = model["body"](inputs).tanh()
        out = model["head"](hidden) + (model["spare"](hidden) if step % 2 or not skips else 0)  # (every other step)
        out.square().mean().backward()
        opt.step()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("build", [
    lambda model: rc.HyperOptimizer(model.parameters()),
    lambda model: rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.1, momentum=0.9),
                                                                 rc.SGD(0.01, normalize="rms"))),
    lambda model: rc.HyperOptimizer(model.parameters(), rc.tower(rc.Adam(1e-3), depth=2),
                                    horizon=rc.estimators.Decayed(0.9)),
    lambda model: rc.HyperOptimizer([{"params": model["body"].parameters()},
                                     {"params": [*model["head"].parameters(), *model["spare"].parameters()],
                                      "lr": 1e-2}]),
], ids=["default", "sgd-momentum-stack", "adam-depth2-decayed", "two-groups"])
def test_an_optimizer_saved_through_torch_distributed_checkpoint_resumes_bit_for_bit(tmp_path, build):
    """rc.distributed.save_optimizer / load_optimizer in one process (DCP
    needs no process group), into a fresh optimizer that has taken no step,
    with a parameter that skips every other step (its own cohort)."""
    model, resumed_model = _two_heads(), _two_heads()
    opt = build(model)
    skips = not isinstance(opt.horizon, rc.estimators.Decayed)  # (Decayed follows every parameter at every step)
    _train(model, opt, 5, skips=skips)
    rc.distributed.save_optimizer(opt, tmp_path)
    resumed_model.load_state_dict(model.state_dict())
    resumed = build(resumed_model)
    rc.distributed.load_optimizer(resumed, tmp_path)
    _train(model, opt, 5, step0=5, skips=skips)
    _train(resumed_model, resumed, 5, step0=5, skips=skips)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    assert opt.hyperparameters() == resumed.hyperparameters()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_loading_an_optimizer_checkpoint_into_another_model_names_the_parameter(tmp_path):
    model = _two_heads()
    opt = rc.HyperOptimizer(model.parameters())
    _train(model, opt, 2)
    rc.distributed.save_optimizer(opt, tmp_path)
    other = torch.nn.Linear(3, 5)
    with pytest.raises(ValueError, match=r"the checkpoint holds state for 6 parameters, this optimizer has 2"):
        rc.distributed.load_optimizer(rc.HyperOptimizer(other.parameters()), tmp_path)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(5, 3\) here but \(4, 3\) in the checkpoint"):
        rc.HyperOptimizer([*other.parameters(), *list(model.parameters())[2:]]).load_state_dict(opt.state_dict())
    with pytest.raises(TypeError, match="expected an rc.HyperOptimizer, got Adam"):
        rc.distributed.save_optimizer(torch.optim.Adam(model.parameters()), tmp_path)
