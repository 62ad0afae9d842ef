"""Regression tasks: a nonlinear one where mini-batch noise matters (used
by studies/short_horizon_bias.py) and a linear one with a closed form."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recurse.problems.supervised import SupervisedTask


class SyntheticRegression(SupervisedTask):
    """y = sin(3 x . a) + 0.5 cos(3 x . b) + noise, x in R^features; an MLP learns it.

    Train and validation sets are drawn from one seeded generator, so every
    run sees the same data.

    >>> task = rc.problems.SyntheticRegression()
    >>> task.train_inputs.shape, task.classification
    (torch.Size([512, 8]), False)
    """

    name = "regression"

    def __init__(self, features: int = 8, train: int = 512, valid: int = 512, *, seed: int = 0,
                 noise: float = 0.05, dtype=torch.float32, device="cpu") -> None:
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(features, generator=generator) / features**0.5
        b = torch.randn(features, generator=generator) / features**0.5

        def draw(count):
            x = torch.randn(count, features, generator=generator)
            y = torch.sin(3 * x @ a) + 0.5 * torch.cos(3 * x @ b) + noise * torch.randn(count, generator=generator)
            return x.to(device=device, dtype=dtype), y.unsqueeze(1).to(device=device, dtype=dtype)

        self.train_inputs, self.train_targets = draw(train)
        self.valid_inputs, self.valid_targets = draw(valid)


class LinearRegression(SupervisedTask):
    """y = X w* + noise, fitted by a linear model; the least-squares fit is
    known in closed form (``minimum``), so a method's gap to it is exact.

    >>> task = rc.problems.LinearRegression()
    >>> weights, bias, loss = task.minimum()          # the least-squares fit and its training loss
    >>> round(loss, 4)
    0.0099
    """

    name = "linear"

    def __init__(self, features: int = 20, train: int = 256, valid: int = 256, *, seed: int = 0,
                 noise: float = 0.1, dtype=torch.float64, device="cpu") -> None:
        generator = torch.Generator().manual_seed(seed)
        true_weights = torch.randn(features, 1, generator=generator, dtype=dtype)

        def draw(count):
            x = torch.randn(count, features, generator=generator, dtype=dtype)
            y = x @ true_weights + noise * torch.randn(count, 1, generator=generator, dtype=dtype)
            return x.to(device), y.to(device)

        self.train_inputs, self.train_targets = draw(train)
        self.valid_inputs, self.valid_targets = draw(valid)

    def model(self, hidden: int = 0, *, seed: int = 0) -> nn.Module:
        """A linear layer with bias (``hidden`` is ignored: there is no hidden layer)."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = nn.Linear(self.features, 1)
        finally:
            torch.random.set_rng_state(generator_state)
        return model.to(device=self.device, dtype=self.dtype)

    def minimum(self) -> tuple[Tensor, Tensor, float]:
        """(weights, bias, training MSE) of the least-squares fit, by ``torch.linalg.lstsq``."""
        ones = torch.ones_like(self.train_targets)
        design = torch.cat([self.train_inputs, ones], dim=1)
        solution = torch.linalg.lstsq(design, self.train_targets).solution
        residual = design @ solution - self.train_targets
        return solution[:-1, 0], solution[-1, 0], residual.square().mean().item()
