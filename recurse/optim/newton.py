"""Newton's method, damped."""

from __future__ import annotations

from recurse.constraints import positive
from recurse.optim.base import Hyperparameter, Optimizer


class Newton(Optimizer):
    """Damped Newton (Levenberg-Marquardt style damping):

        d_t = -(H_t + damping I)^{-1} g_t ,   p_t = p_{t-1} + lr * d_t

    with H_t the Hessian of the loss at p_{t-1}. ``method="exact"`` forms H
    (small problems); when H + damping I is not positive definite (a saddle
    point, a maximum, a singular H without damping) the step raises
    ValueError saying so: Newton's step would not descend. ``method="cg"``
    solves with conjugate gradient on Hessian-vector products (large ones)
    and, on a non-convex loss, stops where it meets negative curvature
    (truncated Newton; steepest descent if at the first iteration). lr and
    damping are hyperparameters like any other (learnable by a level above).
    The state counts the Hessian-vector products spent so far
    (``state["hessian_vector_products"]``; the exact method counts one per
    Hessian row), the cost to put beside a first-order method's gradients.

    Newton needs the loss, not only its gradient: give the HyperOptimizer a
    closure that returns the loss *without* calling backward (the engine
    takes the gradient itself and keeps the graph for the Hessian):

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.Newton(damping=1e-3))
    >>> _ = opt.step(lambda: torch.nn.functional.mse_loss(model(inputs), targets))
    """

    needs_loss_graph = True
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("damping", positive, can_be_off=True),
    )

    def __init__(self, lr=1.0, damping=0.0, *, method: str = "exact", cg_iterations: int | None = None, **options):
        super().__init__(lr=lr, damping=damping, **options)
        if method not in ("exact", "cg"):
            raise ValueError(f"rc.Newton: method must be 'exact' or 'cg', got {method!r}")
        if cg_iterations is not None and (isinstance(cg_iterations, bool) or not isinstance(cg_iterations, int)
                                          or cg_iterations < 1):
            raise ValueError(f"rc.Newton: cg_iterations must be an integer >= 1 or None, got {cg_iterations!r}")
        self.method, self.cg_iterations = method, cg_iterations

    def init(self, params):
        return {"hessian_vector_products": 0}

    def update(self, params, grads, state, hyper, *, closure=None):
        from recurse.exact import HessianOperator, _unflat, solve_newton

        if closure is None:
            raise ValueError("rc.Newton needs the loss: call opt.step(closure) with a closure that returns the "
                             "loss without calling backward")
        operator = HessianOperator(closure(), params, "rc.Newton")
        direction = _unflat(solve_newton(operator, damping=hyper["damping"], method=self.method,
                                         cg_iterations=self.cg_iterations), params)
        state = {"hessian_vector_products": state["hessian_vector_products"] + operator.products}
        return [p.detach() + hyper["lr"] * d for p, d in zip(params, direction)], state
