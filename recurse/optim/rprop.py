"""Rprop: a step size per coordinate, learned from the signs of the gradient."""

from __future__ import annotations

import math

import torch

from recurse.constraints import positive
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, finite_float


class Rprop(Optimizer):
    """torch.optim.Rprop (resilient backpropagation, Riedmiller and Braun 1993).

    Each coordinate keeps its own step size s, started at ``lr``:

        r_t = eta_plus   where g_t g_{t-1} > 0,
              eta_minus  where g_t g_{t-1} < 0,
              1          where it is 0 (the first step, and the step after a sign change)
        s_t = clamp(s_{t-1} r_t, step_min, step_max)
        h_t = 0 where g_t g_{t-1} < 0, else g_t      (h is what the next step compares with)
        p_t = p_{t-1} - s_t sign(h_t)

    Only the sign of the gradient is used, so the step does not depend on
    the gradient's scale, and its size grows geometrically while the sign
    holds and shrinks when it flips: on a noisy gradient that flips at
    random half the time, it shrinks (a step of 1.2 * 0.5 < 1 per pair). As
    a tower's top level, whose input is a hypergradient of unknown scale,
    that ends the recursion with no step size to choose: ``lr`` is only the
    first step. ``lr`` is read once, when the state is built (as
    torch.optim's is), so nothing above Rprop can learn it (``hyper=`` is
    refused), and a schedule writing ``param_groups[i]["lr"]`` later
    changes nothing.

    As a top level it is a measured candidate, not the recommended one: in
    studies/tuning_free.py, AdamW learning its lr under Rprop reached the
    tuned loss on the transformer (1.05x) but ended 3.02x it on the digits
    MLP, whose training loss kept asking for a larger lr; over an Adam
    level, Rprop's steps (up to ``step_max`` = 50 in log lr) raised Adam's
    lr until the runs diverged. A smaller ``step_sizes`` bound suits a
    top level.

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.AdamW(1e-3, learn="lr", hyper=rc.Rprop()))
    """

    host_floats = True
    per_parameter_state = ("prev", "step_size")
    hyperparameter_specs = (Hyperparameter("lr", positive),)

    def __init__(self, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), **options):
        if options.get("learn") not in (None, (), []):
            raise ValueError(f"rc.Rprop: its lr is only the first step size, read once, so it cannot be learned; "
                             f"got learn={options['learn']!r}")
        if options.get("hyper") is not None:
            raise ValueError("rc.Rprop: nothing above it can learn its lr (only the first step size, read once), "
                             f"so it takes no hyper=; got hyper={options['hyper']!r}")
        options["learn"] = ()
        super().__init__(lr=lr, **options)
        self.eta_minus, self.eta_plus = _pair("rc.Rprop", "etas", etas)
        if not 0.0 < self.eta_minus < 1.0 < self.eta_plus:
            raise ValueError(f"rc.Rprop: etas must satisfy 0 < eta_minus < 1 < eta_plus, got {etas!r}")
        self.step_min, self.step_max = _pair("rc.Rprop", "step_sizes", step_sizes)
        if not 0.0 <= self.step_min <= self.step_max:
            raise ValueError(f"rc.Rprop: step_sizes must satisfy 0 <= step_min <= step_max, got {step_sizes!r}")

    def init(self, params):
        lr = self.initial_values["lr"]
        if _ops.on_host(params):
            return {"step": 0, "prev": [0.0] * len(params), "step_size": [lr] * len(params)}
        return {"step": 0, "prev": [torch.zeros_like(p) for p in params],
                "step_size": [torch.full_like(p, lr) for p in params]}

    def update_depends_on_params(self):
        return False

    def update(self, params, grads, state, hyper, *, closure=None):
        step = state["step"] + 1
        if _ops.on_host(params):
            return self._host_update(params, grads, state, step)
        new_params, prevs, step_sizes = [], [], []
        for param, grad, prev, step_size in zip(params, grads, state["prev"], state["step_size"]):
            agreement = (grad * prev).sign()
            flipped = agreement < 0
            factor = torch.ones_like(step_size).masked_fill(agreement > 0, self.eta_plus).masked_fill(
                flipped, self.eta_minus)
            step_size = (step_size * factor).clamp(self.step_min, self.step_max)
            kept = grad.masked_fill(flipped, 0.0)
            new_params.append(torch.addcmul(param, kept.sign(), step_size, value=-1))
            prevs.append(kept.detach())
            step_sizes.append(step_size)
        return new_params, {"step": step, "prev": prevs, "step_size": step_sizes}

    def _host_update(self, params, grads, state, step):
        """The same rule on a host vector (Python floats: a tower level's few knobs)."""
        new_params, prevs, step_sizes = [], [], []
        for param, grad, prev, step_size in zip(params, grads, state["prev"], state["step_size"]):
            agreement = grad * prev
            if agreement > 0:
                step_size *= self.eta_plus
            elif agreement < 0:
                step_size, grad = step_size * self.eta_minus, 0.0
            step_size = min(max(step_size, self.step_min), self.step_max)
            new_params.append(param - step_size * _sign(grad))
            prevs.append(grad)
            step_sizes.append(step_size)
        return new_params, {"step": step, "prev": prevs, "step_size": step_sizes}


def _sign(x: float) -> float:
    """torch.sign on a float: -1, 0 or 1, and NaN for NaN (so divergence reaches the guard)."""
    if math.isnan(x):
        return x
    return float((x > 0) - (x < 0))


def _pair(owner: str, name: str, value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: {name} must be a pair of numbers, got {value!r}")
    return finite_float(owner, f"{name}[0]", value[0]), finite_float(owner, f"{name}[1]", value[1])
