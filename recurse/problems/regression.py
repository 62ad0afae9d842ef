"""A small nonlinear regression task where mini-batch noise matters
(used by studies/short_horizon_bias.py)."""

from __future__ import annotations

import torch
from torch import nn


class SyntheticRegression:
    """y = sin(x . a) + 0.5 cos(x . b) + noise, x in R^features; an MLP learns it.

    Train and validation sets are drawn from one seeded generator, so every
    run sees the same data.
    """

    def __init__(self, features: int = 8, train: int = 512, valid: int = 512, *, seed: int = 0,
                 noise: float = 0.05, dtype=torch.float32, device="cpu") -> None:
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(features, generator=generator) / features**0.5
        b = torch.randn(features, generator=generator) / features**0.5

        def draw(count):
            x = torch.randn(count, features, generator=generator)
            y = torch.sin(3 * x @ a) + 0.5 * torch.cos(3 * x @ b) + noise * torch.randn(count, generator=generator)
            return x.to(device=device, dtype=dtype), y.unsqueeze(1).to(device=device, dtype=dtype)

        self.features = features
        self.train_inputs, self.train_targets = draw(train)
        self.valid_inputs, self.valid_targets = draw(valid)

    def model(self, hidden: int = 32, *, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(self.features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        return model.to(device=self.train_inputs.device, dtype=self.train_inputs.dtype)

    def batches(self, batch_size: int, *, seed: int = 0):
        """An endless stream of shuffled training mini-batches."""
        generator = torch.Generator().manual_seed(seed)
        count = self.train_inputs.shape[0]
        while True:
            order = torch.randperm(count, generator=generator).to(self.train_inputs.device)
            for start in range(0, count - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                yield self.train_inputs[index], self.train_targets[index]

    def loss(self, model: nn.Module, inputs, targets):
        return nn.functional.mse_loss(model(inputs), targets)

    def valid_loss(self, model: nn.Module) -> float:
        with torch.no_grad():
            return self.loss(model, self.valid_inputs, self.valid_targets).item()
