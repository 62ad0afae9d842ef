"""How the online engine takes a hypergradient: one small object per method.

Level k of a tower learns the hyperparameters h of level k - 1 (their
unconstrained ``raw`` entries, see :mod:`recurse.constraints`). Each step
the engine records the update u_t that level k - 1 just took, as a
function of h (:class:`UpdateRecord`), and at the next step turns the
vector that arrives from below (the model's gradient g_{t+1} for level 0)
into the hypergradient level k steps with. A *horizon* says how far back
that hypergradient looks, for level 0's hyperparameters:

- :class:`OneStep` (the default): G_{t+1} = g_{t+1} . d u_t / d h, the
  vector-Jacobian product through the last update only ("Gradient Descent:
  The Ultimate Optimizer"; hypergradient descent). It keeps that update's
  inputs (and its closed form or graph), nothing older.
- :class:`Decayed`: G_{t+1} = g_{t+1} . z_t with the forward-mode
  accumulator z_t = mu z_{t-1} + d u_t / d h of every past update, each
  taken at its own parameters, gradient and rule state (the exact
  recurrence's terms through the parameters, the Hessian, and through the
  rule's state, Adam's moments, are dropped, as in RTHO/MARTHE's
  truncation). mu = 0 is
  :class:`OneStep`; mu = 1 sums every past update (the longest horizon).
  It keeps the tangents z: one tensor the size of the model per learned
  hyperparameter (in at least float32, as learned values are kept), and
  no update's inputs; at most ``MAX_TANGENTS`` of them.

The levels above level 0 always take the one-step hypergradient. A horizon
is stateless: what it keeps lives in the engine, so one horizon object can
be given to any number of optimizers.

    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-3, learn="lr", hyper=rc.SGD(0.05, normalize="rms")),
                            horizon=rc.estimators.Decayed(0.99))

Independently, a *hypergradient loss* says which loss the incoming vector
g_{t+1} is the gradient of, for level 0's knobs:

- :class:`TrainingLoss` (the default): the training batch's, the very
  gradient the model steps with (free).
- :class:`HeldOut`: a held-out loss the user's closure computes (OHO, Im et
  al. 2021): the knobs then follow what the model does on data it does not
  train on, where training and validation loss disagree (overfitting), at
  the cost of one more forward and backward pass each ``every`` steps.

    opt = rc.HyperOptimizer(model.parameters(), hypergradient_loss=rc.estimators.HeldOut(
        lambda: loss_fn(model(held_inputs), held_targets), every=10))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

__all__ = ["Decayed", "HeldOut", "Horizon", "OneStep", "TrainingLoss"]

import torch
from torch import Tensor

from recurse.optim import _ops
from recurse.optim.base import Optimizer, SavedProduct, State, raw_dtype_for

# Decayed keeps one model-sized tangent per learned value and takes one backward pass for each: beyond this many
# (an LSTM's weights, a PerGroup of many groups) it would cost more than the model; refused when the engine is built.
MAX_TANGENTS = 64
Tangents = list[list[Tensor]]  # one list of tensors (shaped like the updated values) per raw entry


@dataclass
class UpdateRecord:
    """A level's last update: its inputs, and the live graph hyper_leaf -> outputs.

    The inputs are kept so that the graph can be rebuilt after
    load_state_dict (a graph cannot be saved), giving an exact resume;
    where the closed form is a :class:`SavedProduct`, what it saved is
    enough, and :meth:`without_inputs` drops the inputs.
    """

    params: list[Tensor] | None
    grads: list[Tensor] | None
    state: State | None
    raw: Tensor | list[float]  # host floats where the level above is a host level
    hyper_leaf: Tensor | None = None
    outputs: list[Tensor] | None = None
    # A closed-form vector-Jacobian product (Optimizer.update_with_vjp), in
    # raw space; used instead of the graph when present.
    closed_form: Callable[[list[Tensor]], Tensor] | None = None
    saved: dict[str, Any] | None = None  # (what a SavedProduct closed form reads)
    # The schedule's factors on the learned lrs at this update (Optimizer.lr_scales; None: none).
    lr_scales: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "grads": self.grads, "state": self.state, "raw": self.raw,
                "saved": self.saved, "lr_scales": self.lr_scales}

    def without_inputs(self) -> UpdateRecord:
        """This record less the update's inputs, where its closed form needs
        only what it saved. The gradients stay where what it saved is one of
        them (plain SGD's direction is the gradient itself): the engine then
        still notices a loop that zeroes them in place."""
        if self.saved is None:
            return self
        holds_gradient = isinstance(self.closed_form, SavedProduct) and self.closed_form.holds_gradient
        return UpdateRecord(None, self.grads if holds_gradient else None, None, self.raw,
                            closed_form=self.closed_form, saved=self.saved, lr_scales=self.lr_scales)


class Horizon:
    """How far back the hypergradient of level 0's hyperparameters looks
    (see the module docstring). ``keeps_last_update``: the engine keeps
    level 0's :class:`UpdateRecord` between steps for :meth:`hypergradient`
    (and the gradients it holds); otherwise it keeps only the memory
    :meth:`remember` returns.

    >>> isinstance(rc.estimators.Decayed(0.9), rc.estimators.Horizon)
    True
    """

    keeps_last_update: ClassVar[bool] = True

    def remember(self, optimizer: Optimizer, update: UpdateRecord, memory: Any) -> Any:
        """What to keep after ``update`` (this step's, before it is
        committed), given what was kept before (None at the start and
        after a skipped step)."""
        raise NotImplementedError

    def hypergradient(self, optimizer: Optimizer, update: UpdateRecord | None, memory: Any,
                      incoming: list[Tensor]) -> Tensor | list[float] | None:
        """d loss / d raw for level 0's learnable hyperparameters, from
        ``incoming`` = the model's gradient; None where nothing is kept yet."""
        raise NotImplementedError


@dataclass(frozen=True)
class OneStep(Horizon):
    """G_{t+1} = g_{t+1} . d u_t / d raw: the last update only (the default).

    >>> rc.estimators.OneStep()
    OneStep()
    """

    keeps_last_update: ClassVar[bool] = True

    def remember(self, optimizer: Optimizer, update: UpdateRecord, memory: Any) -> None:
        return None

    def hypergradient(self, optimizer, update, memory, incoming):
        return None if update is None else vjp(optimizer, update, incoming, retain_graph=False)


@dataclass(frozen=True)
class Decayed(Horizon):
    """G_{t+1} = g_{t+1} . z_t,  z_t = mu z_{t-1} + d u_t / d raw,  0 <= mu <= 1.

    Each tangent d u_t / d raw is taken with autograd through the rule's
    ``update`` at that step's parameters, gradient and state (the
    dependence of those on earlier hyperparameters is dropped). Costs one
    more evaluation of the update, one backward pass that builds a graph
    and one more per learned hyperparameter each step, and holds one
    model-sized tensor per learned hyperparameter, in
    ``raw_dtype_for(parameter dtype)`` (at least float32: in bfloat16 a sum
    near 1/(1 - mu) times each term would stop moving).

    >>> rc.estimators.Decayed(0.99)
    Decayed(mu=0.99)
    """

    mu: float
    keeps_last_update: ClassVar[bool] = False

    def __post_init__(self) -> None:
        mu = self.mu
        if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not 0.0 <= mu <= 1.0:
            raise ValueError(f"rc.estimators.Decayed: mu must be a number in [0, 1], got {mu!r}")
        object.__setattr__(self, "mu", float(mu))

    def remember(self, optimizer: Optimizer, update: UpdateRecord, memory: Tangents | None) -> Tangents:
        new = update_tangents(optimizer, update)
        if memory is None:
            return new
        return [_ops.add_scaled_all(tangent, decayed, self.mu) for tangent, decayed in zip(new, memory)]

    def hypergradient(self, optimizer, update, memory, incoming):
        if memory is None:
            return None
        incoming = [vector.to(tangent.dtype) for vector, tangent in zip(incoming, memory[0])]
        return _ops.inner_products([(incoming, tangent) for tangent in memory]).reshape(-1)


class TrainingLoss:
    """g_{t+1} is the training gradient the model steps with (the default).

    >>> rc.estimators.TrainingLoss()
    TrainingLoss()
    """

    def incoming(self, params: list[Tensor], grads: list[Tensor], step: int) -> list[Tensor] | None:
        """The vector level 0's hypergradient is taken with at committed step
        ``step`` (None: level 0's knobs take no hyper-step this step), one
        entry per parameter (None for one without a gradient: 0)."""
        return grads

    def __repr__(self) -> str:
        return "TrainingLoss()"


@dataclass(frozen=True)
class HeldOut(TrainingLoss):
    """g_{t+1} = d L_held(p_{t+1}) / d p, with L_held what ``closure()``
    returns: the held-out loss at the current parameters, computed from the
    model with grad enabled, *without* calling backward (its gradient is
    taken with ``torch.autograd.grad``, so the model's ``.grad`` stays the
    training gradient). Taken at the steps whose count is a multiple of
    ``every``; on the others level 0's knobs take no hyper-step (and the
    levels above none either). A parameter the held-out loss does not reach
    gets 0. Under DDP every rank must evaluate the same held-out batch, or
    the ranks learn different values.

    >>> rc.estimators.HeldOut(lambda: torch.tensor(0.0), every=10).every
    10
    """

    closure: Callable[[], Tensor]
    every: int = 1

    def __post_init__(self) -> None:
        if not callable(self.closure):
            raise TypeError(f"rc.estimators.HeldOut: closure must be callable, got {type(self.closure).__name__}")
        every = self.every
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"rc.estimators.HeldOut: every must be an integer >= 1, got {every!r}")

    def incoming(self, params, grads, step):
        if step % self.every:
            return None
        with torch.enable_grad():  # (the engine steps under no_grad, where even a reshape drops the graph)
            loss = self.closure()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                found = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"rc.estimators.HeldOut: the closure must return the scalar held-out loss, "
                                 f"got {found}")
            if not loss.requires_grad:
                raise ValueError("rc.estimators.HeldOut: the held-out loss needs no grad, so it does not depend on "
                                 "the parameters; compute it from the model inside the closure, with grad enabled")
            trainable = [p for p in params if p.requires_grad]  # (a frozen layer: 0, as for an unused one)
            gradients = iter(torch.autograd.grad(loss.reshape(()), trainable, allow_unused=True))
        return [next(gradients) if p.requires_grad else None for p in params]

    def __repr__(self) -> str:
        return f"HeldOut(every={self.every})"


