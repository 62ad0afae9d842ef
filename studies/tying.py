"""Weight tying across levels: one optimizer that trains the model and itself.

``rc.tower(rc.SGD(lr), depth, tie=True)`` is a single SGD whose learning rate
steps the model *and* its own log learning rate (receiving the hypergradients
of its ``depth`` uses). Its step on log lr is therefore lr itself: a value
good for the model's weights need not be good for log lr. This study trains
the digits MLP (64-32-10 tanh, batch 128) with SGD started at learning rates
1e-4 .. 1 and compares, at each start: SGD alone, an untied depth-1 tower
(its own hyper step 0.05 on RMS-normalised hypergradients, the default of
rc.compare) and tied towers of depth 1 and 2, with and without RMS
normalisation. A tied optimizer's normaliser also normalises the model's
gradient, so the tied RMS towers are compared with "SGD alone, RMS" (SGD on
RMS-normalised gradients at a fixed lr). Reported: validation loss, learned
lr at the end, and whether the run diverged (10 consecutive non-finite
steps rolled back).

    python studies/tying.py [--quick] [--out DIR]

Writes metrics.csv, summary.md and tying.png to DIR (default
results/tying/<quick|full>).
"""

from __future__ import annotations

import math
import statistics

import recurse as rc
from recurse.baselines import Diverged, train
from recurse.baselines.comparison import tower_optimizer
from recurse.problems import Digits
from recurse.reporting import cached, progress, publish, saved_figure, study_folder, study_parser

INITIAL_LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
METHODS = {
    "SGD alone": lambda lr: rc.SGD(lr),
    "SGD alone, RMS": lambda lr: rc.SGD(lr, normalize="rms"),
    "untied depth 1 (hyper step 0.05, RMS)": lambda lr: tower_optimizer("sgd", 1, start={"lr": lr}),
    "tied depth 1": lambda lr: rc.tower(rc.SGD(lr), 1, tie=True),
    "tied depth 1, RMS": lambda lr: rc.tower(rc.SGD(lr, normalize="rms"), 1, tie=True),
    "tied depth 2, RMS": lambda lr: rc.tower(rc.SGD(lr, normalize="rms"), 2, tie=True),
}


def run(task, method: str, lr: float, steps: int, seed: int) -> dict:
    try:
        result = train(task, METHODS[method](lr), steps=steps, batch_size=128, seed=seed, hidden=32)
        diverged = False
    except Diverged as error:
        result, diverged = error.result, True
    learned = result.hyperparameters.get("0.lr") or [lr]
    return {"method": method, "initial_lr": lr, "seed": seed, "valid_loss": result.final_valid_loss,
            "final_lr": learned[-1], "rolled_back": result.nonfinite_steps, "diverged": diverged}


def main(argv=None):
    parser = study_parser(__doc__, "100 steps, one seed (under a minute)")
    args = parser.parse_args(argv)
    steps, seeds = (100, [0]) if args.quick else (1000, [0, 1, 2])
    out = study_folder(args, "tying")
    task = Digits(seed=0, device=args.device)
    runs = [(method, lr, seed) for method in METHODS for lr in INITIAL_LRS for seed in seeds]
    rows = [cached(out, f"{method}-lr{lr:g}-seed{seed}-steps{steps}".replace(" ", "_").replace(",", ""),
                   lambda: run(task, method, lr, steps, seed))
            for method, lr, seed in progress(runs, args, "runs")]
    publish(out, _summary(rows, steps, seeds), {"metrics": rows})
    _plot(out / "tying.png", rows)
    return rows


def _cell(rows: list[dict]) -> str:
    """'loss (lr a -> b)' over seeds, or 'diverged k/n'."""
    diverged = sum(row["diverged"] for row in rows)
    if diverged:
        return f"diverged {diverged}/{len(rows)}"
    loss = statistics.fmean(row["valid_loss"] for row in rows)
    final_lr = math.exp(statistics.fmean(math.log(row["final_lr"]) for row in rows))
    return f"{loss:.3f} (lr -> {final_lr:.2g})"


def _summary(rows: list[dict], steps: int, seeds: list[int]) -> str:
    lines = ["| method | " + " | ".join(f"start lr {lr:g}" for lr in INITIAL_LRS) + " |",
             "|---|" + "---|" * len(INITIAL_LRS)]
    for method in METHODS:
        cells = [_cell([row for row in rows if row["method"] == method and row["initial_lr"] == lr])
                 for lr in INITIAL_LRS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append(f"\nValidation loss (mean over seeds {seeds}) after {steps} steps, and the learned lr at the end "
                 "(geometric mean).")
    return "\n".join(lines)


def _plot(path, rows: list[dict]) -> None:
    with saved_figure(path) as (figure, axes):
        for method in METHODS:
            losses = []
            for lr in INITIAL_LRS:
                mine = [row for row in rows if row["method"] == method and row["initial_lr"] == lr]
                finite = [row["valid_loss"] for row in mine if not row["diverged"]]
                losses.append(statistics.fmean(finite) if len(finite) == len(mine) else math.nan)
            axes.plot(INITIAL_LRS, losses, marker="o", label=method)
        axes.set_xscale("log")
        axes.set_xlabel("initial learning rate")
        axes.set_ylabel("validation cross-entropy (missing: diverged)")
        axes.legend(fontsize=8)


if __name__ == "__main__":
    main()
