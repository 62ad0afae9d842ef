"""What the integrations log of an rc.HyperOptimizer (framework-free, so
that every integration shares it)."""

from __future__ import annotations

from typing import Any

from recurse.hyper import HyperOptimizer

PREFIX = "recurse/"


def learned_values(optimizer: HyperOptimizer, *, hypergradients: bool = False) -> dict[str, float]:
    """``{"recurse/<level>.<name>": value}`` for every learned value, the lr
    each param group steps with (``"recurse/group<i>.lr_used"``: the learned
    lr times the schedule's factor), and with ``hypergradients`` the last
    hypergradient of each (``"recurse/hypergradient/<level>.<name>"``)."""
    values = {f"{PREFIX}{name}": value for name, value in optimizer.learned_hyperparameters().items()}
    for index, lr in enumerate(optimizer.group_lrs()):
        if lr is not None:
            values[f"{PREFIX}group{index}.lr_used"] = lr
    if hypergradients:
        values.update({f"{PREFIX}hypergradient/{name}": value for name, value in optimizer.hypergradients().items()})
    return values


def hyper_optimizer(optimizer: Any) -> HyperOptimizer | None:
    """The rc.HyperOptimizer inside what a framework hands its callbacks
    (accelerate and Lightning wrap it), or None."""
    while optimizer is not None and not isinstance(optimizer, HyperOptimizer):
        optimizer = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
    return optimizer
