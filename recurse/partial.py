"""Steps over the parameters that have a gradient, as torch.optim takes them.

torch.optim skips a parameter whose ``.grad`` is None (a frozen layer, a
branch this step's loss did not use) and keeps each parameter's state apart,
Adam's step count included, so a layer unfrozen later starts from a fresh
state. An rc rule steps a list of parameters with one state, whose
per-parameter entries (``Optimizer.per_parameter_state``) hold one item per
parameter and whose other entries (a step count) are shared.

Level 0 of a tower therefore keeps its parameters in *cohorts*: sets of
positions that took the same number of steps, each with the rule's state for
them. While every parameter has a gradient, there is one cohort and the engine
steps it as a whole, as before. At a step where some have none, each cohort is
split into its present and its absent parameters; the present parts that took
as many steps are joined and stepped by one call of the rule
(:meth:`recurse.Optimizer.for_positions` maps an rc.PerGroup's groups onto
them), and the absent ones keep their values and state.

The hypergradient of that step is the sum of each call's vector-Jacobian
product with the next gradient at its positions (0 where a parameter has no
gradient then: the next loss does not depend on it), so a skipped parameter
contributes nothing, and the sum is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recurse.estimators import UpdateRecord, vjp
from recurse.optim import _ops
from recurse.optim.base import Optimizer, State


@dataclass
class Cohort:
    """Positions (ascending) of parameters that took ``steps`` steps, and the
    state of ``optimizer.for_positions(positions)`` for them (None before
    their first step)."""

    positions: list[int]
    state: State
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "state": self.state, "steps": self.steps}


@dataclass
class Batch:
    """Parameters stepped by one call of the rule: their positions, their
    joined state, and the number of steps they took before it."""

    positions: list[int]
    state: State
    steps: int


def batches(optimizer: Optimizer, cohorts: list[Cohort], present: set[int]) -> tuple[list[Batch], list[Cohort]]:
    """This step's batches (the present parameters, one per number of steps
    taken) and the cohorts of the absent ones, which keep their state."""
    kept: list[Cohort] = []
    parts: dict[int, list[tuple[list[int], State]]] = {}
    for cohort in cohorts:
        here = [i for i, position in enumerate(cohort.positions) if position in present]
        if not here:
            kept.append(cohort)
            continue
        if len(here) == len(cohort.positions):
            parts.setdefault(cohort.steps, []).append((cohort.positions, cohort.state))
            continue
        view = optimizer.for_positions(cohort.positions)
        absent = [i for i in range(len(cohort.positions)) if cohort.positions[i] not in present]

        def state_at(indices, view=view, state=cohort.state):
            return None if state is None else view.state_at(state, indices)

        kept.append(Cohort([cohort.positions[i] for i in absent], state_at(absent), cohort.steps))
        parts.setdefault(cohort.steps, []).append(([cohort.positions[i] for i in here], state_at(here)))
    stepped = []
    for steps, group in sorted(parts.items()):
        positions = sorted(position for part_positions, _ in group for position in part_positions)
        # (parameters that never stepped have no state yet, and are the only ones at 0 steps)
        state = group[0][1] if len(group) == 1 or steps == 0 else optimizer.joined_state(group)
        stepped.append(Batch(positions, state, steps))
    return stepped, kept


def incoming_at(optimizer: Optimizer, incoming: list[Tensor | None], params: list[Tensor],
                positions: list[int] | None = None) -> list[Tensor]:
    """``incoming`` at ``positions`` (all: None) as level 0's hypergradient
    takes it: 0 for a parameter without a gradient now (the next loss does
    not reach it), negated where level 0 maximizes (the tower minimises what
    level 0 does: the negated objective)."""
    if positions is None:
        if not optimizer.maximizes and all(part is not None for part in incoming):
            return incoming  # (the common step: every parameter has a gradient; nothing to build)
        positions = range(len(params))
    part = [torch.zeros_like(params[i]) if incoming[i] is None else incoming[i] for i in positions]
    return _ops.negated_all(part) if optimizer.maximizes else part


@dataclass
class PartialUpdate:
    """Level 0's last update where it stepped some parameters: one
    :class:`UpdateRecord` per batch, with the batch's positions."""

    records: list[tuple[list[int], UpdateRecord]]

    @property
    def raw(self) -> Tensor | list[float] | None:
        """The raw values every batch stepped with (this step's)."""
        return self.records[0][1].raw if self.records else None

    @property
    def grads(self) -> list[Tensor] | None:
        """Some batch's gradients, where a record holds them (the engine then
        watches them for in-place writes), else None."""
        return next((record.grads for _, record in self.records if record.grads is not None), None)

    def hypergradient(self, optimizer: Optimizer, incoming: list[Tensor | None],
                      params: list[Tensor]) -> Tensor | list[float] | None:
        """sum over batches of incoming[positions] . d(batch update) / d raw
        (see :func:`incoming_at`); None where no batch stepped."""
        total = None
        for positions, record in self.records:
            gradient = vjp(optimizer.for_positions(positions), record,
                           incoming_at(optimizer, incoming, params, positions), retain_graph=False)
            if total is None:
                total = gradient
            elif isinstance(total, list):
                total = [a + b for a, b in zip(total, gradient)]
            else:
                total = total + optimizer.as_raw_tensor(gradient)
        return total

    def without_inputs(self) -> PartialUpdate:
        return PartialUpdate([(positions, record.without_inputs()) for positions, record in self.records])

    def with_inputs_only(self) -> PartialUpdate:
        return PartialUpdate([(positions, UpdateRecord(**record.to_dict())) for positions, record in self.records])

    def to_dict(self) -> dict[str, Any]:
        return {"records": [(positions, record.to_dict()) for positions, record in self.records]}
