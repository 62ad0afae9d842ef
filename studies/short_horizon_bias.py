"""Where the one-step hypergradient fails: small mini-batches.

The online engine follows -g_t . g_(t-1). On a noisy mini-batch task the dot
product of consecutive gradients is dominated by batch noise, and the learned
learning rate drifts down (the short-horizon bias of greedy hypergradients).
This study trains the 8-32-1 tanh MLP of ``rc.problems.SyntheticRegression``
with SGD at fixed rates and with towers that start at lr 1e-3, for several
batch sizes, and reports validation MSE and where the learned rate ended.

    python studies/short_horizon_bias.py [--quick] [--out DIR]

Writes ``metrics.csv`` and ``learning_rates.png`` to DIR
(default results/short_horizon_bias/<quick|full>).
"""

from __future__ import annotations

import recurse as rc
from recurse.problems import SyntheticRegression
from recurse.reporting import progress, saved_figure, study_folder, study_parser, write_csv

START_LR = 1e-3


def methods():
    rms = {"normalize": "rms"}
    return {
        "SGD fixed lr 1e-3": lambda: rc.SGD(START_LR),
        "SGD fixed lr 0.1": lambda: rc.SGD(0.1),
        "SGD fixed lr 0.3": lambda: rc.SGD(0.3),
        "SGD depth 1 (from 1e-3)": lambda: rc.stack(rc.SGD(START_LR), rc.SGD(0.02, **rms)),
        "SGD depth 2 (from 1e-3)": lambda: rc.stack(rc.SGD(START_LR), rc.SGD(0.02, **rms), rc.SGD(0.01, **rms)),
    }


def train(task, build, batch_size, steps):
    model = task.model(seed=0)
    opt = rc.HyperOptimizer(model.parameters(), build(), record_history=True)
    batches = task.batches(batch_size, seed=0)
    for _ in range(steps):
        inputs, targets = next(batches)
        opt.zero_grad()
        task.loss(model, inputs, targets).backward()
        opt.step()
    lr_trajectory = opt.history().get("0.lr") or [opt.hyperparameters()["0.lr"]] * opt.step_count
    return task.valid_loss(model), lr_trajectory, opt.nonfinite_steps


def main(argv=None):
    parser = study_parser(__doc__, "500 steps, batches 32 and 512 (about 10 s): a smoke run; the drift of the lr below its start shows after ~1,000 steps, in the full run")
    args = parser.parse_args(argv)
    steps, batch_sizes = (500, (32, 512)) if args.quick else (1500, (32, 128, 512))
    out = study_folder(args, "short_horizon_bias")

    task = SyntheticRegression(seed=0, device=args.device)
    rows, trajectories = [], {}
    for batch_size in progress(batch_sizes, args, "batch sizes"):
        for name, build in methods().items():
            valid_loss, lrs, nonfinite = train(task, build, batch_size, steps)
            rows.append({"batch_size": batch_size, "method": name, "valid_mse": valid_loss,
                         "lr_max": max(lrs), "lr_end": lrs[-1], "nonfinite_steps": nonfinite})
            trajectories[(batch_size, name)] = lrs

    print(f"SyntheticRegression (8-32-1 tanh MLP), {steps} steps; validation MSE of predicting the mean: "
          f"{task.valid_targets.var().item():.3f}\n")
    print("| batch | method | validation MSE | lr max | lr at end | non-finite steps |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch_size']} | {row['method']} | {row['valid_mse']:.4g} | {row['lr_max']:.2e} | "
              f"{row['lr_end']:.2e} | {row['nonfinite_steps']} |")
    write_csv(out / "metrics.csv", rows)
    plot(out / "learning_rates.png", trajectories, batch_sizes)
    print(f"\nwrote {out}/metrics.csv, learning_rates.png")


def plot(path, trajectories, batch_sizes):
    with saved_figure(path, 1, len(batch_sizes), figsize=(5 * len(batch_sizes), 4), squeeze=False) as (figure, axes):
        for axis, batch_size in zip(axes[0], batch_sizes):
            for (size, name), lrs in trajectories.items():
                if size == batch_size and "depth" in name:
                    axis.plot(range(1, len(lrs) + 1), lrs, label=name)
            for fixed in (0.1, 0.3):
                axis.axhline(fixed, color="grey", linestyle=":", linewidth=1)
            axis.set(xlabel="step (= gradient evaluations)", ylabel="level-0 learning rate", yscale="log",
                     title=f"batch {batch_size} (dotted: fixed rates that work)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)


if __name__ == "__main__":
    main()
