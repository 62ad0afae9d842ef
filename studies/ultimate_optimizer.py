"""The shape of "Gradient Descent: The Ultimate Optimizer" (Chandra et al.)
on sklearn's digits.

An MLP with one hidden layer of 128 tanh units is trained by towers of
depth 0 to 5 (as everywhere in recurse, depth counts the levels above the
one that trains the model: depth 0 is the optimizer alone, depth 1 one level
learning its learning rate, ...; the paper counts every optimizer, its
"height" is depth + 1). A tower is written level 0 first, ``SGD/SGD`` for
depth 1, as ``rc.stack(rc.SGD(...), rc.SGD(...))`` builds it:

- SGD towers: SGD(0.01) at level 0; every level above is SGD on the log
  learning rate of the level below, normalising its hypergradient by its
  running RMS (step 0.05 at level 1, 0.01 higher up; see
  ``rc.baselines.comparison.tower_optimizer``).
- Adam towers: Adam(1e-3) at level 0; every level above is Adam(0.01)
  learning the log learning rate of the level below ("Adam^alpha" in the
  paper's notation: the betas stay fixed).

Then sensitivity: SGD towers of depth 0-3 started from learning rates
1e-6 .. 1e1; the final validation loss per (depth, initial lr) as a table
and a heat map, and its spread per depth. The paper's claim, to check:
hyper-optimized towers beat their fixed baselines, and each extra level
makes the result less sensitive to the initial choice.

    python studies/ultimate_optimizer.py [--quick] [--out DIR]

Writes towers.csv, sensitivity.csv, sensitivity.png, summary.md to DIR
(default results/ultimate_optimizer/<quick|full>).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import recurse as rc
from recurse.baselines import Diverged, train
from recurse.baselines.comparison import tower_optimizer
from recurse.problems import Digits
from recurse.reporting import cached, progress, publish, saved_figure, study_folder, study_parser

HIDDEN = 128
INITIAL_LRS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1]


def adam_tower(depth: int) -> rc.Optimizer:
    levels = [rc.Adam(1e-3 if level == 0 else 0.01, learn="lr" if level < depth else ()) for level in range(depth + 1)]
    return rc.stack(*levels) if depth > 0 else rc.Adam(1e-3)


def sgd_tower(depth: int, initial_lr: float = 0.01) -> rc.Optimizer:
    return tower_optimizer("sgd", depth, start={"lr": initial_lr})


def final_loss(out, key, task, build, *, steps, seed):
    """(final validation loss, accuracy, seconds); NaN loss if the run diverged.
    Cached in ``out`` under ``key``: an interrupted study resumes."""
    def run():
        try:
            result = train(task, build(), steps=steps, batch_size=128, seed=seed, hidden=HIDDEN)
        except Diverged as error:
            return {"measured": [math.nan, math.nan, error.result.seconds]}
        return {"measured": [result.final_valid_loss, result.valid_accuracy, result.seconds]}

    return tuple(cached(out, f"{key}-seed{seed}", run)["measured"])


def main(argv=None):
    parser = study_parser(__doc__, "150 steps, one seed, depths up to 3 (about a minute)")
    args = parser.parse_args(argv)
    out = study_folder(args, "ultimate_optimizer")
    steps, seeds, max_depth = (150, [0], 3) if args.quick else (1000, [0, 1, 2], 5)
    task = Digits(device=args.device)

    tower_rows = []
    for family, build in (("SGD", sgd_tower), ("Adam", adam_tower)):
        for depth in progress(range(max_depth + 1), args, f"{family} towers"):
            measured = [final_loss(out, f"{family}-depth{depth}", task, lambda: build(depth), steps=steps, seed=seed)
                        for seed in seeds]
            losses = [loss for loss, _, _ in measured]
            tower_rows.append({"tower": "/".join([family] * (depth + 1)), "depth": depth,
                               "valid_loss_mean": statistics.mean(losses),
                               "valid_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                               "valid_accuracy_mean": statistics.mean(acc for _, acc, _ in measured),
                               "seconds_mean": statistics.mean(sec for _, _, sec in measured)})

    sensitivity = {}
    for depth in progress(range(4), args, "sensitivity"):
        for initial_lr in INITIAL_LRS:
            losses = [final_loss(out, f"sensitivity-depth{depth}-lr{initial_lr:g}", task,
                                 lambda: sgd_tower(depth, initial_lr), steps=steps, seed=seed)[0] for seed in seeds]
            sensitivity[(depth, initial_lr)] = statistics.mean(losses)

    publish(out, _summary(tower_rows, sensitivity, steps, seeds),
            {"towers": tower_rows, "sensitivity": [{"depth": d, "initial_lr": lr, "valid_loss": loss}
                                                   for (d, lr), loss in sensitivity.items()]})
    _heat_map(out / "sensitivity.png", sensitivity)
    return tower_rows, sensitivity


def _summary(tower_rows, sensitivity, steps, seeds) -> str:
    lines = [f"digits, MLP 64-{HIDDEN}-10 (tanh), batch 128, {steps} steps, seeds {seeds}", "",
             "| tower (level 0 / level 1 / ...) | depth | validation loss, mean +- std | validation accuracy | "
             "seconds |", "|---|---|---|---|---|"]
    for row in tower_rows:
        lines.append(f"| {row['tower']} | {row['depth']} | {row['valid_loss_mean']:.4g} +- "
                     f"{row['valid_loss_std']:.2g} | {row['valid_accuracy_mean']:.3f} | {row['seconds_mean']:.2f} |")
    lines += ["", "Sensitivity (SGD towers): final validation loss per initial learning rate (NaN: diverged)", "",
              "| depth | " + " | ".join(f"{lr:g}" for lr in INITIAL_LRS) + " | spread: max / min | std of log loss |",
              "|---|" + "---|" * (len(INITIAL_LRS) + 2)]
    for depth in range(4):
        losses = [sensitivity[(depth, lr)] for lr in INITIAL_LRS]
        finite = [loss for loss in losses if math.isfinite(loss)]
        spread = max(finite) / min(finite) if finite else math.nan
        log_std = statistics.stdev(math.log(loss) for loss in finite) if len(finite) > 1 else math.nan
        failed = len(losses) - len(finite)
        lines.append(f"| {depth} | " + " | ".join(f"{loss:.3g}" for loss in losses) +
                     f" | {spread:.3g}{f' ({failed} diverged)' if failed else ''} | {log_std:.3g} |")
    return "\n".join(lines)


def _heat_map(path: Path, sensitivity) -> None:
    import numpy as np

    grid = np.array([[sensitivity[(depth, lr)] for lr in INITIAL_LRS] for depth in range(4)])
    with saved_figure(path, figsize=(8, 3.6)) as (figure, axis):
        image = axis.imshow(np.log10(grid), aspect="auto", cmap="viridis")
        axis.set_xticks(range(len(INITIAL_LRS)), [f"{lr:g}" for lr in INITIAL_LRS])
        axis.set_yticks(range(4), [f"depth {d}" for d in range(4)])
        for (row, column), value in np.ndenumerate(grid):
            axis.text(column, row, f"{value:.2g}", ha="center", va="center", color="w", fontsize=8)
        axis.set(xlabel="initial learning rate of SGD (level 0)", title="Final validation loss (log10 colour), digits")
        figure.colorbar(image, ax=axis, label="log10 validation loss")


if __name__ == "__main__":
    main()
