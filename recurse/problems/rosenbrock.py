"""The Rosenbrock function, a classic curved valley."""

from __future__ import annotations

import torch
from torch import Tensor


class Rosenbrock:
    """f(x) = sum_i b (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, minimum 0 at x = (1, ..., 1).

    >>> problem = rc.problems.Rosenbrock()
    >>> round(problem.loss(problem.start()).item(), 6), problem.loss(problem.minimum()[0]).item()
    (24.2, 0.0)
    """

    def __init__(self, dim: int = 2, *, b: float = 100.0) -> None:
        if dim < 2:
            raise ValueError(f"Rosenbrock: dim must be >= 2, got {dim!r}")
        self.dim, self.b = dim, b

    def loss(self, x: Tensor) -> Tensor:
        return (self.b * (x[1:] - x[:-1].square()).square() + (1 - x[:-1]).square()).sum()

    def start(self, *, dtype=torch.float64, device="cpu") -> Tensor:
        """The customary start (-1.2, 1, -1.2, 1, ...)."""
        values = [-1.2 if i % 2 == 0 else 1.0 for i in range(self.dim)]
        return torch.tensor(values, dtype=dtype, device=device)

    def minimum(self, *, dtype=torch.float64, device="cpu") -> tuple[Tensor, Tensor]:
        point = torch.ones(self.dim, dtype=dtype, device=device)
        return point, self.loss(point)
