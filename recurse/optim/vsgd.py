"""vSGD: SGD whose per-coordinate learning rate comes from the statistics of the gradient."""

from __future__ import annotations

import torch

from recurse.constraints import positive
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, SavedProduct, finite_float



class VSGD(Optimizer):
    """vSGD ("No More Pesky Learning Rates", Schaul, Zhang and LeCun 2013),
    per coordinate (vSGD-l), with the finite-difference curvature and the
    variance-corrected rate of Schaul and LeCun's follow-up ("Adaptive
    learning rates and parallelization for stochastic, sparse, non-smooth
    gradients", 2013). Each coordinate keeps running averages, over a memory
    of tau steps, of the gradient g, its square, a curvature h and its square:

        gbar  <- (1 - 1/tau) gbar  + g / tau        vbar  <- (1 - 1/tau) vbar  + g^2 / tau
        hbar  <- (1 - 1/tau) hbar  + h / tau        vhbar <- (1 - 1/tau) vhbar + h^2 / tau
        rate   = (hbar / vhbar) (gbar^2 / vbar)
        tau   <- (1 - gbar^2 / vbar) tau + 1
        p     <- p - lr * rate * g                  (lr = 1: a multiplier a level above may learn)

    gbar^2 / vbar in [0, 1] is the share of the gradient that is signal, not
    noise: far from the optimum the rate is 1 / h (Newton's step), near it
    the rate falls as the noise takes over, which anneals it like 1/t on a
    stationary problem, and tau shortens the memory when the gradient
    changes. There is no learning rate to choose.

    The curvature h, with no Gauss-Newton pass through the model, is the
    follow-up paper's finite difference of the gradient along d = gbar (the
    gradient itself at the first step), on the same sample:
    h = |g(p + d) - g(p)| / |d|. Taken over a finite distance rather than as
    a Hessian-vector product (its limit), it also sees the kinks of a ReLU
    network, where the Hessian is 0 and the rate 1 / h would blow up; and it
    needs no second backward pass (which fused attention kernels do not
    have). So the step needs the loss again at p + d: ``opt.step(closure)``
    with a closure as torch.optim.LBFGS takes (it zeroes the gradients,
    computes the loss, calls backward and returns the loss), which the step
    calls twice: once at p (the gradient), once at p + d (the parameters are
    moved there and back; .grad then holds the gradient at p + d). The
    second call is made per set of parameters the rule steps together: once
    per param group, and, once some parameters were skipped (no .grad), once
    per batch of those that took as many steps. Dropout draws new masks in
    it, and batch norm updates its running statistics again. A secant
    along the last update would need no closure, but consecutive gradients
    come from different batches, their noise swamps |g_t - g_{t-1}| once the
    steps are small, and the first step would have no curvature to be sized
    by: that is why it is not offered.

    Slow start (as the reference implementation does): the first gradient
    and curvature stand for ``initial_samples`` (n0 = 10) samples (tau = n0),
    and the variances are overestimated by ``slow_start`` (C = 2), so the
    first step is C^2 = 4 times shorter than 1 / h. Outliers: a gradient
    further than ``outlier_level`` (2) standard deviations from gbar
    lengthens that coordinate's memory by one step, so it weighs less (None:
    no detection).

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.VSGD())
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(inputs), targets)
    ...     loss.backward()
    ...     return loss
    >>> _ = opt.step(closure)
    """

    needs_closure = True
    per_parameter_state = ("gbar", "vbar", "hbar", "vhbar", "tau")
    hyperparameter_specs = (Hyperparameter("lr", positive),)

    def __init__(self, lr=1.0, *, slow_start=2.0, initial_samples=10, outlier_level=2.0, **options):
        super().__init__(lr=lr, **options)
        if self.normalizer is not None:
            raise ValueError("rc.VSGD: normalize= would divide the gradient at p but not the one at p + gbar, and "
                             "the curvature compares the two; vSGD scales its step itself")
        self.slow_start = finite_float("rc.VSGD", "slow_start", slow_start)
        if self.slow_start < 1:
            raise ValueError(f"rc.VSGD: slow_start must be a number >= 1 (it overestimates the variances), "
                             f"got {slow_start!r}")
        if isinstance(initial_samples, bool) or not isinstance(initial_samples, int) or initial_samples < 1:
            raise ValueError(f"rc.VSGD: initial_samples must be an integer >= 1, got {initial_samples!r}")
        self.initial_samples = initial_samples
        if outlier_level is not None:
            outlier_level = finite_float("rc.VSGD", "outlier_level", outlier_level)
            if outlier_level <= 0:
                raise ValueError(f"rc.VSGD: outlier_level must be a number > 0 or None, got {outlier_level!r}")
        self.outlier_level = outlier_level

    def init(self, params):
        nothing = [None] * len(params)
        return {"step": 0, **{key: list(nothing) for key in self.per_parameter_state}}

    def update_depends_on_params(self):
        return False  # p - lr * (rate g): the rate does not depend on lr

    def update(self, params, grads, state, hyper, *, closure=None):
        new_params, new_state, _ = self._step(params, grads, state, hyper["lr"], closure)
        return new_params, new_state

    def update_with_vjp(self, params, grads, state, values, *, closure=None):
        """Closed form: p_t = p_{t-1} - lr u_t with u_t = rate g_t, which does
        not depend on lr, so d p_t / d lr = -u_t (saved)."""
        new_params, new_state, directions = self._step(params, grads, state, values["lr"], closure)
        return new_params, new_state, SavedProduct({"direction": directions, "values": values}, self.saved_vjp)

    def saved_vjp(self, saved, incoming):
        (product,) = self.host_scalars(_ops.inner_products([(list(incoming), saved["direction"])]))
        return self.raw_gradient([(-1.0, product)], saved["values"])

    def _step(self, params, grads, state, lr, closure):
        """The update at ``lr``, its state, and the directions u = rate g."""
        if closure is None:
            raise ValueError("rc.VSGD evaluates the loss again for its curvature: call opt.step(closure) with a "
                             "closure as torch.optim.LBFGS takes (it zeroes the gradients, computes the loss, calls "
                             "backward and returns the loss)")
        params, grads = list(params), [grad.detach().clone() for grad in grads]  # (the closure may zero .grad)
        curvatures = self._curvatures(closure, params, grads, state)
        new_state = {"step": state["step"] + 1, **{key: [] for key in self.per_parameter_state}}
        new_params, directions = [], []
        for i, (param, grad, curvature) in enumerate(zip(params, grads, curvatures)):
            grad = grad.detach()
            statistics = self._statistics(grad, curvature, {key: state[key][i] for key in self.per_parameter_state})
            signal = _ratio(statistics["gbar"] ** 2, statistics["vbar"])
            statistics["tau"] = (1 - signal) * statistics["tau"] + 1
            for key, value in statistics.items():
                new_state[key].append(value)
            directions.append(_ratio(statistics["hbar"], statistics["vhbar"]) * signal * grad)
            new_params.append(param.detach() - lr * directions[-1])
        return new_params, new_state, directions

    def _curvatures(self, closure, params, grads, state):
        """h = |g(p + d) - g(p)| / |d| per coordinate (0 where d is), d = gbar
        (the gradient at the first step), the gradient at p + d from
        ``closure`` on the same sample; the parameters are put back bit for
        bit. (The closure runs the model a second time: dropout draws new
        masks there, and batch norm updates its running statistics twice.)"""
        along = [grad if average is None else average for grad, average in zip(grads, state["gbar"])]
        originals = [param.detach().clone() for param in params]
        try:
            with torch.no_grad():
                torch._foreach_add_(params, along)
            for param in params:  # (a closure that does not zero them would add to this step's gradient)
                param.grad = None
            with torch.enable_grad():
                closure()
            shifted = [torch.zeros_like(grad) if param.grad is None else param.grad.detach().clone()
                       for param, grad in zip(params, grads)]
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, originals)
        return [_ratio((moved - grad).abs(), direction.abs()) for moved, grad, direction in zip(shifted, grads, along)]

    def _statistics(self, grad, curvature, old):
        """The running averages and the memory tau (before its update by this
        step's signal share) after this gradient and curvature."""
        if old["gbar"] is None:  # slow start: this sample stands for initial_samples of them
            slow = self.slow_start
            return {"gbar": grad.clone(), "vbar": slow * grad ** 2, "hbar": curvature.clone(),
                    "vhbar": slow * curvature ** 2, "tau": torch.full_like(grad, float(self.initial_samples))}
        tau = old["tau"]
        if self.outlier_level is not None:  # (an outlier lengthens the memory by one step, so that it weighs less)
            spread = (old["vbar"] - old["gbar"] ** 2).clamp_min(0)
            tau = tau + ((grad - old["gbar"]) ** 2 > self.outlier_level ** 2 * spread).to(grad.dtype)
        keep = 1 - 1 / tau
        return {"gbar": keep * old["gbar"] + grad / tau, "vbar": keep * old["vbar"] + grad ** 2 / tau,
                "hbar": keep * old["hbar"] + curvature / tau, "vhbar": keep * old["vhbar"] + curvature ** 2 / tau,
                "tau": tau}

    @staticmethod
    def rates(state) -> list[torch.Tensor | None]:
        """The per-coordinate rate (hbar / vhbar) (gbar^2 / vbar) of this
        state's averages (None before the first step)."""
        return [None if hbar is None else _ratio(hbar, vhbar) * _ratio(gbar ** 2, vbar)
                for gbar, vbar, hbar, vhbar in zip(state["gbar"], state["vbar"], state["hbar"], state["vhbar"])]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is (no gradient, or no
    curvature, seen there yet). No constant is added to either, so the rate
    does not depend on the scale of the loss: a loss times s has gradients
    times s, curvatures times s and rates over s, and takes the same steps."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny), 0.0)
