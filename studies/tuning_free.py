"""Towers that need no tuning, against the optimizers users pick instead.

On four tasks (rc.problems: the digits MLP, the mnist1d MLP, the digits CNN
and the character-level transformer), with the same initial network and
the same batches for every method (per seed), it trains:

- recurse's defaults: ``rc.HyperOptimizer(params)`` (the recommended tower,
  recurse.defaults) and ``rc.tower(rc.Adam(1e-3), depth=2)``;
- untuned torch.optim Adam (lr 1e-3) and AdamW (lr 1e-3, weight decay 1e-2);
- each peer at its documented defaults (the ``peers`` extra): Prodigy,
  D-Adaptation Adam, LDoG, Schedule-Free AdamW, Mechanic over Adam; and
  rc.VSGD (vSGD, the seed essay's tuning-free method: no learning rate);

and, as the tuned reference at 16x one run's budget, two Optuna searches of
16 trials (rc.baselines.run_search, seed 0): a grid over Adam's lr and TPE
over AdamW's lr and weight decay. It reports:

- ``results``: validation loss per task and method (mean over seeds), and
  its ratio to the best Optuna trial's (``over_best_trial``); and its ratio
  to the best trial's configuration re-run on the same seeds and batches
  (``over_best_rerun``): the best of 32 noisy runs on seed 0 is lower than
  its configuration's mean over seeds, the winner's curse that the first
  ratio counts against every method;
- ``summary``: per method, the geometric mean of each ratio and the worst
  task, and the time per step over torch.optim.Adam's;
- ``sensitivity``: the recommended tower started from lr 1e-6, 1e-4, 1e-2
  and 1, and the spread (worst over best) per task;
- ``curves.png`` (validation loss against gradient evaluations) and
  ``learned_lr.png`` (the recommended tower's level-0 lr against the step).

    python studies/tuning_free.py [--quick] [--out DIR] [--tasks digits ...] [--design NAME]
                                  [--start-lr LR] [--no-sensitivity]

Writes ``results.csv``, ``summary.csv``, ``sensitivity.csv``, ``results.json``,
``summary.md`` and the plots to DIR (default results/tuning_free/<quick|full>),
and keeps the Optuna searches in DIR/searches.db: a rerun into the same
folder (``--design`` another candidate for the recommended tower, or
``--start-lr`` another start for it, with ``--methods "recurse default"``)
reads them back instead of searching again.
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
import time
from typing import NamedTuple

import torch

import recurse as rc
from recurse.baselines import OPTIMIZERS, run_search
from recurse.optim.vsgd import _ratio as ratio  # (x / y, 0 where y is: vSGD's statistics)
from recurse.problems.supervised import split
from recurse.reporting import progress, publish, saved_figure, study_folder, study_parser

PEERS_EXTRA = 'pip install -e ".[peers]"'


class Workload(NamedTuple):
    """One task as the study trains it."""

    task: str
    hidden: int
    batch: int
    steps: int
    options: tuple = ()

    def make(self, device):
        return rc.problems.make_task(self.task, device=device, **dict(self.options))


WORKLOADS = {
    "digits": Workload("digits", hidden=64, batch=128, steps=500),
    "mnist1d": Workload("mnist1d", hidden=256, batch=128, steps=1000),
    "digits_cnn": Workload("digits_cnn", hidden=16, batch=128, steps=500),
    "char_lm": Workload("char_lm", hidden=64, batch=32, steps=400),
}


def _peer(module: str, name: str):
    """A peer's optimizer class, or an error that names the missing extra."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(f"studies/tuning_free.py compares with {module}, from the peers extra: {PEERS_EXTRA}") from None


def _mechanic_adam(params):
    return _peer("mechanic_pytorch", "mechanize")(torch.optim.Adam)(params, lr=1e-3)


# name -> params -> a torch.optim optimizer; each at the defaults its README documents.
METHODS = {
    "recurse default": lambda params: rc.HyperOptimizer(params),
    "recurse tower(Adam(1e-3), depth=2)": lambda params: rc.HyperOptimizer(params, rc.tower(rc.Adam(1e-3), depth=2)),
    "Adam 1e-3": lambda params: torch.optim.Adam(params, lr=1e-3),
    "AdamW 1e-3": lambda params: torch.optim.AdamW(params, lr=1e-3),
    "Prodigy": lambda params: _peer("prodigyopt", "Prodigy")(params, lr=1.0),
    "D-Adaptation Adam": lambda params: _peer("dadaptation", "DAdaptAdam")(params, lr=1.0),
    "LDoG": lambda params: _peer("dog", "LDoG")(params),
    "Schedule-Free AdamW": lambda params: _peer("schedulefree", "AdamWScheduleFree")(params),
    "Mechanic (Adam)": _mechanic_adam,
    "vSGD": lambda params: rc.HyperOptimizer(params, rc.VSGD()),
}
SENSITIVITY_LRS = (1e-6, 1e-4, 1e-2, 1.0)
RMS = {"normalize": "rms"}

