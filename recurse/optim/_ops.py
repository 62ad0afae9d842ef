"""Pointwise ops that accept a hyperparameter as a Python float or a tensor.

A fixed hyperparameter is a Python float and goes through the very kernel
torch.optim uses (``torch.add(x, y, alpha=a)`` and friends), so a recurse
optimizer at depth 0 is bit-identical to torch.optim. A learned
hyperparameter is a tensor, and the same formula is written with plain
differentiable ops so that gradients reach it.

The ``*_all`` versions take lists (one tensor per parameter): with a float
and no tensor that keeps a graph they make one ``torch._foreach_*`` call for
the whole list, as torch.optim's foreach path does; otherwise they apply the
single-tensor op to each (differentiable, as above).
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
        return torch.dot(_flat(xs[0]), _flat(ys[0]))
    return torch.stack([torch.dot(_flat(x), _flat(y)) for x, y in zip(xs, ys)]).sum()


def _flat(x: Tensor) -> Tensor:
    return x if x.dim() == 1 else x.reshape(-1)  # (a view costs a dispatch too)


def total(xs: list[Tensor]) -> Tensor:
    """The sum of every entry of every tensor in ``xs``, a 0-d tensor."""
    return torch.stack([x.sum() for x in xs]).sum()


def all_finite(xs: list[Tensor]) -> bool:
    """True when no tensor in ``xs`` holds NaN or inf.

    One kernel for the whole list: the check torch.amp's GradScaler runs on
    gradients (``torch._amp_foreach_non_finite_check_and_unscale_``) at scale
    1, which leaves every value bit-identical and moves no version counter.
    Where that kernel is missing (a dtype or device without it) one sum per
    tensor does the check: a NaN or inf anywhere makes the sum non-finite.
    """
    if not xs:
        return True
    found = torch.zeros((), device=xs[0].device)  # float32, as the kernel requires
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(xs, found, torch.ones_like(found))
    except (RuntimeError, NotImplementedError):
        return bool(torch.isfinite(torch.stack([x.sum() for x in xs])).all())
    return not found.item()


def _per_tensor(scalar: Scalar, *lists: list[Tensor]) -> bool:
    """True when the single-tensor ops must be used: a tensor scalar or a
    graph to keep (differentiable), or an empty list (foreach ops refuse one)."""
    return isinstance(scalar, Tensor) or not lists[0] or any(x.requires_grad for xs in lists for x in xs)


def scale_all(xs: list[Tensor], factor: Scalar) -> list[Tensor]:
    """[x * factor]."""
    if _per_tensor(factor, xs):
        return [x * factor for x in xs]
    return torch._foreach_mul(xs, factor)


def divide_all(xs: list[Tensor], divisor: Scalar) -> list[Tensor]:
    """[x / divisor]."""
    if _per_tensor(divisor, xs):
        return [x / divisor for x in xs]
    return torch._foreach_div(xs, divisor)


def shift_all(xs: list[Tensor], offset: Scalar) -> list[Tensor]:
    """[x + offset]."""
    if _per_tensor(offset, xs):
        return [x + offset for x in xs]
    return torch._foreach_add(xs, offset)


def add_scaled_all(xs: list[Tensor], ys: list[Tensor], alpha: Scalar) -> list[Tensor]:
    """[x + alpha * y]."""
    if _per_tensor(alpha, xs, ys):
        return [add_scaled(x, y, alpha) for x, y in zip(xs, ys)]
    return torch._foreach_add(xs, ys, alpha=alpha)


def lerp_all(xs: list[Tensor], ys: list[Tensor], weight: Scalar) -> list[Tensor]:
    """[x + weight * (y - x)]."""
    if _per_tensor(weight, xs, ys):
        return [lerp(x, y, weight) for x, y in zip(xs, ys)]
    return torch._foreach_lerp(xs, ys, weight)


def addcmul_all(xs: list[Tensor], as_: list[Tensor], bs: list[Tensor], value: Scalar) -> list[Tensor]:
    """[x + value * a * b]."""
    if _per_tensor(value, xs, as_, bs):
        return [addcmul(x, a, b, value) for x, a, b in zip(xs, as_, bs)]
    return torch._foreach_addcmul(xs, as_, bs, value=value)


def addcdiv_all(xs: list[Tensor], as_: list[Tensor], bs: list[Tensor], value: Scalar) -> list[Tensor]:
    """[x + value * a / b]."""
    if _per_tensor(value, xs, as_, bs):
        return [addcdiv(x, a, b, value) for x, a, b in zip(xs, as_, bs)]
    return torch._foreach_addcdiv(xs, as_, bs, value=value)


def copy_all(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """destination.copy_(source) for each pair, in one foreach call."""
    if destinations:
        torch._foreach_copy_(destinations, sources)


def sqrt_all(xs: list[Tensor]) -> list[Tensor]:
    """[sqrt(x)], with :func:`sqrt`'s derivative at 0 where a graph is kept."""
    if _per_tensor(1.0, xs):
        return [sqrt(x) for x in xs]
    return torch._foreach_sqrt(xs)
