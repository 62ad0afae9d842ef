"""recurse side by side with Optuna on one task, one budget, several seeds.

    rows = rc.baselines.compare("digits", methods=["fixed", "depth1", "depth2", "unroll10", "grid", "random", "tpe"],
                                optimizer="sgd", budget=3200, steps=200, seeds=[0, 1, 2], out="results/compare")

Methods (all of one base ``optimizer``: "sgd", "adam", "adamw", or "newton", damped
Newton with 10 CG iterations per step, whose Hessian-vector products are
counted as two gradient evaluations each):

- ``fixed``: the optimizer at its starting hyperparameters, one run.
- ``depthN``: an online tower of depth N started from the same values; the
  levels above 0 are SGD on the log learning rate with RMS-normalised
  hypergradients (see ``tower_optimizer``). One run.
- ``unrollK`` (e.g. ``unroll20``): the unrolled engine: level 0's lr is
  learned by Adam(0.1) on its log from K-step unrolls (``rc.MetaTrainer``),
  the parameters carrying forward; ``steps`` inner steps in all, one run.
- ``grid``, ``random``, ``tpe``: an Optuna study over the same knobs with
  ``budget // steps`` trials of ``steps`` steps each; reported by its best
  trial.

Every run trains through :func:`recurse.baselines.training.train`, so
gradient evaluations are counted by one piece of code for every method. A
first-order run of ``steps`` steps costs ``steps`` evaluations whatever it
learns, and a search of ``budget // steps`` such runs costs ``budget``; a
Newton step costs one gradient plus two evaluations per Hessian-vector
product, and the table reports what each method really spent. Results are cached in ``out`` (runs/*.json and the
Optuna SQLite database), so rerunning with the same folder resumes.
"""

from __future__ import annotations

import json
import re
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import optuna
from tqdm.auto import tqdm

import recurse as rc
from recurse.baselines.search import (
    FAIL_REASON,
    OPTIMIZERS,
    SAMPLERS,
    finished_trials,
    gradient_evaluations,
    run_search,
)
from recurse.baselines.storage import sqlite_url
from recurse.baselines.training import Diverged, TrainingResult, train, train_unrolled
from recurse.problems import make_task
from recurse.problems.supervised import SupervisedTask
from recurse.reporting import cached, saved_figure, write_csv

START = {"sgd": {"lr": 0.01}, "adam": {"lr": 1e-3}, "adamw": {"lr": 1e-3}, "newton": {"lr": 1.0, "damping": 1.0}}
HYPER_LR = (0.05, 0.01)  # level 1, levels >= 2
UNROLL_META_LR = 0.1
DEFAULT_METHODS = ("fixed", "depth1", "depth2", "unroll10", "grid", "random", "tpe")


def tower_optimizer(optimizer: str, depth: int, *, start: dict | None = None) -> rc.Optimizer:
    """``optimizer`` at its starting values (``START``, or ``start``), under
    ``depth`` SGD levels that learn level 0's lr (level 1 at lr 0.05, higher
    levels at 0.01, each normalising its incoming hypergradient by its running
    RMS)."""
    start = START[optimizer] if start is None else start
    if depth == 0:
        return OPTIMIZERS[optimizer](**start)
    levels = [rc.SGD(HYPER_LR[0] if level == 1 else HYPER_LR[1], normalize="rms") for level in range(1, depth + 1)]
    return rc.stack(OPTIMIZERS[optimizer](**start, learn=("lr",)), *levels)


def parse_method(name: str) -> tuple[str, int | None]:
    """("search", None) for an Optuna sampler, ("tower", depth) for fixed or
    depthN, ("unroll", K) for unrollK."""
    if name in SAMPLERS:
        return "search", None
    if name == "fixed":
        return "tower", 0
    match = re.fullmatch(r"(depth|unroll)([0-9]+)", name)
    if match and int(match.group(2)) >= 1:
        return ("tower" if match.group(1) == "depth" else "unroll"), int(match.group(2))
    raise ValueError(f"unknown method {name!r}; expected 'fixed', 'depthN', 'unrollK' (N, K >= 1) or one of "
                     f"{list(SAMPLERS)}")