def update_tangents(optimizer: Optimizer, update: UpdateRecord) -> Tangents:
    """[d u / d raw_j for each raw entry j]: the forward-mode tangents of the
    recorded update, as many reverse passes through its graph as there are
    entries (u is linear in the probe vectors v of
    d/d raw <v, u>, so differentiating that in v gives each column)."""
    leaf = optimizer.as_raw_tensor(update.raw).detach().clone().requires_grad_()
    with torch.enable_grad():
        outputs, _ = optimizer.update(update.params, update.grads, update.state,
                                      step_values(optimizer, leaf, update.lr_scales))
        probes = [torch.zeros_like(output, requires_grad=True) for output in outputs]
        (mixed,) = torch.autograd.grad(outputs, leaf, grad_outputs=probes, create_graph=True)
        tangents = []
        for entry in range(leaf.numel()):
            columns = torch.autograd.grad(mixed[entry], probes, retain_graph=entry + 1 < leaf.numel(),
                                          allow_unused=True)
            tangents.append([torch.zeros_like(output, dtype=raw_dtype_for(output.dtype)) if column is None
                             else column.detach().to(raw_dtype_for(output.dtype))
                             for output, column in zip(outputs, columns)])
    return tangents


def step_values(optimizer: Optimizer, raw: Tensor, lr_scales: tuple[float, ...] | None):
    """The values a learned step at ``raw`` uses, differentiable in it: the
    rule's, with each learned lr times the schedule's factor."""
    values = optimizer.hyper_values(raw)
    return values if lr_scales is None else optimizer.scaled(values, lr_scales)


