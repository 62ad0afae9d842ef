"""Runs that diverge while finite, with and without rc.Rollback.

The non-finite guard skips a step whose values overflow; a run whose
learning rate is far too large (set so, or learned so by a tower) grows
while finite first, and then skips every step. This study trains such runs
twice, once watched by ``rc.Rollback`` (default settings, with a floor of
1e-12 for the quadratic, whose minimum is 0), and reports the final
training loss, the rollbacks, the skipped steps and the final learning
rate:

- the 10-d quadratic of ``rc.problems.QuadraticFamily`` with SGD at 1e3
  times the stable rate, fixed, and under a depth-2 tower (300 steps);
- the 8-32-1 tanh MLP of ``rc.problems.SyntheticRegression`` at full batch
  (512), where SGD towers started at lr 1e-3 overshoot (the case
  studies/short_horizon_bias.py reports as blowing up).

    python studies/rollback.py [--quick] [--out DIR]

Writes ``metrics.csv`` and ``summary.md`` to DIR (default
results/rollback/<quick|full>).
"""

from __future__ import annotations

import math

import torch

import recurse as rc
from recurse.problems import QuadraticFamily, SyntheticRegression
from recurse.reporting import progress, publish, study_folder, study_parser

RMS = {"normalize": "rms"}


class Point(torch.nn.Module):
    """The quadratic's variable as a module (what rc.Rollback snapshots)."""

    def __init__(self, size, device):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(size, dtype=torch.float64, device=device))


def quadratic_runs():
    """name -> the tower, built from the task's smoothness L."""
    return {
        "quadratic, SGD lr 1e3/L fixed": lambda L: rc.SGD(1e3 / L),
        "quadratic, depth 2 from lr 1e3/L": lambda L: rc.stack(rc.SGD(1e3 / L), rc.SGD(0.05, **RMS),
                                                               rc.SGD(0.01, **RMS)),
    }


def regression_runs():
    return {
        "MLP full batch, SGD depth 1 from lr 1e-3": lambda: rc.stack(rc.SGD(1e-3), rc.SGD(0.02, **RMS)),
        "MLP full batch, SGD depth 2 from lr 1e-3": lambda: rc.stack(rc.SGD(1e-3), rc.SGD(0.02, **RMS),
                                                                     rc.SGD(0.01, **RMS)),
    }


def train(model, opt, loss_of, steps, watch):
    """Train; the first loss and the number of rollbacks (None unwatched)."""
    rollback = rc.Rollback(model, opt, floor=1e-12) if watch else None
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        if rollback is not None:
            try:
                rollback.observe(loss)
            except FloatingPointError:  # beyond max_rollbacks: reported as such
                return first, f">{rollback.max_rollbacks}"
    return first, None if rollback is None else rollback.rollbacks


def run_quadratic(build, steps, watch, device):
    task = QuadraticFamily(10, seed=0, device=device).sample()
    point = Point(10, device)
    opt = rc.HyperOptimizer(point.parameters(), build(task.smoothness()))
    first, rollbacks = train(point, opt, lambda model: task.loss(model.theta), steps, watch)
    return first, task.loss(point.theta).item(), rollbacks, opt


def run_regression(build, steps, watch, device):
    task = SyntheticRegression(seed=0, device=device)
    model = task.model(seed=0)
    opt = rc.HyperOptimizer(model.parameters(), build())
    inputs, targets = next(task.batches(512, seed=0))
    first, rollbacks = train(model, opt, lambda model: task.loss(model, inputs, targets), steps, watch)
    with torch.no_grad():
        final = task.loss(model, inputs, targets).item()
    return first, final, rollbacks, opt


def main(argv=None):
    parser = study_parser(__doc__, "300 quadratic and 500 MLP steps (about 10 s); the full run takes 1,500 MLP steps")
    args = parser.parse_args(argv)
    out = study_folder(args, "rollback")
    mlp_steps = 500 if args.quick else 1500
    runs = [(name, build, 300, run_quadratic) for name, build in quadratic_runs().items()]
    runs += [(name, build, mlp_steps, run_regression) for name, build in regression_runs().items()]
    rows = []
    for name, build, steps, run in progress(runs, args, "runs"):
        for watch in (False, True):
            first, final, rollbacks, opt = run(build, steps, watch, args.device)
            rows.append({"run": name, "steps": steps, "rc.Rollback": "yes" if watch else "no", "first_loss": first,
                         "final_loss": final, "final_over_first": final / first if math.isfinite(final) else math.inf,
                         "rollbacks": "" if rollbacks is None else rollbacks, "skipped_steps": opt.nonfinite_steps,
                         "final_lr": opt.group_lrs()[0]})
    lines = ["| run | steps | rc.Rollback | first loss | final loss | final / first | rollbacks | skipped steps | "
             "final lr |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['run']} | {row['steps']} | {row['rc.Rollback']} | {row['first_loss']:.4g} | "
              f"{row['final_loss']:.4g} | {row['final_over_first']:.3g} | {row['rollbacks']} | "
              f"{row['skipped_steps']} | {row['final_lr']:.3g} |" for row in rows]
    publish(out, "\n".join(lines), {"metrics": rows})
    print(f"\nwrote {out}/metrics.csv, summary.md")
    return rows


if __name__ == "__main__":
    main()
