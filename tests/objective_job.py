"""A worker for tests/test_compare_objective.py: rc.compare on an objective
of its own (slow enough to be killed mid-study), grid over 8 lrs, into the
Optuna storage given.

    python tests/objective_job.py STORAGE_URL
"""

import sys
import time

import optuna
import torch

import recurse as rc


def objective(make_optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(32, 3, generator=generator)
    targets = inputs.sum(1, keepdim=True)
    model = torch.nn.Linear(3, 1)
    opt = make_optimizer(model.parameters())
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
        time.sleep(0.05)  # (half a second a trial: a worker can be killed in the middle of one)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(inputs), targets).item()


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rc.compare(objective, towers={}, space={"lr": (1e-3, 1e-1, "log")}, optimizer=torch.optim.SGD,
               samplers=("grid",), trials=8, seeds=[0], storage=sys.argv[1], heartbeat_interval=1, quiet=True)
