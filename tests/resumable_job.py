"""A training job that checkpoints and resumes (driven by test_checkpoint.py).

    python tests/resumable_job.py OUT_FOLDER --steps 60 --every 5

Trains a float64 MLP with a depth-2 tower on batches drawn from the global
RNG; every ``every`` steps it saves model, optimizer, step and RNG state with
``rc.checkpoint.save``; on start it resumes from OUT_FOLDER/checkpoint.pt if
present. Prints "step N" after each step and writes final.pt at the end.
"""

import argparse
import sys
from pathlib import Path

import torch

import recurse as rc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize="rms"),
                                                         rc.SGD(1e-3, normalize="rms")))
    start = 0
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists():
        saved = rc.checkpoint.load(checkpoint)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        rc.checkpoint.set_rng_state(saved["rng"])
        start = saved["step"]
    for step in range(start + 1, args.steps + 1):
        inputs = torch.randn(32, 6, dtype=torch.float64)
        targets = inputs[:, :1].sin() + 0.1 * torch.randn(32, 1, dtype=torch.float64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
        if step % args.every == 0:
            rc.checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                "rng": rc.checkpoint.rng_state()}, checkpoint)
        print(f"step {step}", flush=True)
    rc.checkpoint.save({"model": model.state_dict(), "hyper": opt.hyperparameters()}, args.out / "final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