@dataclass
class MethodRun:
    """One method with one seed: the run (or the search's best trial)."""

    method: str
    seed: int
    result: TrainingResult
    failed: str | None = None
    search_curve: list[tuple[int, float]] = field(default_factory=list)  # (evaluations spent, best so far)
    failed_trials: int = 0


def run_tower(task: SupervisedTask, optimizer: str, depth: int, *, steps: int, batch_size: int | None,
              seed: int) -> MethodRun:
    method = "fixed" if depth == 0 else f"depth{depth}"
    try:
        result = train(task, tower_optimizer(optimizer, depth), steps=steps, batch_size=batch_size, seed=seed)
        return MethodRun(method, seed, result)
    except Diverged as error:
        return MethodRun(method, seed, error.result, failed=str(error))


def run_unrolled(task: SupervisedTask, optimizer: str, unroll_steps: int, *, steps: int, batch_size: int | None,
                 seed: int) -> MethodRun:
    method = f"unroll{unroll_steps}"
    base = OPTIMIZERS[optimizer](**START[optimizer], learn=("lr",))
    try:
        result = train_unrolled(task, base, rc.Adam(UNROLL_META_LR), steps=steps, unroll_steps=unroll_steps,
                                batch_size=batch_size, seed=seed)
        return MethodRun(method, seed, result)
    except Diverged as error:
        return MethodRun(method, seed, error.result, failed=str(error))


def run_optuna(task: SupervisedTask, optimizer: str, sampler: str, *, knobs: Sequence[str], budget: int, steps: int,
               batch_size: int | None, seed: int, storage: str | None) -> tuple[MethodRun, optuna.Study]:
    trials = budget // steps
    study = run_search(task, optimizer=optimizer, knobs=knobs, sampler=sampler, trials=trials, steps=steps,
                       batch_size=batch_size, seed=seed, storage=storage,
                       study_name=f"{task.name}-{optimizer}-{sampler}-seed{seed}")
    return search_run(study, sampler, seed), study


def search_run(study: optuna.Study, sampler: str, seed: int) -> MethodRun:
    """A finished search as one run: its best trial, what the whole search
    spent, the best loss so far against the evaluations spent, and the
    trials that failed by divergence."""
    completed = [t for t in finished_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    spent = gradient_evaluations(study)
    curve, best, total = [], float("inf"), 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        total += trial.user_attrs.get("gradient_evaluations", 0)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = min(best, trial.value)
        if best < float("inf"):
            curve.append((total, best))
    if not completed:
        return MethodRun(sampler, seed, TrainingResult(gradient_evaluations=spent), failed="every trial failed",
                         search_curve=curve)
    best_trial = min(completed, key=lambda t: t.value)
    result = TrainingResult(
        curve=[(spent, best_trial.value)], final_valid_loss=best_trial.value, best_valid_loss=best_trial.value,
        valid_accuracy=best_trial.user_attrs.get("valid_accuracy"), gradient_evaluations=spent,
        seconds=sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False)),
        hyperparameters={name: [value] for name, value in best_trial.params.items()},
    )
    failed = sum(1 for t in study.get_trials(deepcopy=False) if FAIL_REASON in t.user_attrs)
    return MethodRun(sampler, seed, result, search_curve=curve, failed_trials=failed)


def compare(task="digits", **options):
    """recurse side by side with Optuna, public as ``rc.compare``: on an
    ``rc.problems`` task (its name or a SupervisedTask;
    :func:`compare_task`), or on the user's own objective,
    ``objective(make_optimizer, seed) -> loss`` (a callable;
    :func:`recurse.baselines.objective.compare_objective`, which takes
    ``towers=``, ``space=``, ``optimizer=``, ``samplers=``, ``trials=``,
    and returns one summary row per method rather than the runs).

    >>> runs = rc.compare("regression", methods=["fixed", "random"], budget=40, steps=20, seeds=[0], quiet=True)
    >>> [(run.method, run.result.gradient_evaluations) for run in runs]
    [('fixed', 20), ('random', 40)]
    """
    if callable(task) and not isinstance(task, SupervisedTask):
        from recurse.baselines.objective import compare_objective  # (it builds on this module)

        return compare_objective(task, **options)
    return compare_task(task, **options)


