"""recurse side by side with Optuna on the user's own model and loop.

The user writes the objective the way Optuna users already do, taking the
optimizer to train with from the library:

    def objective(make_optimizer, seed):
        torch.manual_seed(seed)
        model = Net(); opt = make_optimizer(model.parameters())
        for inputs, targets in loader:                 # the user's own DataLoader and loop
            opt.zero_grad(); loss_fn(model(inputs), targets).backward(); opt.step()
        return validation_loss(model)                  # a float

    rows = rc.compare(objective, towers={"depth2": rc.tower(rc.Adam(1e-3), depth=2)},
                      space={"lr": (1e-4, 1.0, "log")}, optimizer=torch.optim.Adam,
                      samplers=("grid", "random", "tpe"), trials=16, seeds=[0, 1, 2], out="results/mine")

Each tower runs once per seed through ``rc.HyperOptimizer(params, tower)``;
each sampler runs an Optuna study of ``trials`` trials per seed, each
trial training with ``optimizer(params, **suggested)``. Gradient evaluations
are the optimizer's ``step`` calls, counted by a step hook on whatever
``make_optimizer`` returned; every run must take as many as the first, so
that a search spends exactly ``trials`` times one tower run (asserted). (An
optimizer that evaluates the loss several times a step, LBFGS or rc.VSGD,
is counted by its steps.) A study is named after the objective
(``study_name=`` to choose), so that two objectives share a storage
without mixing their trials. With the default ``heartbeat_interval`` of 60
s, a trial of a killed worker is stale, and rerun, once two minutes have
passed.

A run whose objective returns a non-finite value diverged: it is recorded
as failed, with that reason (a trial as a failed Optuna trial). A NaN from
a model that did not diverge (every parameter and gradient the optimizers
hold is finite) is a bug in the objective, an empty validation set's 0/0
say, and is refused with an error naming it; an objective whose model
diverged without a non-finite parameter says so by returning ``math.inf``. The studies
live in ``out``'s SQLite database (or ``storage``, any Optuna storage URL),
and a rerun into the same folder or storage finishes what is missing.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch
from tqdm.auto import tqdm

import recurse as rc
from recurse.baselines.comparison import MethodRun, search_run, summary_rows, write_report
from recurse.baselines.search import (FAIL_REASON, GRADIENT_EVALUATIONS, SAMPLERS, Knob, check_same_config,
                                     finished_trials, grid_shape, make_sampler)
from recurse.baselines.storage import open_storage, sqlite_url
from recurse.baselines.training import TrainingResult
from recurse.optim.base import described

Objective = Callable[[Callable[[Any], torch.optim.Optimizer], int], float]


class _Run:
    """One call of the objective: the optimizers it built and the steps they took."""

    def __init__(self, build: Callable[[Any], torch.optim.Optimizer]) -> None:
        self.build, self.optimizers, self.steps = build, [], 0

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        optimizer = self.build(params)
        optimizer.register_step_post_hook(self._count)
        self.optimizers.append(optimizer)
        return optimizer

    def _count(self, optimizer, args, kwargs) -> None:
        self.steps += 1

    def __call__(self, objective: Objective, seed: int, what: str) -> tuple[float, float]:
        """(the objective's value, seconds); a clear error where the
        objective misbehaves."""
        start = time.perf_counter()
        value = objective(self.make_optimizer, seed)
        seconds = time.perf_counter() - start
        if not self.optimizers:
            raise ValueError(f"rc.compare: the objective never called make_optimizer ({what}); it must build the "
                             "optimizer it trains with from make_optimizer(model.parameters())")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"rc.compare: the objective must return a number (the loss to minimise), got "
                            f"{described(value)} {value!r} ({what})")
        if math.isnan(value) and not self._diverged():
            raise ValueError(f"rc.compare: the objective returned nan ({what}) although every parameter and gradient "
                             "its optimizer holds is finite and it skipped no step, so the model did not diverge: "
                             "look for a 0/0 in the objective (an empty validation set?); a run that diverged "
                             "should return math.inf")
        return float(value), seconds

    def _diverged(self) -> bool:
        """Whether a parameter the optimizers train, or its gradient, is not
        finite, or an rc.HyperOptimizer skipped a non-finite step (its guard
        keeps the parameters finite while the run diverges)."""
        if any(getattr(optimizer, "nonfinite_steps", 0) for optimizer in self.optimizers):
            return True
        tensors = [tensor for optimizer in self.optimizers for group in optimizer.param_groups
                   for param in group["params"] for tensor in (param, param.grad) if tensor is not None]
        return not all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


def _space(space: Mapping[str, tuple]) -> list[Knob]:
    """``{"lr": (1e-4, 1.0, "log"), "momentum": (0.0, 0.99, "linear")}`` as Knobs."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"rc.compare: space must name at least one keyword of the optimizer, as "
                         f"{{'lr': (1e-4, 1.0, 'log')}}; got {space!r}")
    knobs = []
    for name, entry in space.items():
        if not (isinstance(entry, tuple) and len(entry) in (2, 3)):
            raise ValueError(f"rc.compare: space[{name!r}] must be (low, high) or (low, high, 'log' | 'linear'), "
                             f"got {entry!r}")
        low, high, scale = (*entry, "log") if len(entry) == 2 else entry
        if scale not in ("log", "linear") or not (isinstance(low, numbers.Real) and isinstance(high, numbers.Real)
                                                  and low < high and (scale == "linear" or low > 0)):
            raise ValueError(f"rc.compare: space[{name!r}] must be low < high (low > 0 on a log scale) with scale "
                             f"'log' or 'linear', got {entry!r}")
        knobs.append(Knob(name, float(low), float(high), log=scale == "log"))
    return knobs


