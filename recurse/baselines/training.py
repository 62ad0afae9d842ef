"""One training run, the single place where every method's cost is counted.

Every method in ``rc.baselines`` (a fixed optimizer, an online tower, one
Optuna trial) trains through :func:`train`, so "gradient evaluations" means
the same thing everywhere: one backward pass of the task loss on one
mini-batch. The hypergradient VJPs of a tower are not gradient evaluations
of the task; their cost shows in wall time, reported beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import recurse as rc
from recurse.problems.supervised import SupervisedTask


class Diverged(RuntimeError):
    """A run whose loss stopped being finite; ``str(error)`` says where and why.

    >>> task = rc.problems.make_task("regression")
    >>> rc.baselines.train(task, rc.SGD(1e6), steps=50, hidden=8)
    Traceback (most recent call last):
    ...
    recurse.baselines.training.Diverged: validation loss inf at gradient evaluation 4
    """


@dataclass
class TrainingResult:
    """What one run measured. ``curve`` holds (gradient evaluations, validation loss).

    >>> task = rc.problems.make_task("regression")
    >>> result = rc.baselines.train(task, rc.SGD(0.1), steps=20, hidden=8)
    >>> result.gradient_evaluations, len(result.curve), result.final_valid_loss < result.curve[0][1]
    (20, 20, True)
    """

    curve: list[tuple[int, float]] = field(default_factory=list)
    final_valid_loss: float = math.nan
    best_valid_loss: float = math.nan
    valid_accuracy: float | None = None
    gradient_evaluations: int = 0
    seconds: float = 0.0
    nonfinite_steps: int = 0
    hyperparameters: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def record(self, task: SupervisedTask, model, on_eval) -> None:
        """Measure the validation loss now; raise Diverged if it is not finite."""
        valid_loss = task.valid_loss(model)
        if not math.isfinite(valid_loss):
            raise self.diverged(f"validation loss {valid_loss} at gradient evaluation {self.gradient_evaluations}")
        self.curve.append((self.gradient_evaluations, valid_loss))
        if on_eval is not None:
            on_eval(self.gradient_evaluations, valid_loss)

    def diverged(self, reason: str) -> "Diverged":
        """A Diverged error carrying this (partial) result."""
        error = Diverged(reason)
        error.result = self
        return error

    def finish(self, task: SupervisedTask, model, seconds: float, nonfinite_steps: int) -> "TrainingResult":
        self.seconds, self.nonfinite_steps = seconds, nonfinite_steps
        self.final_valid_loss = self.curve[-1][1]
        self.best_valid_loss = min(loss for _, loss in self.curve)
        self.valid_accuracy = task.valid_accuracy(model)
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingResult":
        data = dict(data)
        data["curve"] = [tuple(point) for point in data["curve"]]
        return cls(**data)


def train(task: SupervisedTask, optimizer: rc.Optimizer, *, steps: int, batch_size: int | None = 128,
          seed: int = 0, hidden: int = 32, eval_every: int | None = None, patience: int = 10,
          on_eval: Callable[[int, float], None] | None = None) -> TrainingResult:
    """Train ``task.model(hidden, seed=seed)`` for ``steps`` mini-batch steps with
    ``optimizer`` (any recurse optimizer or tower) run by a HyperOptimizer.

    The validation loss is measured every ``eval_every`` steps (default
    steps // 20) and at the end, and passed to ``on_eval(gradient
    evaluations, validation loss)``, which may raise (an Optuna pruner does).
    Raises :class:`Diverged` when ``patience`` consecutive steps were
    rolled back by the non-finite guard or the validation loss is not
    finite; ``error.result`` then holds what was measured up to there.

    >>> task = rc.problems.make_task("regression")
    >>> result = rc.baselines.train(task, rc.SGD(0.1, hyper=rc.SGD(1e-3, normalize="rms")), steps=20, hidden=8)
    >>> sorted(result.hyperparameters)
    ['0.lr']
    """
    if steps < 1:
        raise ValueError(f"train: steps must be >= 1, got {steps!r}")
    eval_every = eval_every or max(1, steps // 20)
    model = task.model(hidden, seed=seed)
    opt = rc.HyperOptimizer(model.parameters(), optimizer, guard="skip", record_history=True)
    batches = task.batches(batch_size, seed=seed)
    result = TrainingResult()
    consecutive_rollbacks = 0
    start = time.perf_counter()
    second_order = opt.levels[0].optimizer.needs_loss_graph
    for step in range(1, steps + 1):
        inputs, targets = next(batches)
        opt.zero_grad()
        rolled_back = opt.nonfinite_steps
        if second_order:
            loss = _second_order_step(opt, lambda: task.loss(model, inputs, targets), result)
        else:
            loss = task.loss(model, inputs, targets)
            loss.backward()
            result.gradient_evaluations += 1
            opt.step()
        consecutive_rollbacks = consecutive_rollbacks + 1 if opt.nonfinite_steps > rolled_back else 0
        result.seconds, result.nonfinite_steps = time.perf_counter() - start, opt.nonfinite_steps
        if consecutive_rollbacks >= patience:
            raise result.diverged(f"{patience} consecutive steps rolled back as non-finite (training loss "
                                  f"{loss.item():.3g}) by gradient evaluation {result.gradient_evaluations}")
        if step % eval_every == 0 or step == steps:
            result.record(task, model, on_eval)
    result.hyperparameters = opt.history()
    return result.finish(task, model, time.perf_counter() - start, opt.nonfinite_steps)


def _second_order_step(opt, loss_of_batch, result: TrainingResult):
    """One step of an optimizer that differentiates the loss again (Newton):
    its cost is one gradient plus two gradient evaluations per Hessian-vector
    product (Pearlmutter's trick costs about a forward and a backward pass)."""
    level = opt.levels[0]
    before = level.state["hessian_vector_products"] if level.state else 0
    try:
        loss = opt.step(loss_of_batch)
    except ValueError as error:  # an indefinite Hessian: this run cannot take its step
        raise result.diverged(str(error)) from None
    after = level.state["hessian_vector_products"] if level.state else 0
    result.gradient_evaluations += 1 + 2 * (after - before)
    return loss


def train_unrolled(task: SupervisedTask, optimizer: rc.Optimizer, meta_optimizer: rc.Optimizer, *, steps: int,
                   unroll_steps: int = 20, batch_size: int | None = 128, seed: int = 0, hidden: int = 32,
                   patience: int = 3, on_eval: Callable[[int, float], None] | None = None) -> TrainingResult:
    """Train for ``steps`` inner steps with ``optimizer``, whose learnable
    hyperparameters ``meta_optimizer`` learns from ``unroll_steps``-step
    unrolls (an ``rc.MetaTrainer`` of depth 1; the parameters carry forward
    between unrolls). Gradient evaluations: one per inner step plus one per
    meta-gradient (its backward pass runs through the whole unroll, which the
    wall time shows). Validation after every meta-step."""
    if steps < unroll_steps:
        raise ValueError(f"train_unrolled: steps ({steps}) must cover one unroll of {unroll_steps}")
    model = task.model(hidden, seed=seed)
    objective = rc.model_objective(model, task.criterion, task.batch_at(batch_size, seed=seed))
    trainer = rc.MetaTrainer(list(model.parameters()), objective, [optimizer, meta_optimizer],
                             unroll_steps=[unroll_steps])
    result = TrainingResult(hyperparameters={f"0.{name}": [] for name in optimizer.learnable})
    start = time.perf_counter()
    rolled_back = 0
    while trainer.inner_step + unroll_steps <= steps:
        before = trainer.nonfinite_steps
        trainer.meta_step()
        rolled_back = rolled_back + 1 if trainer.nonfinite_steps > before else 0
        result.gradient_evaluations += unroll_steps + 1
        result.seconds, result.nonfinite_steps = time.perf_counter() - start, trainer.nonfinite_steps
        if rolled_back >= patience:
            raise result.diverged(f"{patience} consecutive meta-steps rolled back as non-finite by gradient "
                                  f"evaluation {result.gradient_evaluations}")
        for name, value in trainer.hyperparameters().items():
            if name in result.hyperparameters:
                result.hyperparameters[name].append(value)
        result.record(task, model, on_eval)
    return result.finish(task, model, time.perf_counter() - start, trainer.nonfinite_steps)
