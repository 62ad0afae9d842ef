"""One table of optimizers used across the tests: recurse factory, the
torch.optim reference with the same settings, and readable ids.

Skips and exclusions live here, not in test bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import recurse as rc


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[..., rc.Optimizer]  # make(**options) -> recurse optimizer
    reference: Callable[[list], torch.optim.Optimizer] | None
    # settings that keep every hyperparameter's hypergradient well above
    # finite-difference noise (e.g. eps that actually matters)
    hyper_level: Callable[..., rc.Optimizer] = field(default=lambda **o: rc.SGD(1e-2, **o))

    @property
    def sign(self) -> float:
        """What a test trains on is sign * loss: -loss where the optimizer
        maximizes (maximize=True), so that it still descends the loss."""
        return -1.0 if self.make().maximizes else 1.0


CASES = [
    Case("sgd", lambda **o: rc.SGD(0.05, **o), lambda p: torch.optim.SGD(p, lr=0.05), lambda **o: rc.SGD(1e-2, **o)),
    Case(
        "sgd-momentum-dampening-wd",
        lambda **o: rc.SGD(0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2, **o),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
        lambda **o: rc.SGD(1e-2, momentum=0.5, **o),
    ),
    Case(
        "sgd-nesterov",
        lambda **o: rc.SGD(0.05, momentum=0.8, nesterov=True, **o),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
        lambda **o: rc.SGD(1e-2, momentum=0.5, nesterov=True, **o),
    ),
    Case(
        "sgd-momentum-wd-maximize",
        lambda **o: rc.SGD(0.05, momentum=0.9, weight_decay=1e-2, maximize=True, **o),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, maximize=True),
        lambda **o: rc.SGD(1e-2, momentum=0.5, **o),
    ),
    Case(
        "adam",
        lambda **o: rc.Adam(1e-2, eps=1e-3, **o),
        lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-3),
        lambda **o: rc.Adam(1e-2, eps=0.1, **o),
    ),
    Case(
        "adam-wd",
        lambda **o: rc.Adam(1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=1e-2, **o),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=1e-2),
    ),
    Case(
        "adamw",
        lambda **o: rc.AdamW(1e-2, eps=1e-3, weight_decay=0.1, **o),
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.1),
        lambda **o: rc.Adam(1e-2, eps=0.1, **o),
    ),
    Case(
        "adam-wd-amsgrad",
        lambda **o: rc.Adam(1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=1e-2, amsgrad=True, **o),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=1e-2, amsgrad=True),
    ),
    Case(
        "adamw-amsgrad-maximize",
        lambda **o: rc.AdamW(1e-2, eps=1e-3, weight_decay=0.1, amsgrad=True, maximize=True, **o),
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.1, amsgrad=True, maximize=True),
        lambda **o: rc.Adam(1e-2, eps=0.1, **o),
    ),
    Case(
        "rmsprop",
        lambda **o: rc.RMSprop(1e-2, eps=1e-3, **o),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, eps=1e-3),
        lambda **o: rc.RMSprop(5e-2, eps=0.1, **o),
    ),
    Case(
        "rmsprop-centered-momentum-wd",
        lambda **o: rc.RMSprop(1e-2, alpha=0.9, eps=1e-3, momentum=0.5, weight_decay=1e-2, centered=True, **o),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9, eps=1e-3, momentum=0.5, weight_decay=1e-2, centered=True),
        lambda **o: rc.RMSprop(5e-2, eps=0.1, momentum=0.5, centered=True, **o),
    ),
    Case(
        "rmsprop-centered-momentum-maximize",
        lambda **o: rc.RMSprop(1e-2, alpha=0.9, eps=1e-3, momentum=0.5, centered=True, maximize=True, **o),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9, eps=1e-3, momentum=0.5, centered=True, maximize=True),
        lambda **o: rc.RMSprop(5e-2, eps=0.1, momentum=0.5, centered=True, **o),
    ),
    Case(
        "adagrad-wd-maximize",
        lambda **o: rc.Adagrad(5e-2, weight_decay=1e-2, eps=1e-3, maximize=True, **o),
        lambda p: torch.optim.Adagrad(p, lr=5e-2, weight_decay=1e-2, eps=1e-3, maximize=True),
        lambda **o: rc.Adagrad(5e-2, eps=0.1, **o),
    ),
    Case(
        "adagrad",
        lambda **o: rc.Adagrad(5e-2, eps=1e-3, **o),
        lambda p: torch.optim.Adagrad(p, lr=5e-2, eps=1e-3),
        lambda **o: rc.Adagrad(5e-2, eps=0.1, **o),
    ),
    Case(
        "adagrad-decay-wd-accumulator",
        lambda **o: rc.Adagrad(5e-2, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1, eps=1e-3, **o),
        lambda p: torch.optim.Adagrad(
            p, lr=5e-2, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1, eps=1e-3
        ),
    ),
]

CASE_IDS = [case.id for case in CASES]


def small_mlp(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).to(dtype)


def regression_data(seed: int = 1, count: int = 32, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 4, generator=generator, dtype=dtype)
    targets = torch.sin(inputs.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(count, 1, generator=generator, dtype=dtype)
    return inputs, targets


def train_step(model, optimizer, inputs, targets, *, set_to_none: bool = True, sign: float = 1.0) -> float:
    optimizer.zero_grad(set_to_none=set_to_none)
    loss = sign * torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def autograd_vjp(optimizer: rc.Optimizer, params, grads, state, incoming) -> torch.Tensor:
    """The reference for a closed form: incoming . d update(params) / d raw,
    by autograd through ``optimizer.update`` (0 where no knob acts on this step)."""
    leaf = optimizer.raw.detach().clone().requires_grad_()
    outputs, _ = optimizer.update(params, grads, state, optimizer.hyper_values(leaf))
    pairs = [(output, c) for output, c in zip(outputs, incoming) if output.requires_grad]
    gradient = None if not pairs else torch.autograd.grad([output for output, _ in pairs], leaf,
                                                          grad_outputs=[c for _, c in pairs], allow_unused=True)[0]
    return torch.zeros_like(leaf) if gradient is None else gradient
