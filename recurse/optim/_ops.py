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

They also take a list of Python floats (a *host vector*: one number per
entry), the form in which the online engine steps a tower's upper levels,
whose "parameters" are the few hyperparameters of the level below: there a
tensor operation would cost its dispatch many times over its arithmetic.
The float versions follow IEEE arithmetic as tensors do (x / 0 is inf or
NaN, not an exception), so divergence still reaches the non-finite guard.
"""

from __future__ import annotations

import math
import sys
from array import array

import torch
from torch import Tensor

Scalar = float | Tensor
Vector = list[Tensor] | list[float]


def on_host(xs: Vector) -> bool:
    """True for a host vector (a non-empty list of Python floats)."""
    return bool(xs) and type(xs[0]) is float


def _divide(x: float, y: float) -> float:
    """x / y with IEEE semantics: +-inf for x != 0 and NaN for x == 0 when y == 0."""
    if y != 0.0:  # (NaN too)
        return x / y
    return math.nan if x == 0.0 or math.isnan(x) else math.copysign(math.inf, x) * math.copysign(1.0, y)


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


def rounded(values: list[float], dtype: torch.dtype) -> list[float]:
    """Python floats rounded to ``dtype``, as a tensor of that dtype holds them."""
    if dtype == torch.float64:
        return list(values)
    if dtype == torch.float32:
        return array("f", values).tolist()
    return torch.tensor(values, dtype=dtype).tolist()


def dot(xs: Vector, ys: Vector) -> Tensor | float:
    """sum_i <xs_i, ys_i>, a 0-d tensor (a float for host vectors): the inner
    product of two lists of tensors viewed as one long vector (closed-form
    hypergradients)."""
    if on_host(xs):
        return sum((x * y for x, y in zip(xs, ys)), 0.0)
    if len(xs) == 1:
        return torch.dot(_flat(xs[0]), _flat(ys[0]))
    return torch.stack([torch.dot(_flat(x), _flat(y)) for x, y in zip(xs, ys)]).sum()


def inner_products(pairs: list[tuple[Vector, Vector | None]]) -> Tensor | list[float]:
    """[dot(xs, ys) for each pair], ``ys`` None meaning total(xs), computed
    together: a 1-D tensor from one stack and one sum for all the pairs
    (floats for host vectors). Every list has the same length (one entry
    per parameter)."""
    if not pairs or on_host(pairs[0][0]):
        return [dot(xs, ys) if ys is not None else total(xs) for xs, ys in pairs]
    parts = torch.stack([torch.dot(_flat(x), _flat(y)) if ys is not None else x.sum()
                         for xs, ys in pairs for x, y in zip(xs, ys if ys is not None else xs)])
    return parts.sum(0, keepdim=True) if len(pairs) == 1 else parts.view(len(pairs), -1).sum(1)


def _flat(x: Tensor) -> Tensor:
    return x if x.dim() == 1 else x.reshape(-1)  # (a view costs a dispatch too)


def total(xs: Vector) -> Tensor | float:
    """The sum of every entry of every tensor in ``xs``, a 0-d tensor (a float for host vectors)."""
    if on_host(xs):
        return sum(xs, 0.0)
    return torch.stack([x.sum() for x in xs]).sum()


def size(xs: Vector) -> int:
    """The number of entries of all of ``xs``."""
    return len(xs) if on_host(xs) else sum(x.numel() for x in xs)


def zero_like(x: Tensor | float) -> Tensor | float:
    """A 0-d zero on ``x``'s device and dtype (0.0 for a float)."""
    return 0.0 if type(x) is float else x.new_zeros(())


def tiny(xs: Vector) -> float:
    """The smallest positive normal number of the entries' type."""
    return sys.float_info.min if on_host(xs) or not xs else torch.finfo(xs[0].dtype).tiny


def all_finite(xs: list[Tensor]) -> bool:
    """True when no tensor in ``xs`` holds NaN or inf (see :class:`FiniteCheck`)."""
    return FiniteCheck(xs[0].device)(xs) if xs else True


