"""Stability of meta-training a learned optimizer: normalisation, penalties,
unroll length.

Recursive setups have three ways to fail: gradients of very different scales
reach the learned optimizer (per task, per coordinate), the meta-gradient
through a long unroll explodes or vanishes, and the recurrence diverges. This
study meta-trains the coordinatewise LSTM optimizer (rc.LSTMOptimizer, 2 x 20)
on the 10-d quadratic family with unrolls of 20, 50 and 100 steps (the same
number of inner steps for each: 100 per batch of tasks) in four variants:

- raw gradient input (``preprocess="scale"``): no normalisation;
- log/sign preprocessing (L2L's normalisation of each coordinate);
- log/sign + L2 penalties (``L2Penalty`` on the LSTM weights and
  ``update_penalty`` on the size of the inner updates);
- log/sign, first order (second derivatives dropped, as the paper did).

The first three keep the second derivatives. The meta-loss is the mean of
the losses along the unroll (so that meta-gradients of different unroll
lengths compare; Adam on the weights does not see the difference from a
sum). Reported per run: the median and
largest meta-gradient norm, the share of meta-steps rolled back because the
meta-loss or meta-gradient was not finite, and the held-out mean log10 final
loss and mean sum of losses after 100 steps, on held-out tasks of the family
and on the same tasks with the loss multiplied by 100 (gradients 100x
larger, as on a task or level of another scale; reported divided by 100).

    python studies/stability.py [--quick] [--out DIR]

Writes metrics.csv, meta_training.csv, summary.md and stability.png to DIR
(default results/stability/<quick|full>).
"""

from __future__ import annotations

import statistics

import torch

import recurse as rc
from recurse.problems import QuadraticFamily
from recurse.reporting import cached_meta_training, finite_log10, progress, publish, saved_figure, study_folder, study_parser
from recurse.transforms import L2Penalty

DIM, STEPS = 10, 100
UNROLLS = (20, 50, 100)
SCALE = 100.0
VARIANTS = {
    "raw gradient input": dict(preprocess="scale"),
    "log/sign preprocessing": dict(),
    "log/sign + L2 penalties": dict(penalties=[L2Penalty(1e-2)], update_penalty=1e-2),
    "log/sign, first order": dict(first_order=True),
}