def hold_out(task, fraction, batch, seed):
    """Move a random ``fraction`` of ``task``'s training set out of it, and
    return an endless stream of mini-batches of that part."""
    task.train_inputs, task.train_targets, held_inputs, held_targets = split(
        task.train_inputs, task.train_targets, fraction, 10_000 + seed)
    count, generator = held_inputs.shape[0], torch.Generator().manual_seed(20_000 + seed)

    def stream():  # (the split above is done now, before the training batches are drawn)
        while True:
            index = torch.randint(0, count, (min(batch, count),), generator=generator).to(task.device)
            yield held_inputs[index], held_targets[index]

    return stream()


class SecantVSGD(rc.Optimizer):
    """A top level with no number to choose, after vSGD (the essay's tuning-free
    method): per coordinate, the rate (hbar / vhbar) (gbar^2 / vbar) of
    rc.VSGD, its curvature the secant along this level's last step,
    h = |g_t - g_(t-1)| / |theta_t - theta_(t-1)| (a level above the model
    has no loss to evaluate again), with rc.VSGD's slow start (C = 2, n0 =
    10) and adaptive memory. Its first step, with no curvature yet, is a
    probe of ``probe`` (1% of the lr, in log lr) against the hypergradient.
    A candidate measured here, not part of the library: the hypergradients
    of consecutive steps come from different batches, their difference is
    mostly noise, and the rate it gives overshoots (docs/results.md)."""

    hyperparameter_specs = (rc.Hyperparameter("lr", rc.constraints.positive),)

    def __init__(self, probe=0.01, slow_start=2.0, initial_samples=10, **options):
        options["learn"] = ()
        super().__init__(lr=1.0, **options)
        self.probe = probe
        # (rc.VSGD's running averages, slow start and memory, its curvature given: no closure is called)
        self.averages = rc.VSGD(slow_start=slow_start, initial_samples=initial_samples, outlier_level=None)

    def init(self, params):
        return {"step": 0, "last": None}

    def update_depends_on_params(self):
        return False

    def update(self, params, grads, state, hyper, *, closure=None):
        new_params, last = [], []
        for index, (param, grad) in enumerate(zip(params, grads)):
            grad = grad.detach()
            before = None if state["last"] is None else state["last"][index]
            if before is None:  # the probe
                step, statistics = -self.probe * grad.sign(), None
            else:
                curvature = ratio((grad - before["grad"]).abs(), before["step"].abs())
                statistics = self.averages._statistics(grad, curvature, before["statistics"] or {"gbar": None})
                signal = ratio(statistics["gbar"] ** 2, statistics["vbar"])
                statistics["tau"] = (1 - signal) * statistics["tau"] + 1
                step = -ratio(statistics["hbar"], statistics["vhbar"]) * signal * grad
            new_params.append(param.detach() + step)
            last.append({"grad": grad, "step": step, "statistics": statistics})
        return new_params, {"step": state["step"] + 1, "last": last}


