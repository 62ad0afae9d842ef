"""RMSprop, plain or centered, with optional momentum."""

from __future__ import annotations

import torch

from recurse.constraints import positive, unit_interval
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, flag


class RMSprop(Optimizer):
    """torch.optim.RMSprop.

        d_t = g_t + weight_decay * p_{t-1}      (-g_t with maximize=True)
        s_t = alpha * s_{t-1} + (1 - alpha) * d_t^2
        a_t = alpha * a_{t-1} + (1 - alpha) * d_t            (centered only)
        r_t = sqrt(s_t - a_t^2) (centered)  |  sqrt(s_t)      , plus eps
        b_t = momentum * b_{t-1} + d_t / r_t ; p_t = p_{t-1} - lr * b_t   (momentum > 0)
        p_t = p_{t-1} - lr * d_t / r_t                                    (otherwise)

    >>> opt = rc.RMSprop(1e-2, centered=True, hyper=rc.Adam(1e-3))
    """

    flag_names = ("centered", "maximize")
    per_parameter_state = ("square_avg", "grad_avg", "momentum_buffer")
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("alpha", unit_interval),
        Hyperparameter("eps", positive),
        Hyperparameter("weight_decay", positive, can_be_off=True),
        Hyperparameter("momentum", unit_interval, can_be_off=True),
    )

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, *, centered=False,
                 maximize=False, **options):
        super().__init__(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, **options)
        self.centered = flag("rc.RMSprop", "centered", centered)
        self.maximize = flag("rc.RMSprop", "maximize", maximize)

    def init(self, params):
        state = {"square_avg": [torch.zeros_like(p) for p in params]}
        if self.centered:
            state["grad_avg"] = [torch.zeros_like(p) for p in params]
        if self.initial_values["momentum"] != 0.0:
            state["momentum_buffer"] = [torch.zeros_like(p) for p in params]
        return state

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        lr, alpha, eps, momentum = hyper["lr"], hyper["alpha"], hyper["eps"], hyper["momentum"]
        has_weight_decay = self.initial_values["weight_decay"] != 0.0
        new_state = {key: [] for key in state}
        new_params = []
        if self.maximize:
            grads = _ops.negated_all(list(grads))
        for i, (param, grad) in enumerate(zip(params, grads)):
            if has_weight_decay:
                grad = _ops.add_scaled(grad, param, hyper["weight_decay"])
            square_avg = _ops.addcmul(state["square_avg"][i] * alpha, grad, grad, 1 - alpha)
            new_state["square_avg"].append(square_avg)
            if self.centered:
                grad_avg = _ops.lerp(state["grad_avg"][i], grad, 1 - alpha)
                new_state["grad_avg"].append(grad_avg)
                avg = _ops.sqrt(_ops.addcmul(square_avg, grad_avg, grad_avg, -1.0))
            else:
                avg = _ops.sqrt(square_avg)
            avg = avg + eps
            if "momentum_buffer" in state:
                buffer = _ops.addcdiv(state["momentum_buffer"][i] * momentum, grad, avg)
                new_state["momentum_buffer"].append(buffer)
                new_params.append(_ops.add_scaled(param, buffer, -lr))
            else:
                new_params.append(_ops.addcdiv(param, grad, avg, -lr))
        return new_params, new_state
