"""Helpers that build towers of optimizers: each level learns the one below."""

from __future__ import annotations

import copy
import numbers

from recurse.optim.base import Optimizer, described


def stack(*optimizers: Optimizer) -> Optimizer:
    """Chain optimizers so that each one learns the hyperparameters of the
    one before it; returns the first (the one that trains the model).

    ``stack(rc.Adam(1e-3), rc.SGD(1e-4), rc.SGD(1e-5))`` is
    ``rc.Adam(1e-3, hyper=rc.SGD(1e-4, hyper=rc.SGD(1e-5)))``: depth 2.

    >>> opt = rc.stack(rc.Adam(1e-3), rc.SGD(1e-4), rc.SGD(1e-5))
    >>> rc.HyperOptimizer(model.parameters(), opt).depth
    2
    """
    if not optimizers:
        raise ValueError("rc.stack needs at least one optimizer")
    for position, optimizer in enumerate(optimizers):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"rc.stack: argument {position} must be an rc.Optimizer, got {described(optimizer)}"
            )
        if any(optimizer is other for other in optimizers[:position]):
            raise ValueError(
                f"rc.stack: argument {position} is the same object as an earlier one; "
                "use rc.tower(opt, depth, tie=True) to share hyperparameters across levels"
            )
    for position, optimizer in enumerate(optimizers[:-1]):
        if optimizer.hyper is not None:
            raise ValueError(
                f"rc.stack: argument {position} ({optimizer!r}) already has hyper={optimizer.hyper!r}; "
                "stack optimizers built without hyper="
            )
    for lower, upper in zip(optimizers, optimizers[1:]):
        lower.hyper = upper
    return optimizers[0]


def tower(optimizer: Optimizer, depth: int, *, tie: bool = False) -> Optimizer:
    """``depth`` levels of ``optimizer`` above the one that trains the model.

    ``tie=False``: depth + 1 independent copies, stacked (each level has its
    own hyperparameters, all starting at ``optimizer``'s values).

    ``tie=True``: one set of hyperparameters shared by every level (weight
    tying across levels, as an RNN ties its weights across time). The one
    optimizer trains the model *and* itself: its hyperparameters h receive
    the sum of the hypergradients of their ``depth`` uses in the tower,

        G = sum_{k=0}^{depth-1} G_k,  G_0 = dL/dh through the model update,
        G_k = G_{k-1} . d(self-update)/dh,

    and are stepped once per step by the optimizer's own update rule.

    >>> rc.HyperOptimizer(model.parameters(), rc.tower(rc.SGD(0.01), depth=3)).depth
    3
    >>> tied = rc.tower(rc.SGD(0.01, normalize="rms"), depth=2, tie=True)
    >>> tied.hyper is tied, rc.HyperOptimizer(model.parameters(), tied).depth
    (True, 2)
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"rc.tower: optimizer must be an rc.Optimizer, got {described(optimizer)}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ValueError(f"rc.tower: depth must be an integer >= 0, got {depth!r}")
    if optimizer.hyper is not None:
        raise ValueError(f"rc.tower: the optimizer already has hyper={optimizer.hyper!r}; pass one built without hyper=")
    if depth == 0:
        return optimizer
    if tie:
        if not optimizer.learnable:
            raise ValueError(f"rc.tower: {optimizer!r} has no learnable hyperparameters to tie (learn=())")
        optimizer.hyper = optimizer
        optimizer.tied_depth = int(depth)
        return optimizer
    return stack(optimizer, *(copy.deepcopy(optimizer) for _ in range(depth)))
