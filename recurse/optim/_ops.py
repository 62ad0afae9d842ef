"""Pointwise ops that accept a hyperparameter as a Python float or a tensor.

A fixed hyperparameter is a Python float and goes through the very kernel
torch.optim uses (``torch.add(x, y, alpha=a)`` and friends), so a recurse
optimizer at depth 0 is bit-identical to torch.optim. A learned
hyperparameter is a tensor, and the same formula is written with plain
differentiable ops so that gradients reach it.
"""

from __future__ import annotations

import torch
from torch import Tensor

Scalar = float | Tensor


def add_scaled(x: Tensor, y: Tensor, alpha: Scalar) -> Tensor:
    """x + alpha * y."""
    if isinstance(alpha, Tensor):
        return x + alpha * y
    return torch.add(x, y, alpha=alpha)


def addcmul(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1.0) -> Tensor:
    """x + value * a * b."""
    if isinstance(value, Tensor):
        return x + value * a * b
    return torch.addcmul(x, a, b, value=value)


def addcdiv(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1.0) -> Tensor:
    """x + value * a / b."""
    if isinstance(value, Tensor):
        return x + value * a / b
    return torch.addcdiv(x, a, b, value=value)


def lerp(x: Tensor, y: Tensor, weight: Scalar) -> Tensor:
    """x + weight * (y - x)."""
    if isinstance(weight, Tensor):
        weight = weight.to(x.dtype)
    return torch.lerp(x, y, weight)


def sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0, whose derivative at x = 0 is taken as 0, not inf.

    torch.optim places eps outside the root; keeping that placement for
    parity, a zero second moment (a coordinate whose gradient is always 0)
    would otherwise give inf * 0 = NaN in a hypergradient. The forward value
    is bit-identical to ``x.sqrt()``.
    """
    if not x.requires_grad:
        return x.sqrt()
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_i <xs_i, ys_i>, a 0-d tensor: the inner product of two lists of
    tensors viewed as one long vector (closed-form hypergradients)."""
    if len(xs) == 1:
        return torch.dot(xs[0].reshape(-1), ys[0].reshape(-1))
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]).sum()


def total(xs: list[Tensor]) -> Tensor:
    """The sum of every entry of every tensor in ``xs``, a 0-d tensor."""
    return torch.stack([x.sum() for x in xs]).sum()