def closed_form_update(optimizer, raw, targets, grads, state, lr_scales=None, closure=None):
    """The learned update through ``optimizer.update_with_vjp`` at float
    values (no graph), or None when the optimizer has no closed form (or
    where a schedule's factor multiplies an lr learned in its own units:
    the closed form's rows assume d value / d raw of the value they see).
    ``closure``: for a rule that needs it (``needs_closure``, ``needs_loss_graph``)."""
    if not has_closed_form(optimizer):
        return None
    if isinstance(raw, Tensor):
        raw = raw.detach()
        values = optimizer.values_from_raw(raw.tolist())
    else:
        values = optimizer.values_from_raw(raw)
    if not optimizer.within_constraints(values):
        return None  # saturated: the tensor path gives the inf/NaN the guard rejects
    if lr_scales is not None:
        if not optimizer.exact_at(lr_scales):
            return None
        values = optimizer.scaled(values, lr_scales)
    result = (optimizer.update_with_vjp(targets, grads, state, values) if closure is None
              else optimizer.update_with_vjp(targets, grads, state, values, closure=closure))
    if result is None:
        return None
    new_values, new_state, product = result
    saved = product.saved if isinstance(product, SavedProduct) else None
    record = UpdateRecord(list(targets), list(grads), state, raw, closed_form=product, saved=saved,
                          lr_scales=lr_scales)
    return new_values, new_state, record


def has_closed_form(optimizer: Optimizer) -> bool:
    return optimizer.provides_closed_form()


def vjp(optimizer: Optimizer, update: UpdateRecord, incoming: list[Tensor], *, retain_graph: bool) -> Tensor:
    """incoming . d(the update's outputs) / d(its raw hyperparameters)."""
    if update.closed_form is None and update.saved is not None:  # (after load_state_dict)
        update.closed_form = SavedProduct(update.saved, optimizer.saved_vjp)
    if update.closed_form is None and update.outputs is None:
        # After load_state_dict: rebuild the closed form or the graph from the saved inputs.
        closed = closed_form_update(optimizer, update.raw, update.params, update.grads, update.state,
                                    update.lr_scales)
        if closed is not None:
            update.closed_form = closed[2].closed_form
        elif _ops.on_host(update.params):  # saturated (see the engine's _advance): a non-finite hypergradient
            return [math.nan] * optimizer.raw.numel()
        else:
            leaf = optimizer.as_raw_tensor(update.raw).detach().clone().requires_grad_()
            with torch.enable_grad():
                outputs, _ = optimizer.update(update.params, update.grads, update.state,
                                              step_values(optimizer, leaf, update.lr_scales))
            update.hyper_leaf, update.outputs = leaf, outputs
    if update.closed_form is not None:
        return update.closed_form(list(incoming))
    (gradient,) = torch.autograd.grad(update.outputs, update.hyper_leaf, grad_outputs=incoming,
                                      retain_graph=retain_graph, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(update.hyper_leaf)
    if not retain_graph:
        update.hyper_leaf = update.outputs = None
    return gradient
