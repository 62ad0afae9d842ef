"""One exact step: second- and higher-order information at one point.

Functions of a loss given as ``loss_fn(params) -> scalar`` (``params`` a list
of tensors), all on autograd, any device:

- :func:`gradient`, :func:`hessian` (dense, for small problems),
  :func:`hvp` (Hessian-vector product, Pearlmutter's trick: the gradient of
  g . v), :func:`conjugate_gradient`.
- :func:`newton_direction`: d solving (H + damping I) d = -g, exactly
  (Cholesky) or by CG on HVPs; an indefinite system is an error that says so.
- :func:`taylor_step`: the step chosen from derivatives up to order k at one
  point (k = 2 is Newton's step, k = 3 a Halley/Chebyshev-type step).
- :func:`sharpness` (top Hessian eigenvalue by power iteration on HVPs) and
  :func:`hessian_trace` (Hutchinson's estimator), measures of flatness.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

LossFn = Callable[[list[Tensor]], Tensor]


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def _leaves(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().requires_grad_() for p in params]


def _scalar(loss: Tensor, where: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        found = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{where}: the loss must be a scalar tensor, got {found}")
    return loss.reshape(())


def gradient(loss_fn: LossFn, params: Sequence[Tensor]) -> Tensor:
    """The flat gradient of ``loss_fn`` at ``params``.

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> rc.exact.gradient(f, x).tolist()
    [2.0, 6.0]
    """
    leaves = _leaves(params)
    loss = _scalar(loss_fn(leaves), "rc.exact.gradient")
    return _flat(torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True))


def hessian(loss_fn: LossFn, params: Sequence[Tensor]) -> Tensor:
    """The dense Hessian (n x n, n = total parameter count).

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> rc.exact.hessian(f, x).tolist()
    [[2.0, 0.0], [0.0, 6.0]]
    """
    return HessianOperator.of(loss_fn, params, "rc.exact.hessian").dense()


class HessianOperator:
    """v -> H v at fixed params, reusing one gradient graph (Pearlmutter:
    H v is the gradient of g . v).

    >>> x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    >>> operator = rc.exact.HessianOperator(x[0] ** 2 + 3 * x[1] ** 2, [x])
    >>> operator(torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist(), operator.products
    ([2.0, 0.0], 1)
    """

    def __init__(self, loss: Tensor, leaves: Sequence[Tensor], where: str = "rc.exact") -> None:
        self.leaves = list(leaves)
        with torch.enable_grad():
            loss = _scalar(loss, where)
            self.grads = _flat(torch.autograd.grad(loss, self.leaves, create_graph=True, allow_unused=True,
                                                   materialize_grads=True))
        self.size = self.grads.numel()
        self.products = 0  # Hessian-vector products computed (each costs about two gradient evaluations)

    @classmethod
    def of(cls, loss_fn: LossFn, params: Sequence[Tensor], where: str) -> "HessianOperator":
        leaves = _leaves(params)
        with torch.enable_grad():
            return cls(loss_fn(leaves), leaves, where)

    def __call__(self, vector: Tensor) -> Tensor:
        if not self.grads.requires_grad:  # a loss linear in the params
            return torch.zeros_like(vector)
        self.products += 1
        products = torch.autograd.grad(self.grads, self.leaves, grad_outputs=vector, retain_graph=True,
                                       allow_unused=True, materialize_grads=True)
        return _flat(products).detach()

    def dense(self) -> Tensor:
        """The n x n Hessian: one batched backward pass over the identity's rows."""
        identity = torch.eye(self.size, dtype=self.grads.dtype, device=self.grads.device)
        if not self.grads.requires_grad:
            return torch.zeros_like(identity)
        self.products += self.size
        rows = torch.autograd.grad(self.grads, self.leaves, grad_outputs=identity, is_grads_batched=True,
                                   retain_graph=True, allow_unused=True, materialize_grads=True)
        matrix = torch.cat([row.reshape(self.size, -1) for row in rows], dim=1).detach()
        return 0.5 * (matrix + matrix.T)


def hvp(loss_fn: LossFn, params: Sequence[Tensor], vector: Tensor) -> Tensor:
    """H v (flat), without forming H.

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> rc.exact.hvp(f, x, torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()
    [2.0, 6.0]
    """
    return HessianOperator.of(loss_fn, params, "rc.exact.hvp")(vector)


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor, *, max_iterations: int | None = None,
                       tolerance: float = 1e-10, truncate: bool = False) -> tuple[Tensor, int]:
    """Solve A x = rhs for symmetric positive definite A given by ``matvec``.
    Stops when ||r|| <= tolerance ||rhs||. On a direction of non-positive
    curvature (A is not positive definite) it raises ValueError, or with
    ``truncate=True`` returns the iterate reached so far, or ``rhs`` itself if
    that happens at the first iteration (truncated Newton, as Steihaug's CG
    does: for a Newton system that is the steepest-descent direction).

    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> rhs = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> x, iterations = rc.exact.conjugate_gradient(lambda v: A @ v, rhs)
    >>> torch.allclose(A @ x, rhs), iterations
    (True, 2)
    """
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    squared = residual.dot(residual)
    target = tolerance**2 * rhs.dot(rhs)
    for iteration in range(max_iterations or 2 * rhs.numel()):
        if squared <= target:
            return x, iteration
        product = matvec(direction)
        curvature = direction.dot(product)
        if curvature <= 0:
            if truncate:
                return (x if iteration else rhs), iteration
            raise ValueError(f"conjugate gradient met curvature {curvature.item():.3g} <= 0 at iteration "
                             f"{iteration}: the system is not positive definite")
        step = squared / curvature
        x = x + step * direction
        residual = residual - step * product
        new_squared = residual.dot(residual)
        direction = residual + (new_squared / squared) * direction
        squared = new_squared
    return x, max_iterations or 2 * rhs.numel()


