"""Adagrad."""

from __future__ import annotations

import torch

from recurse.constraints import positive
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, finite_float, flag


class Adagrad(Optimizer):
    """torch.optim.Adagrad.

        d_t = g_t + weight_decay * p_{t-1}      (-g_t with maximize=True)
        s_t = s_{t-1} + d_t^2              (s_0 = initial_accumulator_value)
        p_t = p_{t-1} - lr / (1 + (t - 1) * lr_decay) * d_t / (sqrt(s_t) + eps)

    >>> opt = rc.Adagrad(1e-1, hyper=rc.SGD(1e-3))
    """

    flag_names = ("maximize",)
    per_parameter_state = ("sum",)
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("lr_decay", positive, can_be_off=True),
        Hyperparameter("weight_decay", positive, can_be_off=True),
        Hyperparameter("eps", positive),
    )

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 maximize=False, **options):
        super().__init__(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, **options)
        self.maximize = flag("rc.Adagrad", "maximize", maximize)
        self.initial_accumulator_value = finite_float(
            "rc.Adagrad", "initial_accumulator_value", initial_accumulator_value
        )
        if self.initial_accumulator_value < 0:
            raise ValueError(f"rc.Adagrad: initial_accumulator_value must be >= 0, got {initial_accumulator_value!r}")

    def init(self, params):
        return {"step": 0, "sum": [torch.full_like(p, self.initial_accumulator_value) for p in params]}

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        step = state["step"] + 1
        has_weight_decay = self.initial_values["weight_decay"] != 0.0
        decayed_lr = hyper["lr"] / (1 + (step - 1) * hyper["lr_decay"])
        new_params, sums = [], []
        if self.maximize:
            grads = _ops.negated_all(list(grads))
        for param, grad, square_sum in zip(params, grads, state["sum"]):
            if has_weight_decay:
                grad = _ops.add_scaled(grad, param, hyper["weight_decay"])
            square_sum = _ops.addcmul(square_sum, grad, grad, 1.0)
            std = _ops.sqrt(square_sum) + hyper["eps"]
            new_params.append(_ops.addcdiv(param, grad, std, -decayed_lr))
            sums.append(square_sum)
        return new_params, {"step": step, "sum": sums}