def meta_train(variant: dict, unroll: int, batches: int, task_batch: int, meta_lr: float, device: str) -> tuple:
    """Meta-train one LSTM; returns it and one log entry per meta-step."""
    options = dict(variant)
    lstm = rc.LSTMOptimizer(preprocess=options.pop("preprocess", "log_sign"), seed=0)
    family = QuadraticFamily(DIM, seed=0, device=device)
    start = [torch.zeros(task_batch, DIM, dtype=torch.float64, device=device)]

    def objective_of(tasks):
        return lambda params, k: tasks.loss(params[0])

    trainer = rc.MetaTrainer(start, objective_of(family.sample_batch(task_batch)), [lstm, rc.Adam(meta_lr)],
                             unroll_steps=[unroll], meta_loss="mean", write_back=False, **options)
    log = []
    for batch in range(batches):
        if batch:
            trainer.new_task(start, objective_of(family.sample_batch(task_batch)))
        for _ in range(STEPS // unroll):
            before = trainer.nonfinite_steps
            trainer.meta_step()
            log.append({"meta_gradient_norm": trainer.last_meta_gradient_norm,
                        "rolled_back": trainer.nonfinite_steps - before})
    return trainer.optimizers[0], log


def _row(name: str, unroll: int, lstm, log: list[dict], held_out) -> dict:
    """What one run measured: its meta-gradient norms and roll-backs, and the
    held-out losses of the learned optimizer on the family and on x SCALE tasks."""
    start = [torch.zeros(len(held_out), DIM, dtype=torch.float64, device=held_out.weights.device)]
    losses, _ = rc.evaluate(lstm, lambda params, k: held_out.losses(params[0]), start, steps=STEPS)
    scaled, _ = rc.evaluate(lstm, lambda params, k: SCALE * held_out.losses(params[0]), start, steps=STEPS)
    norms = [entry["meta_gradient_norm"] for entry in log]
    finite_norms = [norm for norm in norms if torch.isfinite(torch.tensor(norm))]
    return {"variant": name, "unroll": unroll, "meta_steps": len(log),
            "median_meta_gradient_norm": statistics.median(finite_norms) if finite_norms else float("nan"),
            "max_meta_gradient_norm": max(norms),
            "rolled_back_share": sum(entry["rolled_back"] for entry in log) / len(log),
            "mean_log10_final_loss": finite_log10(losses[-1]).mean().item(),
            "mean_sum_of_losses": losses[1:].sum(0).mean().item(),
            "mean_log10_final_loss_scaled_tasks": finite_log10(scaled[-1] / SCALE).mean().item()}


def main(argv=None):
    parser = study_parser(__doc__, "4 batches of 8 tasks per run (under a minute)")
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam's lr on the LSTM weights")
    args = parser.parse_args(argv)
    batches, task_batch, held_out_count = (4, 8, 100) if args.quick else (40, 16, 500)
    out = study_folder(args, "stability")
    held_out = QuadraticFamily(DIM, seed=1, device=args.device).sample_batch(held_out_count)
    rows, logs = [], []
    runs = [(name, unroll) for name in VARIANTS for unroll in UNROLLS]
    for name, unroll in progress(runs, args, "meta-training runs"):
        key = f"{name}-unroll{unroll}-{batches}x{task_batch}-lr{args.meta_lr:g}".replace(" ", "_").replace("/", "-")
        lstm, log = cached_meta_training(out, key, lambda: meta_train(VARIANTS[name], unroll, batches, task_batch,
                                                                      args.meta_lr, args.device))
        rows.append(_row(name, unroll, lstm, log, held_out))
        logs += [{"variant": name, "unroll": unroll, "meta_step": index + 1, **entry} for index, entry in enumerate(log)]
    publish(out, _summary(rows, batches, task_batch, held_out_count), {"metrics": rows, "meta_training": logs})
    _plot(out / "stability.png", rows)
    return rows


def _summary(rows: list[dict], batches: int, task_batch: int, held_out_count: int) -> str:
    lines = ["| variant | unroll | meta-steps | median meta-gradient norm | largest | rolled back | "
             "held-out mean log10 final loss | held-out mean sum of losses | "
             f"the same on x{SCALE:g} tasks: mean log10 final loss / {SCALE:g} |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['unroll']} | {row['meta_steps']} | "
                     f"{row['median_meta_gradient_norm']:.3g} | {row['max_meta_gradient_norm']:.3g} | "
                     f"{row['rolled_back_share']:.0%} | {row['mean_log10_final_loss']:.3f} | "
                     f"{row['mean_sum_of_losses']:.4g} | {row['mean_log10_final_loss_scaled_tasks']:.3f} |")
    lines.append(f"\nEach run: {batches} batches of {task_batch} tasks, 100 inner steps per batch; "
                 f"{held_out_count} held-out tasks.")
    return "\n".join(lines)


def _plot(path, rows: list[dict]) -> None:
    with saved_figure(path, 1, 2, figsize=(11, 4.5)) as (figure, (norms, losses)):
        for name in VARIANTS:
            mine = [row for row in rows if row["variant"] == name]
            unrolls = [row["unroll"] for row in mine]
            norms.plot(unrolls, [row["median_meta_gradient_norm"] for row in mine], marker="o", label=name)
            line, = losses.plot(unrolls, [row["mean_log10_final_loss"] for row in mine], marker="o", label=name)
            losses.plot(unrolls, [row["mean_log10_final_loss_scaled_tasks"] for row in mine], marker="x",
                        linestyle="--", color=line.get_color(), label=f"{name}, x{SCALE:g} tasks")
        norms.set_yscale("log")
        norms.set_xlabel("unroll length (inner steps)")
        norms.set_ylabel("median meta-gradient norm")
        losses.set_xlabel("unroll length (inner steps)")
        losses.set_ylabel("held-out mean log10 final loss")
        norms.legend(fontsize=8)
        losses.legend(fontsize=6)


if __name__ == "__main__":
    main()