def compare_objective(objective: Objective, *, towers: Mapping[str, rc.Optimizer], space: Mapping[str, tuple],
                      optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                      samplers: Sequence[str] = SAMPLERS, trials: int = 16, seeds: Sequence[int] = (0, 1, 2),
                      out: str | Path | None = None, storage: str | None = None, heartbeat_interval: int = 60,
                      study_name: str | None = None, quiet: bool = False) -> list[dict]:
    """Every tower and every sampler's search on the user's ``objective``,
    per seed (see the module docstring). Returns one row per method:
    ``method``, ``loss`` (mean over seeds), ``loss_std``,
    ``gradient_evaluations``, ``seconds``, ``failed_runs``,
    ``failed_trials``; with ``out``, the same tables and plots as
    :func:`recurse.baselines.comparison.compare` are written there. A
    worker killed mid-study leaves a running trial that its heartbeat (every
    ``heartbeat_interval`` seconds) marks stale; a rerun runs its
    parameters again, once."""
    samplers = list(samplers)
    unknown = [name for name in samplers if name not in SAMPLERS]
    if unknown:
        raise ValueError(f"rc.compare: unknown sampler(s) {unknown}; expected some of {list(SAMPLERS)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"rc.compare: trials must be an integer >= 1, got {trials!r}")
    knobs = _space(space)
    if "grid" in samplers:
        grid_shape(trials, len(knobs))  # (a grid over d knobs needs trials = n^d: said before any run)
    _check_keywords(optimizer, knobs)
    name_of_study = study_name or getattr(objective, "__name__", "objective")
    for name, tower in towers.items():
        if not isinstance(tower, rc.Optimizer):
            raise TypeError(f"rc.compare: towers[{name!r}] must be an rc optimizer (a tower), got {described(tower)}")
    if not callable(optimizer):
        raise TypeError(f"rc.compare: optimizer must be a torch.optim class, got {described(optimizer)}")
    out = Path(out) if out is not None else None
    if storage is None and out is not None:
        storage = sqlite_url(out)
    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat_interval=heartbeat_interval)
    runs, studies, budget = [], {}, {}
    jobs = [(name, seed) for seed in seeds for name in [*towers, *samplers]]
    for name, seed in tqdm(jobs, desc="compare on the objective", disable=quiet):
        if name in towers:
            runs.append(_tower_run(objective, name, towers[name], seed, budget))
        else:
            run, studies[(name, seed)] = _search(objective, name_of_study, name, knobs, optimizer, trials, seed,
                                                 storage, budget)
            runs.append(run)
    rows = [{"method": row["method"], "loss": row["valid_loss_mean"], "loss_std": row["valid_loss_std"],
             "gradient_evaluations": row["gradient_evaluations"], "seconds": row["seconds"],
             "failed_runs": row["failed_runs"], "failed_trials": row["failed_trials"]} for row in summary_rows(runs)]
    if out is not None:
        config = {"task": getattr(objective, "__name__", "objective"), "optimizer": described(optimizer),
                  "towers": {name: repr(tower) for name, tower in towers.items()},
                  "space": {name: list(entry) for name, entry in space.items()}, "samplers": samplers,
                  "trials": trials, "steps": budget.get("steps"), "seeds": list(seeds), "recurse": rc.__version__}
        write_report(out, config, runs, studies)
    return rows


def _check_keywords(optimizer, knobs: list[Knob]) -> None:
    """The optimizer takes every searched keyword (tried on a dummy parameter at each low end)."""
    try:
        optimizer([torch.zeros(1, requires_grad=True)], **{knob.name: knob.low for knob in knobs})
    except TypeError as error:
        raise ValueError(f"rc.compare: the space names {[knob.name for knob in knobs]}, which "
                         f"{described(optimizer)} does not take all of: {error}") from None


