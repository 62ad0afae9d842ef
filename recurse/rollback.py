"""Rolling a diverging run back to its last healthy state.

The guard of :class:`recurse.HyperOptimizer` skips a step whose gradient or
update is not finite. That cannot rescue a run whose parameters grow while
finite (a learning rate far too large, or a tower that learned one): its
loss climbs until the gradient overflows, and from then on every step is
skipped. :class:`Rollback` watches the loss instead, keeps a snapshot of
the model and the optimizer taken while the run was healthy, and on
divergence restores it and shrinks the learning rate.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import statistics
from typing import Any

import torch
from torch import Tensor

from recurse import distributed
from recurse.optim.base import finite_float

log = logging.getLogger("recurse")


class Rollback:
    """Restores the last healthy snapshot of a diverging run and multiplies
    every param group's ``lr`` by ``shrink``.

        rollback = rc.Rollback(model, opt)
        for inputs, targets in data:
            opt.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            opt.step()
            rollback.observe(loss)

    An observation is unhealthy when the loss (one bounded below by 0, as
    most are) is not finite, when it exceeds
    ``threshold * max(reference, floor)``, or when the optimizer
    skipped the step (its ``nonfinite_steps`` grew). The reference is the
    first loss observed, then the median of the ``every`` healthy losses
    before each snapshot. ``patience`` unhealthy observations in a row are
    a divergence: the model and the optimizer are restored to the snapshot,
    each group's lr is multiplied by ``shrink`` (for an rc.HyperOptimizer:
    ``param_groups[i]["lr"]``; a learned lr then steps at ``shrink`` times
    what the tower learns, as under a schedule, see
    :mod:`recurse.param_group`), and the snapshot is taken again from
    there, so a second rollback to it shrinks again. After ``every``
    healthy observations in a row the current state becomes the snapshot
    (the first is the state at construction): a snapshot is never taken
    while the loss is climbing past the threshold.

    ``floor``: for a loss whose minimum is 0, losses below it never count
    as growth (near 0 a loss can jump by orders of magnitude without
    diverging). A divergence after ``max_rollbacks`` rollbacks raises
    FloatingPointError. Under DDP, or an rc.HyperOptimizer over FSDP2
    shards, each rank observes the loss of its share of the batch and the
    decision is taken on their mean, on every rank alike. Works with any
    optimizer that has ``param_groups`` and
    ``state_dict``/``load_state_dict``: rc.HyperOptimizer,
    rc.graph.GraphOptimizer, torch.optim's. The snapshot holds a copy of
    the model's and the optimizer's state on their device; ``observe``
    reads the loss to the host (on a GPU, one synchronisation per call).

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(10.0))  # stable below about 0.39
    >>> rollback = rc.Rollback(model, opt, every=5)
    >>> for _ in range(40):
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(inputs), targets)
    ...     loss.backward()
    ...     opt.step()
    ...     _ = rollback.observe(loss)
    >>> rollback.rollbacks, opt.param_groups[0]["lr"], loss.item() < 1.2  # (the first loss: 2.66)
    (5, 0.3125, True)
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, every: int = 50, threshold: float = 10.0,
                 patience: int = 3, shrink: float = 0.5, max_rollbacks: int = 10, floor: float = 0.0) -> None:
        owner = "rc.Rollback"
        for name, value in (("every", every), ("patience", patience), ("max_rollbacks", max_rollbacks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
        threshold, shrink, floor = (finite_float(owner, name, value)
                                    for name, value in (("threshold", threshold), ("shrink", shrink), ("floor", floor)))
        if not threshold > 1.0:
            raise ValueError(f"{owner}: threshold must be a finite number > 1, got {threshold!r}")
        if not 0.0 < shrink < 1.0:
            raise ValueError(f"{owner}: shrink must be a number in (0, 1), got {shrink!r}")
        if not floor >= 0.0:
            raise ValueError(f"{owner}: floor must be a finite number >= 0, got {floor!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
        if not all(hasattr(optimizer, name) for name in ("param_groups", "state_dict", "load_state_dict")):
            raise TypeError(f"{owner}: optimizer must have param_groups, state_dict and load_state_dict (an "
                            f"rc.HyperOptimizer or a torch.optim optimizer), got {type(optimizer).__name__}")
        self.model, self.optimizer = model, optimizer
        self.every, self.threshold, self.patience = every, threshold, patience
        self.shrink, self.max_rollbacks, self.floor = shrink, max_rollbacks, floor
        self.observations = 0
        self.rollbacks = 0
        self.events: list[dict[str, Any]] = []  # one per rollback: observation, loss, the lr values after it
        self.reference: float | None = None
        self._healthy: list[float] = []  # the healthy losses since the last snapshot (or unhealthy one)
        self._unhealthy_in_a_row = 0
        self._skipped_so_far = _skipped_steps(optimizer)
        self._group = _data_parallel_group(model, optimizer)
        self._snapshot = self._take()

    def observe(self, loss: Tensor | float) -> bool:
        """Record the loss of the step just taken; True when it rolled the run back."""
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"rc.Rollback.observe: the loss must be a scalar, got shape {tuple(loss.shape)}")
            value = loss.item()
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            value = float(loss)
        else:
            raise TypeError(f"rc.Rollback.observe: the loss must be a scalar tensor or a number, got "
                            f"{type(loss).__name__}")
        if self._group is not None:  # (each rank saw its share of the batch: decide on the mean, together)
            value = _mean_over(self._group, value)
        self.observations += 1
        skipped_so_far = _skipped_steps(self.optimizer)
        skipped, self._skipped_so_far = skipped_so_far > self._skipped_so_far, skipped_so_far
        if self.reference is None and math.isfinite(value) and not skipped:
            self.reference = value
        limit = math.inf if self.reference is None else self.threshold * max(self.reference, self.floor)
        if not (skipped or not math.isfinite(value) or value > limit):
            self._unhealthy_in_a_row = 0
            self._healthy.append(value)
            if len(self._healthy) >= self.every:
                self._snapshot = self._take()
                self.reference, self._healthy = statistics.median(self._healthy), []
            return False
        self._healthy = []
        self._unhealthy_in_a_row += 1
        if self._unhealthy_in_a_row < self.patience:
            return False
        self._roll_back(value)
        return True

    def _roll_back(self, value: float) -> None:
        if self.rollbacks >= self.max_rollbacks:
            raise FloatingPointError(f"rc.Rollback: the run diverged again (loss {value:.3g} at observation "
                                     f"{self.observations}) after {self.rollbacks} rollbacks (max_rollbacks)")
        model_state, optimizer_state = self._snapshot
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        for group in self.optimizer.param_groups:
            if "lr" in group:
                group["lr"] = group["lr"] * self.shrink
        self.rollbacks += 1
        self._unhealthy_in_a_row = 0
        self._skipped_so_far = _skipped_steps(self.optimizer)
        self._snapshot = self._take()
        lrs = [group["lr"] for group in self.optimizer.param_groups if "lr" in group]
        self.events.append({"observation": self.observations, "loss": value, "lr": lrs})
        log.warning("rc.Rollback: the loss diverged (%.3g at observation %d); rolled back to the last healthy "
                    "snapshot with lr x %g (now %s), rollback %d of at most %d", value, self.observations,
                    self.shrink, ", ".join(f"{lr:.3g}" for lr in lrs), self.rollbacks, self.max_rollbacks)

    def _take(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        model_state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        return model_state, copy.deepcopy(self.optimizer.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The counters, the reference and the snapshot (a resumed run rolls back to where this one would)."""
        return {"observations": self.observations, "rollbacks": self.rollbacks, "events": copy.deepcopy(self.events),
                "reference": self.reference, "healthy": list(self._healthy),
                "unhealthy_in_a_row": self._unhealthy_in_a_row, "snapshot": self._snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observations, self.rollbacks = state["observations"], state["rollbacks"]
        self.events, self.reference = copy.deepcopy(state["events"]), state["reference"]
        self._healthy, self._unhealthy_in_a_row = list(state["healthy"]), state["unhealthy_in_a_row"]
        self._snapshot = state["snapshot"]
        self._skipped_so_far = _skipped_steps(self.optimizer)


def _skipped_steps(optimizer: Any) -> int:
    return getattr(optimizer, "nonfinite_steps", 0)


def _data_parallel_group(model: torch.nn.Module, optimizer: Any):
    """The process group whose ranks train one model on shares of a batch
    (DDP's, or the mesh of a model's FSDP2 shards); None outside
    torch.distributed data parallelism (and for a DDP model's ``.module``,
    which does not say it is one)."""
    sharding = getattr(optimizer, "_sharding", None)
    if sharding is not None:
        return sharding.group
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.process_group
    mesh = next((param.device_mesh for param in model.parameters() if hasattr(param, "device_mesh")), None)
    if mesh is not None and mesh.ndim != 1:  # (HSDP: not one group; deciding per rank would part the replicas)
        raise ValueError(f"rc.Rollback: the model is sharded on the {mesh.ndim}-dimensional mesh {mesh}; Rollback "
                         "decides on the ranks' mean loss over a one-dimensional FSDP2 mesh or DDP only")
    return None if mesh is None else mesh.get_group(0)  # (a torch.optim optimizer over FSDP2 shards)


def _mean_over(group, value: float) -> float:
    """The mean of each rank's ``value`` over ``group``: the loss of the whole
    batch where each rank took an equal share."""
    summed = distributed.total(torch.tensor([value], dtype=torch.float64), group)
    return summed.item() / torch.distributed.get_world_size(group)