def newton_direction(loss_fn: LossFn, params: Sequence[Tensor], *, damping: float | Tensor = 0.0,
                     method: str = "exact", cg_iterations: int | None = None, strict: bool = False) -> list[Tensor]:
    """d = -(H + damping I)^{-1} g at ``params``, shaped like ``params``.

    ``method="exact"``: dense Hessian and a Cholesky solve (small problems);
    a Hessian plus damping that is not positive definite (a saddle point, a
    maximum, a singular Hessian without damping) raises ValueError naming its
    smallest eigenvalue. ``method="cg"``: conjugate gradient on
    Hessian-vector products, truncated where it meets negative curvature
    (the direction built so far; steepest descent if at once), the usual
    Hessian-free fallback for non-convex losses; ``strict=True`` raises there
    instead. ``damping`` may be a tensor: d is differentiable in it.

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> [d.round(decimals=12).tolist() for d in rc.exact.newton_direction(f, x)]   # one step to the minimum at 0
    [[-1.0, -1.0]]
    """
    operator = HessianOperator.of(loss_fn, params, "rc.exact.newton_direction")
    direction = solve_newton(operator, damping=damping, method=method, cg_iterations=cg_iterations, strict=strict)
    return _unflat(direction, params)


def solve_newton(operator: HessianOperator, *, damping: float | Tensor = 0.0, method: str = "exact",
                 cg_iterations: int | None = None, strict: bool = False) -> Tensor:
    """The flat Newton direction for a :class:`HessianOperator` (see :func:`newton_direction`).

    >>> x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    >>> rc.exact.solve_newton(rc.exact.HessianOperator(x[0] ** 2 + 3 * x[1] ** 2, [x])).round(decimals=12).tolist()
    [-1.0, -1.0]
    """
    if method not in ("exact", "cg"):
        raise ValueError(f"rc.Newton: method must be 'exact' or 'cg', got {method!r}")
    gradient_ = operator.grads.detach()
    if method == "exact":
        identity = torch.eye(operator.size, dtype=gradient_.dtype, device=gradient_.device)
        matrix = operator.dense() + damping * identity
        factor, info = torch.linalg.cholesky_ex(matrix)
        if info.item() != 0:
            smallest = torch.linalg.eigvalsh(matrix.detach())[0].item()
            raise ValueError(f"rc.Newton: the Hessian plus damping is not positive definite (smallest eigenvalue "
                             f"{smallest:.3g} with damping {float(damping):.3g}); near a saddle point or a maximum "
                             "Newton's step is not a descent step: add damping (rc.Newton(damping=...)) or start "
                             "elsewhere")
        return -torch.cholesky_solve(gradient_.unsqueeze(1), factor).squeeze(1)
    try:
        direction, _ = conjugate_gradient(lambda v: operator(v) + damping * v, -gradient_,
                                          max_iterations=cg_iterations, truncate=not strict)
    except ValueError as error:
        raise ValueError(f"rc.Newton: {error}; add damping (rc.Newton(damping=...)) or start elsewhere") from None
    return direction