def _same_budget(budget: dict, steps: int, what: str) -> None:
    """Every run takes as many steps as the first one (``budget["steps"]``)."""
    expected = budget.setdefault("steps", steps)
    if steps != expected:
        raise ValueError(f"rc.compare: {what} took {steps} optimizer steps, the first run {expected}; the objective "
                         "must take the same number of steps whatever optimizer it is given, so that the budgets "
                         "are equal (a GradScaler that skips a step, or stepping on some batches only, changes "
                         "the count)")


def _tower_run(objective: Objective, name: str, tower: rc.Optimizer, seed: int, budget: dict) -> MethodRun:
    run = _Run(lambda params: rc.HyperOptimizer(params, tower, record_history=True))
    value, seconds = run(objective, seed, f"tower {name!r}, seed {seed}")
    _same_budget(budget, run.steps, f"tower {name!r} (seed {seed})")
    history = run.optimizers[0].history()
    result = TrainingResult(curve=[(run.steps, value)], final_valid_loss=value, best_valid_loss=value,
                            gradient_evaluations=run.steps, seconds=seconds, hyperparameters=history)
    failed = None if math.isfinite(value) else f"the objective returned {value}"
    return MethodRun(name, seed, result, failed=failed)


def _search(objective: Objective, name: str, sampler: str, knobs: list[Knob], optimizer, trials: int, seed: int,
            storage: str | None, budget: dict) -> tuple[MethodRun, optuna.Study]:
    """An Optuna study of ``trials`` trials, named after the objective
    (resumed from ``storage`` where it exists: the trials stored must have
    taken the steps the runs take now)."""
    study = optuna.create_study(study_name=f"{name}-{sampler}-seed{seed}", storage=storage,
                                sampler=make_sampler(sampler, knobs, trials, seed), load_if_exists=True)
    config = {"objective": name, "space": [[knob.name, knob.low, knob.high, knob.log] for knob in knobs],
              "optimizer": described(optimizer), "sampler": sampler}
    if sampler == "grid":  # (the trial count sets the grid; another search may be extended)
        config["grid_trials"] = trials
    check_same_config(study, config)
    for trial in finished_trials(study):
        if GRADIENT_EVALUATIONS in trial.user_attrs:
            _same_budget(budget, trial.user_attrs[GRADIENT_EVALUATIONS], f"stored {sampler} trial {trial.number}")
    resumed = len(study.trials)
    if resumed and sampler != "grid":  # (a fresh sampler seeded as before would draw the tried points again)
        study.sampler = make_sampler(sampler, knobs, trials, seed + resumed)
    if sampler == "grid":
        requeue_failed_cells(study)

    def trial_objective(trial: optuna.Trial) -> float:
        values = {knob.name: trial.suggest_float(knob.name, knob.low, knob.high, log=knob.log) for knob in knobs}
        run = _Run(lambda params: optimizer(params, **values))
        value, seconds = run(objective, seed, f"{sampler} trial {trial.number}, seed {seed}")
        _same_budget(budget, run.steps, f"{sampler} trial {trial.number} (seed {seed})")
        trial.set_user_attr(GRADIENT_EVALUATIONS, run.steps)  # (only once the run is known to count)
        trial.set_user_attr("seconds", seconds)
        if not math.isfinite(value):
            trial.set_user_attr(FAIL_REASON, f"the objective returned {value}")
            return math.nan  # (Optuna marks a NaN trial failed, and the study goes on; an inf would complete)
        return value

    def stop_when_planned(study: optuna.Study, _trial) -> None:
        if len(finished_trials(study)) >= trials:
            study.stop()

    missing = trials - len(finished_trials(study))
    if missing > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(trial_objective, n_trials=missing, callbacks=[stop_when_planned])
    return search_run(study, sampler, seed), study


def requeue_failed_cells(study: optuna.Study) -> None:
    """Enqueue again the grid cells of trials that failed with an error (not
    by divergence: those have a ``fail_reason``) and that no later trial
    finished: Optuna's GridSampler counts a failed trial's cell as visited,
    so after the objective is mended that cell would never run."""
    done = {tuple(sorted(trial.params.items())) for trial in finished_trials(study)}
    waiting = {tuple(sorted(trial.params.items())) for trial in study.get_trials(deepcopy=False)
               if trial.state == optuna.trial.TrialState.WAITING}
    for trial in study.get_trials(deepcopy=False):
        cell = tuple(sorted(trial.params.items()))
        if (trial.state == optuna.trial.TrialState.FAIL and FAIL_REASON not in trial.user_attrs and trial.params
                and cell not in done and cell not in waiting):
            study.enqueue_trial(dict(trial.params))
            waiting.add(cell)
