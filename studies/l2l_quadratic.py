"""Learning to learn on the quadratic family (Andrychowicz et al., 2016).

Tasks f(theta) = ||W theta - y||^2 with W (10x10) and y drawn from a standard
normal, theta starting at 0, 100 steps. A coordinatewise LSTM optimizer
(2 layers of 20 units, log/sign preprocessing, output scale 0.1) is
meta-trained with rc.MetaTrainer as in the paper: unrolls of 20 steps, 100
steps per task (then a fresh batch of tasks), Adam on the LSTM's weights,
second derivatives dropped. Two LSTMs are trained, one per meta-loss: the
sum of the losses along the unroll (the paper's) and the sum of the per-task
log losses (every task and step counts by its relative progress).
Baselines: SGD, Nesterov momentum (0.9), RMSprop and Adam, each with its
learning rate chosen by an Optuna grid search on training tasks, once for
each metric reported (mean log10 final loss; mean sum of the losses over the
run). Everything is evaluated on held-out tasks drawn from another seed, and
every method is compared with tuned Adam on the same tasks (paired).

    python studies/l2l_quadratic.py [--quick] [--out DIR] [--meta-steps N] [--meta-lr LR] [--second-order]

Writes metrics.csv (one row per method, tuning metric and held-out task), summary.md,
meta_training.csv, lstm_loss.pt and lstm_log.pt (the learned optimizers, rc.checkpoint format)
and l2l_quadratic.png (mean log10 loss vs step) to DIR (default
results/l2l_quadratic/<quick|full>).
"""

from __future__ import annotations

import math
import statistics

import optuna
import torch
from torch import Tensor

import recurse as rc
from recurse.problems import QuadraticBatch, QuadraticFamily
from recurse.reporting import cached_meta_training, finite_log10, progress, publish, saved_figure, study_folder, study_parser

DIM, STEPS, UNROLL = 10, 100, 20
LEARNED = {"loss": "LSTM, meta-loss: sum of losses", "log": "LSTM, meta-loss: sum of log losses"}
LR_GRID = [10.0**(exponent / 4) for exponent in range(-20, 3)]  # 1e-5 .. 3.2