def compare_task(task: str | SupervisedTask = "digits", *, methods: Sequence[str] = DEFAULT_METHODS,
                 optimizer: str = "sgd", knobs: Sequence[str] = ("lr",), budget: int = 3200, steps: int = 200,
                 batch_size: int | None = 128, seeds: Sequence[int] = (0, 1, 2), out: str | Path | None = None,
                 quiet: bool = False) -> list[MethodRun]:
    """Run every method with every seed on one task and one budget; with
    ``out``, cache and write ``summary.csv``, ``summary.md`` and the plots
    there (see :func:`write_report`).

        runs = rc.compare("digits", methods=["fixed", "depth2", "grid", "tpe"], seeds=[0, 1])

    Methods are described in this module's docstring; each run is one
    :class:`MethodRun` (a search's best trial, with what the whole search
    spent).

    >>> runs = rc.compare(rc.problems.LinearRegression(seed=0), methods=["fixed", "random"], budget=40, steps=20,
    ...                   seeds=[0], quiet=True)
    >>> [(run.method, run.result.gradient_evaluations) for run in runs]
    [('fixed', 20), ('random', 40)]
    """
    task = make_task(task) if isinstance(task, str) else task
    kinds = {name: parse_method(name) for name in methods}
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    if budget < steps:
        raise ValueError(f"budget ({budget} gradient evaluations) must cover at least one run of steps={steps}")
    out = Path(out) if out is not None else None
    storage = sqlite_url(out) if out is not None else None
    runs, studies = [], {}
    jobs = [(name, seed) for seed in seeds for name in methods]
    for name, seed in tqdm(jobs, desc=f"compare on {task.name}", disable=quiet):
        kind, size = kinds[name]  # tower depth or unroll length
        if kind == "search":
            run, studies[(name, seed)] = run_optuna(task, optimizer, name, knobs=knobs, budget=budget, steps=steps,
                                                    batch_size=batch_size, seed=seed, storage=storage)
        elif kind == "unroll":
            run = _cached(out, name, seed, lambda: run_unrolled(task, optimizer, size, steps=steps,
                                                                 batch_size=batch_size, seed=seed))
        else:
            run = _cached(out, name, seed, lambda: run_tower(task, optimizer, size, steps=steps,
                                                              batch_size=batch_size, seed=seed))
        runs.append(run)
    if out is not None:
        config = {"task": task.name, "methods": list(methods), "optimizer": optimizer, "knobs": list(knobs),
                  "budget": budget, "steps": steps, "batch_size": batch_size, "seeds": list(seeds),
                  "recurse": rc.__version__}
        write_report(out, config, runs, studies)
    return runs


def _cached(out: Path | None, method: str, seed: int, compute) -> MethodRun:
    """A run is deterministic given its seed: reuse a finished one from ``out``."""
    def as_dict():
        run = compute()
        return {"result": run.result.to_dict(), "failed": run.failed}

    data = cached(out, f"{method}-seed{seed}", as_dict)
    return MethodRun(method, seed, TrainingResult.from_dict(data["result"]), failed=data["failed"])


