"""The quadratic family of "Learning to learn by gradient descent by
gradient descent" (Andrychowicz et al., 2016): f(theta) = ||W theta - y||^2
with W and y drawn from a standard normal."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Quadratic:
    """One task: f(theta) = ||W theta - y||^2, with a closed-form minimum.

    >>> task = rc.problems.QuadraticFamily().sample()
    >>> theta, loss = task.minimum()
    >>> task.dim, loss.item() < 1e-20
    (10, True)
    """

    weights: Tensor
    targets: Tensor

    @property
    def dim(self) -> int:
        return self.weights.shape[1]

    def loss(self, theta: Tensor) -> Tensor:
        return (self.weights @ theta - self.targets).square().sum()

    def minimum(self) -> tuple[Tensor, Tensor]:
        """(theta*, f(theta*)) by least squares (``torch.linalg.lstsq``)."""
        solution = torch.linalg.lstsq(self.weights, self.targets.unsqueeze(-1)).solution.squeeze(-1)
        return solution, self.loss(solution)

    def smoothness(self) -> float:
        """L = largest eigenvalue of the Hessian 2 W^T W; SGD is stable for lr < 2 / L."""
        return float(2 * torch.linalg.eigvalsh(self.weights.T @ self.weights).max())


@dataclass
class QuadraticBatch:
    """Many tasks solved side by side: ``theta`` of shape (tasks, dim).

    ``loss`` is the *sum* of the task losses, so each task's rows of the
    gradient are exactly that task's gradient: any coordinatewise optimizer
    (SGD, Adam, an LSTM optimizer) run on the batch runs on every task
    independently, in one set of tensor ops.

    >>> batch = rc.problems.QuadraticFamily().sample_batch(4)
    >>> batch.losses(torch.zeros(4, 10, dtype=torch.float64)).shape   # one loss per task
    torch.Size([4])
    """

    weights: Tensor  # (tasks, dim, dim)
    targets: Tensor  # (tasks, dim)

    def __len__(self) -> int:
        return self.weights.shape[0]

    def losses(self, theta: Tensor) -> Tensor:
        """f_i(theta_i) for every task, shape (tasks,)."""
        return (torch.einsum("tij,tj->ti", self.weights, theta) - self.targets).square().sum(-1)

    def loss(self, theta: Tensor) -> Tensor:
        return self.losses(theta).sum()

    def task(self, index: int) -> Quadratic:
        return Quadratic(self.weights[index], self.targets[index])


class QuadraticFamily:
    """Sampler of 10-d (by default) quadratic tasks, seeded and offline.

    >>> family = rc.problems.QuadraticFamily(seed=0)
    >>> task = family.sample()
    >>> task.loss(torch.zeros(10, dtype=torch.float64)) > 0
    tensor(True)
    """

    def __init__(self, dim: int = 10, *, seed: int = 0, dtype: torch.dtype = torch.float64, device="cpu") -> None:
        if dim < 1:
            raise ValueError(f"QuadraticFamily: dim must be >= 1, got {dim!r}")
        self.dim = dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Quadratic:
        weights = torch.randn(self.dim, self.dim, generator=self.generator, dtype=self.dtype)
        targets = torch.randn(self.dim, generator=self.generator, dtype=self.dtype)
        return Quadratic(weights.to(self.device), targets.to(self.device))

    def sample_batch(self, count: int) -> QuadraticBatch:
        """``count`` tasks, the same ones ``count`` calls of :meth:`sample` would give."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"QuadraticFamily.sample_batch: count must be an integer >= 1, got {count!r}")
        tasks = [self.sample() for _ in range(count)]
        return QuadraticBatch(torch.stack([t.weights for t in tasks]), torch.stack([t.targets for t in tasks]))
