"""Optuna searches over an optimizer's hyperparameters on a recurse task.

    study = rc.baselines.run_search(Digits(), optimizer="sgd", sampler="tpe", trials=16, steps=300,
                                    storage="sqlite:///results/optuna.db")

Every trial trains with fixed hyperparameters through
:func:`recurse.baselines.training.train`, so its cost is counted in the same
currency as a recurse tower's (gradient evaluations, stored per trial as the
user attribute ``gradient_evaluations``). A diverging trial is marked FAIL
with its reason (user attribute ``fail_reason``) and the study goes on.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

import recurse as rc
from recurse.baselines.storage import open_storage
from recurse.baselines.training import Diverged, train
from recurse.problems.supervised import SupervisedTask

log = logging.getLogger("recurse")

FAIL_REASON = "fail_reason"
GRADIENT_EVALUATIONS = "gradient_evaluations"


@dataclass(frozen=True)
class Knob:
    """One searched hyperparameter: a range, sampled on a log scale or not.

    >>> rc.baselines.Knob("lr", 1e-4, 1.0)              # sampled log-uniformly
    Knob(name='lr', low=0.0001, high=1.0, log=True)
    """

    name: str
    low: float
    high: float
    log: bool = True

    def grid(self, count: int) -> list[float]:
        """``count`` evenly spaced values from low to high (geometrically when ``log``)."""
        if count == 1:
            return [math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2]
        if self.log:
            ratio = math.log(self.high / self.low)
            values = [self.low * math.exp(ratio * i / (count - 1)) for i in range(count)]
        else:
            values = [self.low + (self.high - self.low) * i / (count - 1) for i in range(count)]
        values[0], values[-1] = self.low, self.high  # exact ends: no float drift outside the range
        return [float(f"{value:.6g}") if 0 < i < count - 1 else value for i, value in enumerate(values)]


def _sgd(lr: float = 0.01, momentum: float = 0.0, **options) -> rc.Optimizer:
    return rc.SGD(lr, momentum=momentum, **options)


def _adam(lr: float = 1e-3, beta1: float = 0.9, **options) -> rc.Optimizer:
    return rc.Adam(lr, betas=(beta1, 0.999), **options)


def _adamw(lr: float = 1e-3, weight_decay: float = 1e-2, **options) -> rc.Optimizer:
    return rc.AdamW(lr, weight_decay=weight_decay, **options)


def _newton(lr: float = 1.0, damping: float = 1.0, **options) -> rc.Optimizer:
    return rc.Newton(lr, damping=damping, method="cg", cg_iterations=10, **options)


OPTIMIZERS: dict[str, Callable[..., rc.Optimizer]] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw, "newton": _newton}
SEARCH_SPACES: dict[str, dict[str, Knob]] = {
    "sgd": {"lr": Knob("lr", 1e-3, 10.0), "momentum": Knob("momentum", 0.0, 0.99, log=False)},
    "adam": {"lr": Knob("lr", 1e-4, 1e-1), "beta1": Knob("beta1", 0.5, 0.99, log=False)},
    "adamw": {"lr": Knob("lr", 1e-4, 1e-1), "weight_decay": Knob("weight_decay", 1e-4, 1e-1)},
    "newton": {"lr": Knob("lr", 1e-2, 1.0), "damping": Knob("damping", 1e-3, 10.0)},
}
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving", "hyperband")


def search_space(optimizer: str, knobs: Sequence[str]) -> list[Knob]:
    """The searched ranges of ``knobs`` of ``optimizer`` (see ``SEARCH_SPACES``)."""
    if optimizer not in SEARCH_SPACES:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(SEARCH_SPACES)}")
    knobs = (knobs,) if isinstance(knobs, str) else tuple(knobs)
    unknown = [name for name in knobs if name not in SEARCH_SPACES[optimizer]]
    if unknown or not knobs:
        raise ValueError(f"cannot search {unknown or list(knobs)!r} of {optimizer}; expected a non-empty subset of "
                         f"{sorted(SEARCH_SPACES[optimizer])}")
    return [SEARCH_SPACES[optimizer][name] for name in knobs]


def grid_shape(trials: int, dimensions: int) -> int:
    """Points per knob so that a full grid has exactly ``trials`` cells."""
    per_knob = round(trials ** (1 / dimensions))
    if per_knob ** dimensions != trials:
        raise ValueError(f"a grid over {dimensions} knob(s) needs a trial count that is a perfect "
                         f"{dimensions}-th power (4, 9, 16, ...), got trials={trials!r}")
    return per_knob


def make_sampler(name: str, space: list[Knob], trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler. TPE starts from max(4, trials // 4) random trials
    (Optuna's default of 10 would leave little for TPE in a 16-trial study)."""
    if name == "grid":
        per_knob = grid_shape(trials, len(space))
        return optuna.samplers.GridSampler({knob.name: knob.grid(per_knob) for knob in space}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, trials // 4))
    raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}")


