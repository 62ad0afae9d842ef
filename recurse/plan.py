"""Who steps what: from a tower's description to the levels an engine runs.

A tower is described by optimizers linked through ``hyper=`` (written out,
or built by ``rc.stack`` and ``rc.tower``), or by an ``rc.graph`` whose
optimizer nodes step model groups and each other's hyperparameters. A
description is a recipe, not a running optimizer: every engine builds its
levels from a private copy (:func:`instantiate`), so one description builds
any number of independent optimizers, as a ``torch.optim`` class and its
keywords do, and training one never moves another's values.

:func:`levels` reads the chain level 0, level 1, ... off a copy and refuses,
naming the level, what cannot run: an optimizer that appears twice (only a
tied one, ``rc.tower(opt, depth, tie=True)``, steps itself), ``hyper=`` over
a level with nothing to learn, and knobs marked ``learn=`` with no level
above to learn them (which would otherwise train at their starting values,
silently), and ``maximize=True`` above level 0.
"""

from __future__ import annotations

import copy

from recurse.optim.base import Optimizer


def instantiate(description: Optimizer) -> Optimizer:
    """A private copy of ``description`` and the whole tower above it (a tied
    level stays tied to its copy): what one engine steps and learns."""
    return copy.deepcopy(description)


def levels(optimizer: Optimizer, *, owner: str = "rc.HyperOptimizer") -> list[Optimizer]:
    """The optimizers of the tower whose level 0 is ``optimizer``, bottom up
    (a tied top level once), after checking that every level can run."""
    chain: list[Optimizer] = []
    current: Optimizer | None = optimizer
    while current is not None:
        index = len(chain)
        if any(level is current for level in chain):
            raise ValueError(f"{owner}: {current!r} appears twice in the tower; only an optimizer that steps "
                             "itself (rc.tower(opt, depth, tie=True)) may repeat")
        tied = current.hyper is current
        if current.hyper is not None and not current.learnable:
            raise ValueError(f"{owner}: level {index} ({current!r}) has hyper= but nothing to learn (learn=())")
        if tied and current.tied_depth < 1:
            raise ValueError(f"{owner}: {current!r} steps itself; build it with rc.tower(opt, depth, tie=True)")
        if current.hyper is None and current.learn_given and current.learnable:
            raise ValueError(
                f"{owner}: level {index} ({current!r}) marks {list(current.learnable)} as learned (learn=), but no "
                "optimizer above learns them; give it one (hyper=rc.SGD(0.05, normalize='rms'), or rc.stack) or "
                "drop learn=")
        if index > 0 and current.needs_closure:
            raise ValueError(f"{owner}: level {index} ({current!r}) evaluates the loss again at other points, which "
                             "only level 0 can (the levels above step hyperparameters, with no loss of their own)")
        if current.maximizes and (index > 0 or tied):
            raise ValueError(f"{owner}: level {index} ({current!r}) has maximize=True"
                             f"{' and steps its own hyperparameters (tied)' if tied else ''}, which would make the "
                             "hyperparameters it steps worse; give maximize=True to an untied level 0 alone (the "
                             "levels above then learn to maximise its objective too)")
        chain.append(current)
        current = None if tied else current.hyper
    return chain