def summary_rows(runs: list[MethodRun]) -> list[dict]:
    """Per method: mean and std over seeds of the final validation loss and
    accuracy, gradient evaluations, wall seconds, failures."""
    rows = []
    for method in dict.fromkeys(run.method for run in runs):
        group = [run for run in runs if run.method == method]
        losses = [run.result.final_valid_loss for run in group if run.failed is None]
        accuracies = [run.result.valid_accuracy for run in group if run.failed is None
                      and run.result.valid_accuracy is not None]
        rows.append({
            "method": method,
            "seeds": len(group),
            "valid_loss_mean": statistics.mean(losses) if losses else float("nan"),
            "valid_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "valid_accuracy_mean": statistics.mean(accuracies) if accuracies else float("nan"),
            "valid_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "gradient_evaluations": statistics.mean(run.result.gradient_evaluations for run in group),
            "seconds": statistics.mean(run.result.seconds for run in group),
            "failed_runs": sum(run.failed is not None for run in group),
            "failed_trials": sum(run.failed_trials for run in group),
            "rollbacks": sum(run.result.nonfinite_steps for run in group),
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | validation loss, mean +- std | validation accuracy | gradient evaluations | seconds | "
             "failed runs | failed search trials | rolled-back steps |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['valid_loss_mean']:.4g} +- {row['valid_loss_std']:.2g} | "
            f"{row['valid_accuracy_mean']:.3f} +- {row['valid_accuracy_std']:.3f} | "
            f"{row['gradient_evaluations']:.0f} | {row['seconds']:.2f} | {row['failed_runs']} | "
            f"{row['failed_trials']} | {row['rollbacks']} |")
    return "\n".join(lines)


def write_report(out: Path, config: dict, runs: list[MethodRun], studies: dict) -> None:
    """config.json, summary.csv, summary.md, loss_vs_evaluations.png,
    hyperparameters.png and one optuna_history_<sampler>.png per search (seed of the first run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    rows = summary_rows(runs)
    write_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(markdown_table(rows) + "\n")

    first_seed = runs[0].seed
    with saved_figure(out / "loss_vs_evaluations.png") as (_, axis):
        for run in runs:
            if run.seed != first_seed:
                continue
            if run.search_curve:
                xs, ys = zip(*run.search_curve)
                axis.step(xs, ys, where="post", label=f"{run.method} (best trial so far)")
            elif run.result.curve:
                xs, ys = zip(*run.result.curve)
                axis.plot(xs, ys, label=run.method)
        axis.set(xscale="log", yscale="log", xlabel="gradient evaluations", ylabel="validation loss",
                 title=f"{config['task']}, {config['optimizer']}, seed {first_seed}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)

    # Level 0's learned values on the left, the levels above on the right, both against the training step:
    # an unrolled method records once per meta-step, drawn at the step its unroll ended.
    with saved_figure(out / "hyperparameters.png", 1, 2, figsize=(12, 4.5)) as (_, (level_zero, above)):
        for run in runs:
            if run.seed == first_seed and not run.search_curve:
                for name, values in run.result.hyperparameters.items():
                    every = config["steps"] / max(len(values), 1)
                    axis = level_zero if name.startswith("0.") else above
                    axis.plot([every * (index + 1) for index in range(len(values))], values,
                              label=f"{run.method}: {name}", marker="o" if every > 1 else None, markersize=3)
        for axis, what in ((level_zero, "level 0 (trains the model)"), (above, "levels 1 and up")):
            axis.set(yscale="log", xlabel="training step", ylabel="learned value",
                     title=f"Learned by {what}; {config['task']}, seed {first_seed}")
            axis.grid(alpha=0.3)
            if axis.lines:
                axis.legend(fontsize=8)

    import matplotlib.pyplot as plt  # after saved_figure chose the off-screen backend
    from matplotlib.ticker import MaxNLocator

    for (sampler, seed), study in studies.items():
        if seed != first_seed:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axis = optuna.visualization.matplotlib.plot_optimization_history(study)
        axis.set_yscale("log")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # (trials are counted in whole numbers)
        axis.set_title(f"Optuna {sampler}: study {study.study_name}")
        axis.set_ylabel("validation loss (the trial's objective)")
        axis.figure.set_size_inches(8, 4.5)
        axis.figure.tight_layout()
        axis.figure.savefig(out / f"optuna_history_{sampler}.png", dpi=120, bbox_inches="tight")
        plt.close(axis.figure)