def make_pruner(name: str | None, steps: int, eval_every: int) -> optuna.pruners.BasePruner:
    """Pruners act on the validation losses each trial reports every ``eval_every`` steps."""
    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=steps // 4)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=steps)
    raise ValueError(f"unknown pruner {name!r}; expected one of {list(PRUNERS)}")


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that reached a verdict: completed, pruned, or failed by divergence.
    A trial failed because its worker died (no ``fail_reason``) is not one: it is run again.

    >>> import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = rc.baselines.run_search(rc.problems.make_task("regression"), sampler="random", trials=3, steps=20)
    >>> len(rc.baselines.finished_trials(study))
    3
    """
    return [trial for trial in study.get_trials(deepcopy=False)
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs)]


def gradient_evaluations(study: optuna.Study) -> int:
    """Gradient evaluations spent by every trial of the study, finished or not.

    >>> import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = rc.baselines.run_search(rc.problems.make_task("regression"), sampler="random", trials=3, steps=20)
    >>> rc.baselines.gradient_evaluations(study)       # 3 trials x 20 steps
    60
    """
    return sum(trial.user_attrs.get(GRADIENT_EVALUATIONS, 0) for trial in study.get_trials(deepcopy=False))


def run_search(task: SupervisedTask, *, optimizer: str = "sgd", knobs: Sequence[str] = ("lr",),
               sampler: str = "tpe", trials: int = 16, steps: int = 300, batch_size: int | None = 128,
               seed: int = 0, storage: str | optuna.storages.BaseStorage | None = None,
               study_name: str | None = None, pruner: str | None = None, eval_every: int | None = None,
               worker_trials: int | None = None, heartbeat_interval: int = 60,
               grace_period: int | None = None, hidden: int = 32) -> optuna.Study:
    """Search ``knobs`` of ``optimizer`` with an Optuna ``sampler`` until the
    study holds ``trials`` finished trials; return the study.

    Each trial trains ``task`` for ``steps`` steps (a model of width
    ``hidden`` initialised and batches drawn from ``seed``, the same for
    every trial) and returns its
    final validation loss. ``storage``: None keeps the study in memory; a URL
    opens (or resumes: ``load_if_exists``) a database study named
    ``study_name``. Rerunning an interrupted search resumes it; several
    workers on one database share it, each running at most ``worker_trials``
    trials (give each worker a share, and for random/TPE its own ``seed``).

    >>> import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = rc.baselines.run_search(rc.problems.make_task("regression"), sampler="random", trials=3, steps=20)
    >>> study.best_params["lr"] > 0, len(study.trials)
    (True, 3)
    """
    if trials < 1:
        raise ValueError(f"run_search: trials must be >= 1, got {trials!r}")
    space = search_space(optimizer, knobs)
    eval_every = eval_every or max(1, steps // 20)
    config = {"task": task.name, "optimizer": optimizer, "knobs": [knob.name for knob in space], "sampler": sampler,
              "steps": steps, "batch_size": batch_size}
    if hidden != 32:  # (studies stored before the option keep their config)
        config["hidden"] = hidden
    if sampler == "grid":  # the trial count sets the grid; other searches may be extended
        config["grid_trials"] = trials
    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = optuna.create_study(
        study_name=study_name or f"{task.name}-{optimizer}-{sampler}-seed{seed}", storage=storage,
        sampler=make_sampler(sampler, space, trials, seed), pruner=make_pruner(pruner, steps, eval_every),
        direction="minimize", load_if_exists=True,
    )
    check_same_config(study, config)
    resumed = len(study.trials)
    if resumed and sampler != "grid":  # (a fresh sampler seeded as before would draw the tried points again)
        study.sampler = make_sampler(sampler, space, trials, seed + resumed)

    def objective(trial: optuna.Trial) -> float:
        values = {knob.name: trial.suggest_float(knob.name, knob.low, knob.high, log=knob.log) for knob in space}

        def report(evaluations: int, valid_loss: float) -> None:
            trial.set_user_attr(GRADIENT_EVALUATIONS, evaluations)
            trial.report(valid_loss, evaluations)
            if evaluations < steps and trial.should_prune():  # a finished run keeps its value
                raise optuna.TrialPruned(f"pruned at gradient evaluation {evaluations} (validation loss "
                                         f"{valid_loss:.4g})")

        try:
            result = train(task, OPTIMIZERS[optimizer](**values), steps=steps, batch_size=batch_size, seed=seed,
                           eval_every=eval_every, on_eval=report, hidden=hidden)
        except Diverged as error:
            trial.set_user_attr(GRADIENT_EVALUATIONS, error.result.gradient_evaluations)
            trial.set_user_attr(FAIL_REASON, f"diverged: {error}")
            log.warning("trial %d with %s diverged: %s", trial.number, values, error)
            return math.nan  # Optuna marks a NaN objective FAIL and goes on
        trial.set_user_attr(GRADIENT_EVALUATIONS, result.gradient_evaluations)
        trial.set_user_attr("seconds", result.seconds)
        if result.valid_accuracy is not None:
            trial.set_user_attr("valid_accuracy", result.valid_accuracy)
        return result.final_valid_loss

    def stop_when_planned(study: optuna.Study, _trial) -> None:
        if len(finished_trials(study)) >= trials:
            study.stop()

    remaining = trials - len(finished_trials(study))
    if worker_trials is not None:
        remaining = min(remaining, worker_trials)
    if remaining > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=remaining, callbacks=[stop_when_planned])
    return study


def check_same_config(study: optuna.Study, config: dict) -> None:
    """A resumed study must be the same search; mixing two would corrupt both."""
    stored = study.user_attrs.get("recurse_config")
    if stored is None:
        study.set_user_attr("recurse_config", config)
    elif stored != config:
        changed = {key: (stored.get(key), value) for key, value in config.items() if stored.get(key) != value}
        raise ValueError(f"study {study.study_name!r} already holds a different search (stored vs. asked: "
                         f"{changed}); use another study name or output folder")


__all__ = ["FAIL_REASON", "GRADIENT_EVALUATIONS", "OPTIMIZERS", "PRUNERS", "SAMPLERS", "SEARCH_SPACES",
           "Knob", "finished_trials", "gradient_evaluations", "make_pruner", "make_sampler", "run_search",
           "search_space"]
