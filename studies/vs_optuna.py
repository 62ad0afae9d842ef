"""One recurse run against a whole Optuna study, on the same task.

A depth-2 online tower (SGD or Adam at its default start, the learning rate
learned by two RMS-normalised SGD levels) trains once; Optuna's grid (16
cells), random (16 trials) and TPE (16 trials) search the same learning rate,
each trial a full training run of the same length. The question a user asks:
does the one recurse run get within 5% of the best Optuna trial's validation
loss while spending at most 1/8 of the study's gradient evaluations?

    python studies/vs_optuna.py [--quick] [--out DIR]

Runs ``rc.baselines.compare`` on digits and mnist1d (and, in the full run,
with SGD and Adam); writes each comparison's folder (tables, plots, the
Optuna database) under DIR and ``verdict.csv`` / ``verdict.md`` with, per
task and seed, recurse's loss over the best trial's and the evaluation ratio.
Default DIR: results/vs_optuna/<quick|full>. Rerunning resumes.
"""

from __future__ import annotations

import statistics
import sys

import optuna

from recurse.baselines.comparison import compare
from recurse.problems import make_task
from recurse.reporting import study_folder, study_parser, write_csv

TARGET_LOSS_RATIO = 1.05
TARGET_EVALUATION_RATIO = 1 / 8


def verdict_rows(task: str, optimizer: str, runs) -> list[dict]:
    rows = []
    for seed in sorted({run.seed for run in runs}):
        by_method = {run.method: run for run in runs if run.seed == seed}
        tower = by_method["depth2"]
        for sampler in ("grid", "random", "tpe"):
            search = by_method[sampler]
            loss_ratio = tower.result.final_valid_loss / search.result.final_valid_loss
            evaluation_ratio = tower.result.gradient_evaluations / search.result.gradient_evaluations
            rows.append({
                "task": task, "optimizer": optimizer, "seed": seed, "versus": sampler,
                "recurse_loss": tower.result.final_valid_loss, "optuna_best_loss": search.result.final_valid_loss,
                "loss_ratio": loss_ratio, "evaluation_ratio": evaluation_ratio,
                "recurse_seconds": tower.result.seconds, "optuna_seconds": search.result.seconds,
                "target_met": loss_ratio <= TARGET_LOSS_RATIO and evaluation_ratio <= TARGET_EVALUATION_RATIO,
            })
    return rows


def verdict_table(rows: list[dict]) -> str:
    lines = ["| task | optimizer | versus | recurse depth-2 loss | best Optuna trial loss | loss ratio "
             "(mean, max over seeds) | evaluations ratio | seconds, recurse / Optuna | target met |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = dict.fromkeys((row["task"], row["optimizer"], row["versus"]) for row in rows)
    for task, optimizer, versus in groups:
        group = [row for row in rows if (row["task"], row["optimizer"], row["versus"]) == (task, optimizer, versus)]
        ratios = [row["loss_ratio"] for row in group]
        lines.append(
            f"| {task} | {optimizer} | {versus} | {statistics.mean(r['recurse_loss'] for r in group):.4g} | "
            f"{statistics.mean(r['optuna_best_loss'] for r in group):.4g} | {statistics.mean(ratios):.3f}, "
            f"{max(ratios):.3f} | 1/{1 / group[0]['evaluation_ratio']:.0f} | "
            f"{statistics.mean(r['recurse_seconds'] for r in group):.2f} / "
            f"{statistics.mean(r['optuna_seconds'] for r in group):.2f} | "
            f"{sum(r['target_met'] for r in group)} of {len(group)} seeds |")
    return "\n".join(lines)


def main(argv=None):
    parser = study_parser(__doc__, "SGD only, 150 steps, one seed (about a minute)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = study_folder(args, "vs_optuna")
    steps, seeds, optimizers = (150, [0], ["sgd"]) if args.quick else (500, [0, 1, 2], ["sgd", "adam"])

    rows = []
    for task in ("digits", "mnist1d"):
        for optimizer in optimizers:
            runs = compare(make_task(task, device=args.device), methods=["fixed", "depth2", "grid", "random", "tpe"],
                           optimizer=optimizer, budget=16 * steps, steps=steps, seeds=seeds,
                           out=out / f"{task}-{optimizer}", quiet=args.quiet or not sys.stderr.isatty())
            rows += verdict_rows(task, optimizer, runs)

    write_csv(out / "verdict.csv", rows)
    table = verdict_table(rows)
    (out / "verdict.md").write_text(table + "\n")
    print(f"{steps} steps per run, 16 trials per Optuna study, seeds {seeds}; target: loss ratio <= "
          f"{TARGET_LOSS_RATIO} at <= 1/8 of the evaluations\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