class FiniteCheck:
    """A reusable :func:`all_finite` for tensors on one device.

    One kernel for the whole list: the check torch.amp's GradScaler runs on
    gradients (``torch._amp_foreach_non_finite_check_and_unscale_``) at scale
    1, which leaves every value bit-identical and moves no version counter.
    Its two flag tensors are kept between calls (the found flag is reset
    only after it fired). Where that kernel is missing (a dtype or device
    without it) one sum per tensor does the check: a NaN or inf anywhere
    makes the sum non-finite.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.found = torch.zeros((), device=device)  # float32, as the kernel requires
        self.scale = torch.ones((), device=device)

    def __call__(self, xs: list[Tensor]) -> bool:
        if not xs:
            return True
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(xs, self.found, self.scale)
        except (RuntimeError, NotImplementedError):
            return bool(torch.isfinite(torch.stack([x.sum() for x in xs])).all())
        if self.found.item():
            self.found.zero_()
            return False
        return True


def _per_tensor(scalar: Scalar, *lists: list[Tensor]) -> bool:
    """True when the single-tensor ops must be used: a tensor scalar or a
    graph to keep (differentiable), or an empty list (foreach ops refuse one)."""
    return (isinstance(scalar, Tensor) or not lists[0]
            or (torch.is_grad_enabled() and any(x.requires_grad for xs in lists for x in xs)))


def scale_all(xs: Vector, factor: Scalar) -> Vector:
    """[x * factor]."""
    if on_host(xs) or _per_tensor(factor, xs):
        return [x * factor for x in xs]
    return torch._foreach_mul(xs, factor)


def negated_all(xs: Vector) -> Vector:
    """[-x] (a sign flip: exact, as torch.optim's ``maximize`` takes it)."""
    if on_host(xs) or _per_tensor(1.0, xs):
        return [-x for x in xs]
    return torch._foreach_neg(xs)


def divide_all(xs: Vector, divisor: Scalar) -> Vector:
    """[x / divisor]."""
    if on_host(xs):
        return [_divide(x, divisor) for x in xs]
    if _per_tensor(divisor, xs):
        return [x / divisor for x in xs]
    return torch._foreach_div(xs, divisor)


def shift_all(xs: Vector, offset: Scalar) -> Vector:
    """[x + offset]."""
    if on_host(xs) or _per_tensor(offset, xs):
        return [x + offset for x in xs]
    return torch._foreach_add(xs, offset)


def add_scaled_all(xs: Vector, ys: Vector, alpha: Scalar) -> Vector:
    """[x + alpha * y]."""
    if on_host(xs):
        return [x + alpha * y for x, y in zip(xs, ys)]
    if _per_tensor(alpha, xs, ys):
        return [add_scaled(x, y, alpha) for x, y in zip(xs, ys)]
    return torch._foreach_add(xs, ys, alpha=alpha)


def lerp_all(xs: Vector, ys: Vector, weight: Scalar) -> Vector:
    """[x + weight * (y - x)]."""
    if on_host(xs):
        return [x + weight * (y - x) for x, y in zip(xs, ys)]
    if _per_tensor(weight, xs, ys):
        return [lerp(x, y, weight) for x, y in zip(xs, ys)]
    return torch._foreach_lerp(xs, ys, weight)


def addcmul_all(xs: Vector, as_: Vector, bs: Vector, value: Scalar) -> Vector:
    """[x + value * a * b]."""
    if on_host(xs):
        return [x + value * a * b for x, a, b in zip(xs, as_, bs)]
    if _per_tensor(value, xs, as_, bs):
        return [addcmul(x, a, b, value) for x, a, b in zip(xs, as_, bs)]
    return torch._foreach_addcmul(xs, as_, bs, value=value)


def addcdiv_all(xs: Vector, as_: Vector, bs: Vector, value: Scalar) -> Vector:
    """[x + value * a / b]."""
    if on_host(xs):
        return [x + value * _divide(a, b) for x, a, b in zip(xs, as_, bs)]
    if _per_tensor(value, xs, as_, bs):
        return [addcdiv(x, a, b, value) for x, a, b in zip(xs, as_, bs)]
    return torch._foreach_addcdiv(xs, as_, bs, value=value)


def divide_each(xs: Vector, ys: Vector) -> Vector:
    """[x / y]."""
    if on_host(xs):
        return [_divide(x, y) for x, y in zip(xs, ys)]
    if _per_tensor(1.0, xs, ys):
        return [x / y for x, y in zip(xs, ys)]
    return torch._foreach_div(xs, ys)


def multiply_each(xs: Vector, ys: Vector) -> Vector:
    """[x * y]."""
    if on_host(xs) or _per_tensor(1.0, xs, ys):
        return [x * y for x, y in zip(xs, ys)]
    return torch._foreach_mul(xs, ys)


def maximum_each(xs: Vector, ys: Vector) -> Vector:
    """[max(x, y)] (NaN where either is NaN, as torch.maximum)."""
    if on_host(xs):
        return [math.nan if math.isnan(x) or math.isnan(y) else max(x, y) for x, y in zip(xs, ys)]
    if _per_tensor(1.0, xs, ys):
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]
    return torch._foreach_maximum(xs, ys)


def clamp_min_all(xs: Vector, floor: float) -> Vector:
    """[max(x, floor)] (NaN stays NaN)."""
    if on_host(xs):
        return [x if x >= floor or math.isnan(x) else floor for x in xs]
    if _per_tensor(floor, xs):
        return [x.clamp_min(floor) for x in xs]
    return torch._foreach_clamp_min(xs, floor)


def copies(xs: Vector) -> Vector:
    """Copies of the tensors (floats are values already)."""
    return list(xs) if on_host(xs) else [x.clone() for x in xs]


def zeros_like_all(xs: Vector) -> Vector:
    """Zeros shaped like each entry."""
    return [0.0] * len(xs) if on_host(xs) else [torch.zeros_like(x) for x in xs]


def copy_all(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """destination.copy_(source) for each pair, in one foreach call."""
    if destinations:
        torch._foreach_copy_(destinations, sources)


def sqrt_all(xs: Vector) -> Vector:
    """[sqrt(x)], with :func:`sqrt`'s derivative at 0 where a graph is kept."""
    if on_host(xs):
        return [math.sqrt(x) if x >= 0.0 else math.nan for x in xs]
    if _per_tensor(1.0, xs):
        return [sqrt(x) for x in xs]
    return torch._foreach_sqrt(xs)