def _spread(values):
    """The standard deviation over seeds (NaN where a run ended non-finite: statistics.stdev fails on it)."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan


def _held_out_design(fraction, every):
    """The recommended tower, its level-0 hypergradient taken on a held-out ``fraction`` of the training set
    every ``every`` steps (rc.estimators.HeldOut); the model trains on the rest."""
    def design(lr):
        def make(params, held_loss):
            return rc.HyperOptimizer(params, rc.defaults.tower(lr),
                                     hypergradient_loss=rc.estimators.HeldOut(held_loss, every=every))
        make.held_out = {"fraction": fraction}
        return make
    return design


# Candidate designs for the recommended tower (``--design``; "recurse default" and the sensitivity table run
# it): lr -> params -> an rc.HyperOptimizer. "default" is what rc.HyperOptimizer(params) builds.
DESIGNS = {
    "default": lambda lr: lambda params: rc.HyperOptimizer(params, rc.defaults.tower(lr)),
    "decayed horizon 0.99": lambda lr: lambda params: rc.HyperOptimizer(
        params, rc.defaults.tower(lr), horizon=rc.estimators.Decayed(0.99)),
    "decayed horizon 0.9": lambda lr: lambda params: rc.HyperOptimizer(
        params, rc.defaults.tower(lr), horizon=rc.estimators.Decayed(0.9)),
    "faster levels 0.2/0.05": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.SGD(0.2, **RMS), rc.SGD(0.05, **RMS))),
    "one level 0.05": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.SGD(0.05, **RMS))),
    "Adam levels 0.05/0.01": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.05, learn="lr"), rc.SGD(0.01, **RMS))),
    "one Adam level 0.02": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.02))),
    "Adam levels 0.05/0.01, decayed horizon 0.9": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.05, learn="lr"), rc.SGD(0.01, **RMS)),
        horizon=rc.estimators.Decayed(0.9)),
    "Adam level betas (0.99, 0.999)": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.05, betas=(0.99, 0.999), learn="lr"), rc.SGD(0.01, **RMS))),
    "one Adam level 0.05": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.05))),
    "Adam level 0.1": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.1, learn="lr"), rc.SGD(0.01, **RMS))),
    "held-out 15%, every step": _held_out_design(0.15, 1),
    "held-out 15%, every 4 steps": _held_out_design(0.15, 4),
    "no first step limit": lambda lr: lambda params: rc.HyperOptimizer(params, rc.defaults.tower(lr),
                                                                       first_step_limit=None),
    "per-tensor lr": lambda lr: lambda params: rc.HyperOptimizer(rc.per_tensor(params), rc.defaults.tower(lr)),
    "per-tensor lr, decayed horizon 0.99": lambda lr: lambda params: rc.HyperOptimizer(
        rc.per_tensor(params), rc.defaults.tower(lr), horizon=rc.estimators.Decayed(0.99)),
    "per-tensor lr, Adam level 0.1": lambda lr: lambda params: rc.HyperOptimizer(rc.per_tensor(params), rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.1))),
    "vSGD top (secant)": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), SecantVSGD())),
    "Rprop top": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Rprop())),
    "Adam level, Rprop top": lambda lr: lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.AdamW(lr, learn="lr"), rc.Adam(0.05, learn="lr"), rc.Rprop())),
}


def train(workload, make_optimizer, seed, device, evals=10):
    """Validation losses along the run (``evals`` points), seconds per step,
    and the level-0 lr after each step where the optimizer learns one."""
    task = workload.make(device)
    model = task.model(workload.hidden, seed=seed)
    held_out = getattr(make_optimizer, "held_out", None)
    if held_out is None:
        opt = make_optimizer(model.parameters())
    else:  # the method trains on the rest of the training set and takes a hypergradient on this part
        held_batches = hold_out(task, held_out["fraction"], workload.batch, seed)
        opt = make_optimizer(model.parameters(), lambda: task.loss(model, *next(held_batches)))
    batches = task.batches(workload.batch, seed=seed)
    switches = hasattr(opt, "eval") and hasattr(opt, "train")  # (Schedule-Free evaluates at its averaged point)
    if switches:
        opt.train()
    curve, lrs, seconds = [], [], 0.0
    every = max(1, workload.steps // evals)
    for step in range(1, workload.steps + 1):
        inputs, targets = next(batches)
        synchronize(device)  # (a GPU's queued work is timed with the step that queued it, for every method)
        start = time.perf_counter()
        opt.zero_grad()
        if needs_closure(opt):  # (it evaluates the loss again, at another point: rc.VSGD)
            def closure():
                opt.zero_grad()
                loss = task.loss(model, inputs, targets)
                loss.backward()
                return loss
            opt.step(closure)
        else:
            task.loss(model, inputs, targets).backward()
            opt.step()
        synchronize(device)
        seconds += time.perf_counter() - start
        if isinstance(opt, rc.HyperOptimizer):
            lrs.append(opt.group_lrs()[0])
        if step % every == 0 or step == workload.steps:
            if switches:
                opt.eval()
            loss = task.valid_loss(model)
            if switches:
                opt.train()
            curve.append((step, loss if math.isfinite(loss) else math.inf))
    return curve, seconds / workload.steps, lrs


def needs_closure(opt) -> bool:
    """Whether ``opt`` evaluates the loss again within a step (``step(closure)``, as torch.optim.LBFGS)."""
    return isinstance(opt, rc.HyperOptimizer) and opt.levels[0].optimizer.needs_closure


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def searched_best(workload, trials, device, storage):
    """The best trial of the two Optuna searches (seed 0), kept in
    ``storage`` (a rerun into the same folder reads them back): its
    validation loss, and a factory of its optimizer (torch.optim Adam or
    AdamW at the trial's parameters)."""
    task = workload.make(device)
    best, make = math.inf, None
    for optimizer, knobs, sampler in (("adam", ("lr",), "grid"), ("adamw", ("lr", "weight_decay"), "tpe")):
        study = run_search(task, optimizer=optimizer, knobs=knobs, sampler=sampler, trials=trials,
                           steps=workload.steps, batch_size=workload.batch, seed=0, hidden=workload.hidden,
                           storage=storage, study_name=f"{task.name}-{workload.steps}-{optimizer}-{sampler}")
        first = study.trials[:trials]  # (a stored study extended beyond ``trials`` is not a larger budget here)
        for trial in first:
            if trial.value is not None and math.isfinite(trial.value) and trial.value < best:
                best, make = trial.value, _trial_optimizer(optimizer, trial.params)
    if make is None:
        raise RuntimeError(f"tuning_free: every trial of the searches on {task.name} diverged; no reference")
    return best, make


def _trial_optimizer(name, params):
    """What the trial trained with: rc.baselines' ``name`` at the trial's parameters, at depth 0."""
    return lambda model_params: rc.HyperOptimizer(model_params, OPTIMIZERS[name](**params))


def main(argv=None):
    parser = study_parser(__doc__, "an eighth of the steps, 1 seed, 4-trial searches (about a minute)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--design", choices=sorted(DESIGNS), default="default",
                        help="what 'recurse default' and the sensitivity table run (default: rc.HyperOptimizer(params))")
    parser.add_argument("--start-lr", type=float, default=rc.defaults.START_LR,
                        help="the lr 'recurse default' starts from (default: the recommended tower's)")
    parser.add_argument("--no-sensitivity", action="store_true", help="leave out the table from other starting lrs")
    args = parser.parse_args(argv)
    design = DESIGNS[args.design]
    methods = {**METHODS, "recurse default": design(args.start_lr)}
    out = study_folder(args, "tuning_free")
    seeds, trials = ([0], 4) if args.quick else ([0, 1, 2], 16)
    workloads = {name: WORKLOADS[name] for name in args.tasks}
    if args.quick:
        workloads = {name: Workload(w.task, w.hidden, w.batch, max(20, w.steps // 8), w.options)
                     for name, w in workloads.items()}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results, curves, learned = [], {}, {}
    for name, workload in progress(workloads.items(), args, "tasks"):
        reference, best_trial = searched_best(workload, trials, args.device, f"sqlite:///{out / 'searches.db'}")
        # The best of 2 x trials noisy runs on seed 0 is lower than its configuration's mean over seeds (the
        # winner's curse): its configuration is also re-run on the methods' seeds and batches.
        rerun = statistics.fmean(train(workload, best_trial, seed, args.device)[0][-1][1] for seed in seeds)
        for method in args.methods:
            runs = [train(workload, methods[method], seed, args.device) for seed in seeds]
            finals = [curve[-1][1] for curve, _, _ in runs]
            loss = statistics.fmean(finals)
            results.append({"task": name, "method": method, "valid_loss": loss,
                            "valid_loss_std": _spread(finals),
                            "over_best_trial": loss / reference, "best_trial": reference,
                            "over_best_rerun": loss / rerun, "best_rerun": rerun,
                            "seconds_per_step": statistics.fmean(seconds for _, seconds, _ in runs)})
            curves[(name, method)] = runs[0][0]
            if method == "recurse default":
                learned[name] = runs[0][2]
        adam = next(row["seconds_per_step"] for row in results if row["task"] == name and row["method"] == "Adam 1e-3"
                    ) if "Adam 1e-3" in args.methods else None
        for row in results:
            if row["task"] == name and adam:
                row["time_over_adam"] = row["seconds_per_step"] / adam
    sensitivity = []
    for name, workload in progress({} if args.no_sensitivity else workloads.items(), args, "sensitivity"):
        losses = {lr: statistics.fmean(train(workload, design(lr), seed, args.device)[0][-1][1] for seed in seeds)
                  for lr in SENSITIVITY_LRS}
        sensitivity.append({"task": name, **{f"lr {lr:g}": value for lr, value in losses.items()},
                            "spread": max(losses.values()) / min(losses.values())})
    summary = []
    for method in args.methods:
        ratios = {row["task"]: row["over_best_trial"] for row in results if row["method"] == method}
        reruns = {row["task"]: row["over_best_rerun"] for row in results if row["method"] == method}
        worst = max(ratios, key=ratios.get)
        times = [row.get("time_over_adam", math.nan) for row in results if row["method"] == method]
        finite_times = all(math.isfinite(t) for t in times)
        summary.append({"method": method, "geometric_mean": statistics.geometric_mean(ratios.values()),
                        "worst_task": worst, "worst_ratio": ratios[worst],
                        "geometric_mean_over_rerun": statistics.geometric_mean(reruns.values()),
                        "worst_task_over_rerun": max(reruns, key=reruns.get), "worst_over_rerun": max(reruns.values()),
                        "time_over_adam": statistics.geometric_mean(times) if finite_times else math.nan})
    draw(out, curves, learned, workloads)
    lines = [f"Validation loss over the best of 2 Optuna searches ({trials}x the budget of one run); recurse "
             f"default is the design {args.design!r}:", "",
             "| method | " + " | ".join(workloads) + " | geometric mean | worst | time / Adam |",
             "|---|" + "---|" * (len(workloads) + 3)]
    by_run = {(row["method"], row["task"]): row for row in results}
    for row in summary:
        cells = [f"{by_run[row['method'], t]['over_best_trial']:.2f}" for t in workloads]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['geometric_mean']:.2f} | "
                     f"{row['worst_task']} {row['worst_ratio']:.2f} | {row['time_over_adam']:.2f} |")
    lines += ["", f"The same over the best trial's configuration re-run on the methods' {len(seeds)} seed(s) "
              "(its seed-0 loss, and the mean over the seeds):", "",
              "| method | " + " | ".join(workloads) + " | geometric mean | worst |",
              "|---|" + "---|" * (len(workloads) + 2)]
    for row in summary:
        cells = [f"{by_run[row['method'], t]['over_best_rerun']:.2f}" for t in workloads]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['geometric_mean_over_rerun']:.2f} | "
                     f"{row['worst_task_over_rerun']} {row['worst_over_rerun']:.2f} |")
    lines.append("| (best trial: seed 0, mean over seeds) | " + " | ".join(
        f"{next(r['best_trial'] for r in results if r['task'] == t):.4f}, "
        f"{next(r['best_rerun'] for r in results if r['task'] == t):.4f}" for t in workloads) + " | | |")
    lines += ["", "The recommended tower from other starting lrs (validation loss; spread = worst / best):", "",
              "| task | " + " | ".join(f"lr {lr:g}" for lr in SENSITIVITY_LRS) + " | spread |",
              "|---|" + "---|" * (len(SENSITIVITY_LRS) + 1)]
    lines += [f"| {row['task']} | " + " | ".join(f"{row[f'lr {lr:g}']:.4f}" for lr in SENSITIVITY_LRS) +
              f" | {row['spread']:.2f} |" for row in sensitivity]
    tables = {"results": results, "summary": summary, "sensitivity": sensitivity}
    if not sensitivity:
        (out / "sensitivity.csv").unlink(missing_ok=True)  # (not an earlier run's beside this one's results)
    publish(out, "\n".join(lines), {name: rows for name, rows in tables.items() if rows})
    (out / "results.json").write_text(json.dumps({"design": args.design, "start_lr": args.start_lr,
                                                  "results": results, "summary": summary,
                                                  "sensitivity": sensitivity}, indent=1))
    written = ", ".join(f"{name}.csv" for name, rows in tables.items() if rows)
    print(f"\nwrote {out}/{written}, results.json, summary.md, curves.png, learned_lr.png")
    return results, summary, sensitivity


def draw(out, curves, learned, workloads):
    with saved_figure(out / "curves.png", 1, len(workloads), figsize=(4.5 * len(workloads), 3.5)) as (_, axes):
        for axis, name in zip(axes if len(workloads) > 1 else [axes], workloads):
            for (task, method), curve in curves.items():
                if task == name:
                    axis.plot([step for step, _ in curve], [loss for _, loss in curve], label=method)
            axis.set(title=name, xlabel="gradient evaluations", ylabel="validation loss", yscale="log")
        (axes[0] if len(workloads) > 1 else axes).legend(fontsize=6)
    with saved_figure(out / "learned_lr.png", 1, 1, figsize=(5, 3.5)) as (_, axis):
        for name, lrs in learned.items():
            axis.plot(range(1, len(lrs) + 1), lrs, label=name)
        axis.set(xlabel="step", ylabel="level-0 lr (recommended tower)", yscale="log")
        axis.legend(fontsize=7)


if __name__ == "__main__":
    main()