def taylor_step(loss_fn: Callable[[Tensor], Tensor], x: Tensor, order: int, *, lr: float = 1.0,
                iterations: int = 50) -> Tensor:
    """The step from derivatives up to ``order`` at ``x`` (a 1-d tensor of a
    few coordinates; derivative tensors of order k have dim**k entries).

    With the Taylor model m(d) = sum_{j=1..order} D^j f(x)[d, ..., d] / j!:
    order 1: d = -lr * grad (a linear model has no minimiser); order 2:
    Newton's step, the minimiser of the quadratic model; order >= 3: the
    stationary point of m reached by Newton's method on grad m from the
    order-2 step (for order 3 in 1-D this is a Halley/Chebyshev-type step).
    Returns x + d.

    >>> f = lambda x: ((x - 3) ** 2).sum()
    >>> rc.exact.taylor_step(f, torch.tensor([0.0], dtype=torch.float64), order=2).tolist()   # Newton: exact here
    [3.0]
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"rc.exact.taylor_step: order must be an integer >= 1, got {order!r}")
    if x.dim() != 1:
        raise ValueError(f"rc.exact.taylor_step: x must be a 1-d tensor, got shape {tuple(x.shape)}")
    derivatives = _derivative_tensors(loss_fn, x, order)
    if order == 1:
        return x - lr * derivatives[0]
    hessian_ = derivatives[1]
    try:
        step = -torch.linalg.solve(hessian_, derivatives[0])
    except RuntimeError:
        step = torch.full_like(x, math.nan)
    if not torch.isfinite(step).all():
        raise ValueError("rc.exact.taylor_step: the Hessian is singular at x; no order >= 2 step exists "
                         "(a damped Newton step, rc.exact.newton_direction(..., damping=...), still does)")
    for _ in range(iterations if order >= 3 else 0):
        model_gradient, model_hessian = _model_derivatives(derivatives, step)
        try:
            update = torch.linalg.solve(model_hessian, model_gradient)
        except RuntimeError:
            break
        step = step - update
        if update.norm() <= 1e-15 * (1 + step.norm()):
            break
    return x + step


def _derivative_tensors(loss_fn, x: Tensor, order: int) -> list[Tensor]:
    """[D^1 f, ..., D^order f] at x, by nested autograd."""
    leaf = x.detach().requires_grad_()
    with torch.enable_grad():
        current = _scalar(loss_fn(leaf), "rc.exact.taylor_step")
        tensors = []
        for _ in range(order):
            flat = current.reshape(-1)
            rows = [torch.autograd.grad(value, leaf, create_graph=True, allow_unused=True, materialize_grads=True)[0]
                    for value in flat]
            current = torch.stack(rows).reshape(*current.shape, leaf.numel())
            tensors.append(current.detach())
    return tensors


def _model_derivatives(derivatives: list[Tensor], step: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient and Hessian of the Taylor model at ``step``."""
    gradient_ = torch.zeros_like(step)
    hessian_ = torch.zeros(step.numel(), step.numel(), dtype=step.dtype, device=step.device)
    for order, tensor in enumerate(derivatives, start=1):
        contracted = tensor
        for _ in range(order - 1):  # contract all but the first index with the step
            contracted = contracted @ step
        gradient_ = gradient_ + contracted / math.factorial(order - 1)
        if order >= 2:
            contracted = tensor
            for _ in range(order - 2):
                contracted = contracted @ step
            hessian_ = hessian_ + contracted / math.factorial(order - 2)
    return gradient_, hessian_


def sharpness(loss_fn: LossFn, params: Sequence[Tensor], *, iterations: int = 500, tolerance: float = 1e-10,
              seed: int = 0) -> float:
    """The largest eigenvalue of the Hessian at ``params``, by power
    iteration on Hessian-vector products (shifted when the eigenvalue of
    largest magnitude is negative, so the result is the top one).

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> round(rc.exact.sharpness(f, x), 6)
    6.0
    """
    operator = HessianOperator.of(loss_fn, params, "rc.exact.sharpness")
    top = _power_iteration(operator, 0.0, iterations, tolerance, seed)
    if top < 0:
        top = _power_iteration(operator, top, iterations, tolerance, seed) + top
    return top


def _power_iteration(operator, shift: float, iterations: int, tolerance: float, seed: int) -> float:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    grads = operator.grads
    vector = torch.randn(operator.size, generator=generator, dtype=grads.dtype).to(grads.device)
    vector = vector / vector.norm()
    value = 0.0
    for _ in range(iterations):
        product = operator(vector) - shift * vector
        new_value = vector.dot(product).item()
        norm = product.norm()
        if norm == 0:
            return 0.0
        vector = product / norm
        if abs(new_value - value) <= tolerance * max(1.0, abs(new_value)):
            return new_value
        value = new_value
    return value


def hessian_trace(loss_fn: LossFn, params: Sequence[Tensor], *, samples: int = 100, seed: int = 0
                  ) -> tuple[float, float]:
    """Hutchinson's estimate of tr(H) = E[v^T H v] over Rademacher v:
    (mean, standard error) over ``samples`` draws.

    >>> f = lambda params: params[0][0] ** 2 + 3 * params[0][1] ** 2      # Hessian diag(2, 6)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> rc.exact.hessian_trace(f, x, samples=10)        # exact for a diagonal Hessian
    (8.0, 0.0)
    """
    operator = HessianOperator.of(loss_fn, params, "rc.exact.hessian_trace")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    grads = operator.grads
    draws = []
    for _ in range(samples):
        vector = (torch.randint(0, 2, (operator.size,), generator=generator) * 2 - 1).to(grads)
        draws.append(vector.dot(operator(vector)).item())
    mean = sum(draws) / samples
    spread = math.sqrt(sum((d - mean) ** 2 for d in draws) / max(samples - 1, 1) / samples)
    return mean, spread
