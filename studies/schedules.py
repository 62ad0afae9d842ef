"""A learned lr under the schedules users already run.

Under a ``torch.optim.lr_scheduler`` schedule, the lr a tower's param group
steps with is the learned lr times ``param_groups[i]["lr"] / start`` (see
recurse.param_group): the schedule shapes what the tower learns and never
overwrites it. This study trains ``rc.problems.Digits()`` (MLP, hidden 64,
batch 128) under each schedule with:

- ``recommended``: ``rc.HyperOptimizer(params)``, the recommended tower
  (recurse.defaults: AdamW learning its lr under an Adam level);
- ``depth 3 recipe``: ``rc.stack(rc.Adam(1e-3, learn="lr"),
  rc.SGD(0.05, normalize="rms"), rc.SGD(0.01, normalize="rms"))``, the
  recipe README recommended before the defaults;
- ``tower depth 2``: ``rc.tower(rc.Adam(1e-3), depth=2)`` at its defaults;
- ``Adam 1e-3``: torch.optim.Adam at the towers' starting lr, the same schedule;

and reports the validation loss (mean over seeds), the learned lr at the end
(the tower's value, unscaled) and the lr the last step used.

    python studies/schedules.py [--quick] [--out DIR]

Writes ``metrics.csv`` and ``summary.md`` to DIR (default
results/schedules/<quick|full>).
"""

from __future__ import annotations

import math
import statistics

import torch

import recurse as rc
from recurse.problems import Digits
from recurse.reporting import progress, publish, study_folder, study_parser

S = torch.optim.lr_scheduler
RMS = {"normalize": "rms"}

METHODS = {
    "recommended": lambda params: rc.HyperOptimizer(params),
    "depth 3 recipe": lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.Adam(1e-3, learn="lr"), rc.SGD(0.05, **RMS), rc.SGD(0.01, **RMS))),
    "tower depth 2": lambda params: rc.HyperOptimizer(params, rc.tower(rc.Adam(1e-3), depth=2)),
    "Adam 1e-3": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def schedules(steps):
    """name -> a scheduler for ``steps`` steps (None: no scheduler)."""
    warmup = max(1, steps // 10)
    return {
        "none": lambda opt: None,
        "constant (LambdaLR 1.0)": lambda opt: S.LambdaLR(opt, lambda t: 1.0),
        "linear decay to 0": lambda opt: S.LambdaLR(opt, lambda t: max(0.0, 1 - t / steps)),
        "cosine to 0": lambda opt: S.CosineAnnealingLR(opt, T_max=steps),
        "warm-up + cosine": lambda opt: S.SequentialLR(opt, [S.LinearLR(opt, 0.01, total_iters=warmup),
                                                            S.CosineAnnealingLR(opt, steps - warmup)], [warmup]),
        "ExponentialLR 0.999": lambda opt: S.ExponentialLR(opt, 0.999),
    }


def run(method, schedule, steps, seed, device):
    task = Digits(device=device)
    model = task.model(hidden=64, seed=seed)
    opt = METHODS[method](model.parameters())
    scheduler = schedule(opt)
    task.fit(model, opt, steps=steps, batch_size=128, seed=seed,
             after_step=None if scheduler is None else lambda step: scheduler.step())
    if isinstance(opt, rc.HyperOptimizer):
        learned, used = opt.hyperparameters()["0.lr"], opt.group_lrs()[0]
    else:
        learned, used = math.nan, opt.param_groups[0]["lr"]
    return task.valid_loss(model), learned, used


def main(argv=None):
    parser = study_parser(__doc__, "300 steps and 1 seed (about 30 s); the full run takes 1,000 steps and 3 seeds")
    args = parser.parse_args(argv)
    out = study_folder(args, "schedules")
    steps, seeds = (300, [0]) if args.quick else (1000, [0, 1, 2])
    cells = [(schedule, method) for schedule in schedules(steps) for method in METHODS]
    rows = []
    for schedule, method in progress(cells, args, "runs"):
        results = [run(method, schedules(steps)[schedule], steps, seed, args.device) for seed in seeds]
        losses = [loss for loss, _, _ in results]
        rows.append({"schedule": schedule, "method": method, "steps": steps, "seeds": len(seeds),
                     "valid_loss": statistics.fmean(losses),
                     "valid_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                     "learned_lr": results[0][1], "last_step_lr": results[0][2]})
    lines = ["| schedule | method | validation loss | learned lr at the end (seed 0) | lr of the last step |",
             "|---|---|---|---|---|"]
    lines += [f"| {row['schedule']} | {row['method']} | {row['valid_loss']:.4f} ± {row['valid_loss_std']:.4f} | "
              f"{'' if math.isnan(row['learned_lr']) else format(row['learned_lr'], '.3g')} | "
              f"{row['last_step_lr']:.3g} |" for row in rows]
    publish(out, "\n".join(lines), {"metrics": rows})
    print(f"\nwrote {out}/metrics.csv, summary.md")
    return rows


if __name__ == "__main__":
    main()
