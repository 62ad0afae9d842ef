"""Supervised tasks: fixed train/validation tensors, a model factory and a loss.

Every task in ``rc.problems`` that trains a network shares this shape, so
``rc.baselines`` can run any method on any of them through one loop.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor, nn


class SupervisedTask:
    """Train and validation sets held as tensors on one device.

    Subclasses fill ``train_inputs/train_targets/valid_inputs/valid_targets``
    and say whether targets are class labels (``classification``) or real
    values; ``model`` builds the network the task is trained with.

    >>> task = rc.problems.make_task("digits")          # a SupervisedTask
    >>> net = task.model(hidden=16)
    >>> inputs, targets = next(task.batches(32))
    >>> task.loss(net, inputs, targets).shape, task.valid_accuracy(net) <= 1
    (torch.Size([]), True)
    """

    name = "task"
    classification = False
    train_inputs: Tensor
    train_targets: Tensor
    valid_inputs: Tensor
    valid_targets: Tensor

    @property
    def features(self) -> int:
        return self.train_inputs.shape[1]

    @property
    def outputs(self) -> int:
        if self.classification:
            return int(torch.cat([self.train_targets, self.valid_targets]).max()) + 1
        return self.train_targets.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train_inputs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.train_inputs.dtype

    def model(self, hidden: int = 32, *, seed: int = 0) -> nn.Module:
        """The task's network (:meth:`network`) of width ``hidden``,
        initialised from ``seed`` (the global generator is left as it was),
        on the task's device and in its dtype."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = self.network(hidden)
        finally:
            torch.random.set_rng_state(generator_state)
        return model.to(device=self.device, dtype=self.dtype)

    def network(self, hidden: int) -> nn.Module:
        """A one-hidden-layer tanh MLP (a task with another network overrides this)."""
        return nn.Sequential(nn.Linear(self.features, hidden), nn.Tanh(), nn.Linear(hidden, self.outputs))

    def batches(self, batch_size: int | None, *, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless stream of shuffled mini-batches (``None``: the full training set)."""
        count = self.train_inputs.shape[0]
        if batch_size is None or batch_size >= count:
            while True:
                yield self.train_inputs, self.train_targets
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(count, generator=generator).to(self.device)
            for start in range(0, count - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                yield self.train_inputs[index], self.train_targets[index]

    def fit(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, steps: int, batch_size: int | None,
            seed: int = 0, after_step: Callable[[int], None] | None = None) -> nn.Module:
        """Train ``model`` with ``optimizer`` for ``steps`` steps on
        :meth:`batches` (the usual zero_grad, backward, step), calling
        ``after_step(step)`` after each (a scheduler's step, a record).

        >>> task = rc.problems.make_task("regression")
        >>> model = task.model(hidden=8)
        >>> _ = task.fit(model, rc.HyperOptimizer(model.parameters(), rc.SGD(0.1)), steps=5, batch_size=32)
        """
        batches = self.batches(batch_size, seed=seed)
        for step in range(1, steps + 1):
            inputs, targets = next(batches)
            optimizer.zero_grad()
            self.loss(model, inputs, targets).backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
        return model

    def batch_at(self, batch_size: int | None, *, seed: int = 0):
        """``batch_at(k)``: the k-th mini-batch of :meth:`batches`, for
        engines that address batches by step index (the unrolled engine)."""
        stream, seen = self.batches(batch_size, seed=seed), []

        def batch(k: int) -> tuple[Tensor, Tensor]:
            while len(seen) <= k:
                seen.append(next(stream))
            return seen[k]

        return batch

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy for classification, mean squared error otherwise."""
        if self.classification:
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, targets)

    def loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.criterion(model(inputs), targets)

    def valid_loss(self, model: nn.Module) -> float:
        with torch.no_grad():
            return self.loss(model, self.valid_inputs, self.valid_targets).item()

    def valid_accuracy(self, model: nn.Module) -> float | None:
        """Fraction of validation samples classified right; None for regression."""
        if not self.classification:
            return None
        with torch.no_grad():
            return (model(self.valid_inputs).argmax(1) == self.valid_targets).double().mean().item()


def split(inputs: Tensor, targets: Tensor, valid_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded random train/validation split."""
    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))
    valid_count = int(round(valid_fraction * inputs.shape[0]))
    valid, train = order[:valid_count], order[valid_count:]
    return inputs[train], targets[train], inputs[valid], targets[valid]


def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Scale every set by the training set's per-feature mean and std. A
    feature that is constant on the training set is only centred (scale 1,
    as sklearn's StandardScaler does): dividing by its ~0 std would turn a
    rare non-zero value in another set into a huge input."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]
