"""One-dimensional landscapes where one-step methods are easy to watch fail."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class XCosPiX:
    """f(x) = x cos(pi x) on [-1, 2]: a local minimum at x = -0.274 (f = -0.179)
    and the global one at x = 1.090 (f = -1.047); :meth:`minima` finds them.

    >>> [(round(x, 3), round(f, 3)) for x, f in rc.problems.XCosPiX().minima()]
    [(-0.274, -0.179), (1.09, -1.047)]
    """

    low, high = -1.0, 2.0

    def loss(self, x: Tensor) -> Tensor:
        return (x * torch.cos(math.pi * x)).sum()

    def minima(self, *, dtype=torch.float64) -> list[tuple[float, float]]:
        """(x, f(x)) of the interior minima on [low, high], by bisection on f'."""
        def slope(x: float) -> float:
            return math.cos(math.pi * x) - math.pi * x * math.sin(math.pi * x)

        grid = [self.low + (self.high - self.low) * i / 3000 for i in range(3001)]
        found = []
        for left, right in zip(grid, grid[1:]):
            if slope(left) < 0 <= slope(right):  # f' crosses from - to +: a minimum
                for _ in range(200):
                    middle = 0.5 * (left + right)
                    left, right = (middle, right) if slope(middle) < 0 else (left, middle)
                x = 0.5 * (left + right)
                found.append((x, x * math.cos(math.pi * x)))
        return found


class Cubic:
    """f(x) = x^3: no minimum, a saddle (inflection) at 0 where f' = f'' = 0;
    Newton's method started at x > 0 halves x each step, towards the saddle.

    >>> rc.problems.Cubic().loss(torch.tensor(2.0)).item()
    8.0
    """

    def loss(self, x: Tensor) -> Tensor:
        return x.pow(3).sum()
