"""Constrained parametrisations of hyperparameters.

A learnable hyperparameter is stored as an unconstrained real number ``raw``
and read through a map onto its valid set, so a hyper-step of any size can
never produce an invalid value:

- ``positive``: value = exp(raw), raw = log(value); for lr, eps, weight decay.
  A gradient step on raw is a multiplicative step on the value.
- ``unit_interval``: value = sigmoid(raw), raw = logit(value); for momentum,
  betas, dampening, RMSprop's alpha.
- ``identity``: value = raw. Not a constraint: an optimizer built with
  ``parametrization={"lr": "identity"}`` learns lr in its own units, as
  "Gradient Descent: The Ultimate Optimizer" does (an additive hyper-step,
  which can take lr below 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Constraint:
    """A bijection between the real line and a hyperparameter's valid set.

    >>> positive = rc.constraints.positive
    >>> raw = positive.to_raw(0.01)                  # log 0.01
    >>> round(raw, 6), round(positive.from_raw(torch.tensor(raw, dtype=torch.float64)).item(), 12)
    (-4.60517, 0.01)
    >>> rc.constraints.unit_interval.value_of(0.0)
    0.5
    """

    name: str
    description: str
    contains: Callable[[float], bool]
    to_raw: Callable[[float], float]
    from_raw: Callable[[torch.Tensor], torch.Tensor]
    value_of: Callable[[float], float]  # from_raw on a Python float
    raw_derivative: Callable[[torch.Tensor], torch.Tensor]  # d value / d raw, written in terms of value

    def __reduce__(self):
        # Pickled by name (its maps are lambdas): a pickled optimizer refers to the module's constraint.
        return _named, (self.name,)


def _exp(raw: float) -> float:
    """exp(raw), inf (as torch.exp gives) where it overflows a float."""
    try:
        return math.exp(raw)
    except OverflowError:
        return math.inf


def _logit(value: float) -> float:
    return math.log(value) - math.log1p(-value)


positive = Constraint(
    name="positive",
    description="a finite number > 0",
    contains=lambda value: math.isfinite(value) and value > 0.0,
    to_raw=math.log,
    from_raw=torch.exp,
    value_of=_exp,
    raw_derivative=lambda value: value,
)

unit_interval = Constraint(
    name="unit_interval",
    description="a number in the open interval (0, 1)",
    contains=lambda value: 0.0 < value < 1.0,
    to_raw=_logit,
    from_raw=torch.sigmoid,
    value_of=lambda raw: 1.0 / (1.0 + math.exp(-raw)) if raw >= 0 else math.exp(raw) / (1.0 + math.exp(raw)),
    raw_derivative=lambda value: value * (1 - value),
)

identity = Constraint(
    name="identity",
    description="any finite number",
    contains=math.isfinite,
    to_raw=float,
    from_raw=lambda raw: raw,
    value_of=float,
    raw_derivative=lambda value: 1.0,
)

_BY_NAME = {constraint.name: constraint for constraint in (positive, unit_interval, identity)}


def _named(name: str) -> Constraint:
    return _BY_NAME[name]