def baselines() -> dict:
    return {
        "SGD": lambda params, lr: torch.optim.SGD(params, lr=lr),
        "Nesterov momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
        "RMSprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
        "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    }


def run_torch(build, lr: float, tasks: QuadraticBatch) -> Tensor:
    """Losses of every task at steps 0..STEPS, shape (STEPS + 1, tasks)."""
    start = [torch.zeros(len(tasks), DIM, dtype=tasks.weights.dtype, device=tasks.weights.device)]
    return rc.evaluate_torch(lambda params: build(params, lr), lambda params, k: tasks.losses(params[0]), start,
                             steps=STEPS)[0]


def run_learned(lstm: rc.LSTMOptimizer, tasks: QuadraticBatch) -> Tensor:
    """The same with the learned optimizer at fixed weights (no meta-gradient)."""
    start = [torch.zeros(len(tasks), DIM, dtype=tasks.weights.dtype, device=tasks.weights.device)]
    return rc.evaluate(lstm, lambda params, k: tasks.losses(params[0]), start, steps=STEPS)[0]


def tune(build, tasks: QuadraticBatch, seed: int) -> dict[str, float]:
    """Run every grid lr on ``tasks`` (an Optuna GridSampler study) and return,
    for each metric, the lr that gives its lowest mean: ``{"final": lr, "sum": lr}``
    ("final": log10 of the final loss; "sum": sum of the losses over the run)."""
    sampler = optuna.samplers.GridSampler({"lr": LR_GRID}, seed=seed)
    study = optuna.create_study(sampler=sampler, direction="minimize")

    def objective(trial):
        losses = run_torch(build, trial.suggest_float("lr", 1e-5, 10, log=True), tasks)
        trial.set_user_attr("sum", losses[1:].sum(0).mean().item())
        return finite_log10(losses[-1]).mean().item()

    study.optimize(objective, n_trials=len(LR_GRID))
    by_sum = min(study.trials, key=lambda trial: trial.user_attrs["sum"])
    return {"final": study.best_params["lr"], "sum": by_sum.params["lr"]}


def meta_train(args, meta_objective_kind: str, progress_bar) -> tuple[rc.LSTMOptimizer, list[dict]]:
    """Meta-train the LSTM on batches of fresh tasks; a new batch every STEPS inner steps.

    The meta-loss sums, over the unroll, either the losses (``"loss"``, the
    paper) or the per-task log losses (``"log"``)."""
    family = QuadraticFamily(DIM, seed=0, device=args.device)
    start = [torch.zeros(args.task_batch, DIM, dtype=torch.float64, device=args.device)]

    def objectives(tasks):
        if meta_objective_kind == "log":
            return (lambda params, k: tasks.loss(params[0])), (lambda params, k: tasks.losses(params[0]).log().sum())
        return (lambda params, k: tasks.loss(params[0])), None

    objective, meta_objective = objectives(family.sample_batch(args.task_batch))
    trainer = rc.MetaTrainer(start, objective, [rc.LSTMOptimizer(seed=args.seed), rc.Adam(args.meta_lr)],
                             unroll_steps=[UNROLL], meta_loss="sum", meta_objective=meta_objective,
                             first_order=not args.second_order, write_back=False)
    log = []
    for meta_step in progress_bar(range(args.meta_steps), "meta-training"):
        if meta_step and meta_step % (STEPS // UNROLL) == 0:
            trainer.new_task(start, *objectives(family.sample_batch(args.task_batch)))
        before = trainer.nonfinite_steps
        meta_loss = trainer.meta_step()
        log.append({"meta_step": meta_step + 1, "meta_loss_per_task": meta_loss / args.task_batch,
                    "meta_gradient_norm": trainer.last_meta_gradient_norm,
                    "rolled_back": trainer.nonfinite_steps - before})
    return trainer.optimizers[0], log


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval."""
    mean = statistics.fmean(values)
    return mean, 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def main(argv=None):
    parser = study_parser(__doc__, "60 meta-steps on batches of 16 tasks, 100 held-out tasks (about a minute)")
    parser.add_argument("--meta-steps", type=int, default=None, help="meta-steps (5 per batch of tasks)")
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam's lr on the LSTM weights (paper: 1e-3)")
    parser.add_argument("--task-batch", type=int, default=None, help="tasks per meta-step")
    parser.add_argument("--second-order", action="store_true",
                        help="keep the second derivatives (the paper, and this study by default, drop them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LSTM's initial weights")
    args = parser.parse_args(argv)
    args.meta_steps = args.meta_steps or (60 if args.quick else 5000)
    args.task_batch = args.task_batch or (16 if args.quick else 64)
    out = study_folder(args, "l2l_quadratic")
    torch.manual_seed(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def progress_bar(iterable, description):
        return progress(iterable, args, description)

    training_tasks = QuadraticFamily(DIM, seed=2, device=args.device).sample_batch(32 if args.quick else 128)
    held_out = QuadraticFamily(DIM, seed=1, device=args.device).sample_batch(100 if args.quick else 500)
    curves = {}  # (method, the metric its lr was tuned for) -> losses; learned ones count for both metrics
    for name, build in progress_bar(baselines().items(), "tuning baselines"):
        for metric, lr in tune(build, training_tasks, args.seed).items():
            curves[(f"{name} (lr {lr:.3g})", metric)] = run_torch(build, lr, held_out)
    meta_logs = []
    for kind, method in LEARNED.items():
        key = f"lstm-{kind}-{args.meta_steps}x{args.task_batch}-lr{args.meta_lr:g}-{args.second_order}-seed{args.seed}"
        lstm, meta_log = cached_meta_training(out, key, lambda: meta_train(args, kind, progress_bar))
        rc.checkpoint.save(lstm.state_dict(), out / f"lstm_{kind}.pt")
        curves[(method, "final")] = curves[(method, "sum")] = run_learned(lstm, held_out)
        meta_logs += [{"meta_objective": kind, **entry} for entry in meta_log]

    rows = []
    for (method, metric), losses in curves.items():
        if method in LEARNED.values() and metric == "sum":
            continue  # the same run as its "final" row
        for task in range(len(held_out)):
            rows.append({"method": method, "tuned_for": "-" if method in LEARNED.values() else metric, "task": task,
                         "final_loss": losses[-1, task].item(), "sum_of_losses": losses[1:, task].sum().item()})
    publish(out, _summary(curves, args, meta_logs), {"metrics": rows, "meta_training": meta_logs})
    _plot(out / "l2l_quadratic.png", curves)
    return rows, meta_logs


def _metric(losses: Tensor, metric: str) -> Tensor:
    """Per task: log10 of the final loss, or the sum of the losses after each step."""
    return finite_log10(losses[-1]) if metric == "final" else losses[1:].sum(0)


def _summary(curves: dict, args, meta_logs: list[dict]) -> str:
    """One table per metric, each baseline at the lr tuned for that metric,
    every method compared with tuned Adam on the same tasks (paired)."""
    lines = []
    for metric, title in (("final", "mean log10 final loss"), ("sum", "mean sum of losses")):
        adam = next(_metric(losses, metric) for (method, tuned), losses in curves.items()
                    if method.startswith("Adam") and tuned == metric)
        lines += [f"| method (baselines: lr tuned for the {title}) | {title} (95% CI) | "
                  "minus tuned Adam's, paired (95% CI) | tasks where it beats tuned Adam |", "|---|---|---|---|"]
        for (method, tuned), losses in curves.items():
            if tuned != metric:
                continue
            values = _metric(losses, metric)
            mean, half_width = interval(values.tolist())
            difference, difference_half_width = interval((values - adam).tolist())
            wins = (values < adam).double().mean().item()
            lines.append(f"| {method} | {mean:.4g} +- {half_width:.2g} | {difference:+.3g} +- "
                         f"{difference_half_width:.2g} | {wins:.0%} |")
        lines.append("")
    rolled_back = sum(entry["rolled_back"] for entry in meta_logs)
    tasks = next(iter(curves.values())).shape[1]
    lines.append(f"{tasks} held-out tasks, {STEPS} steps from theta = 0. Each LSTM meta-trained for {args.meta_steps} "
                 f"meta-steps of {UNROLL} inner steps on batches of {args.task_batch} tasks (Adam lr "
                 f"{args.meta_lr:g}, {'second' if args.second_order else 'first'} order); meta-steps rolled "
                 f"back (non-finite): {rolled_back}.")
    return "\n".join(lines)


def _plot(path, curves: dict) -> None:
    with saved_figure(path) as (figure, axes):
        for (method, tuned), losses in curves.items():
            if tuned == "final":
                axes.plot(finite_log10(losses).mean(1).numpy(), label=method)
        axes.set_xlabel("step")
        axes.set_ylabel("mean log10 loss over held-out tasks")
        axes.set_title("Quadratic family, 10-d: learned vs tuned optimizers")
        axes.legend()


if __name__ == "__main__":
    main()
