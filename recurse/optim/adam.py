"""Adam and AdamW."""

from __future__ import annotations

import torch

from recurse.constraints import positive, unit_interval
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient).

        d_t = g_t + weight_decay * p_{t-1}
        m_t = beta1 * m_{t-1} + (1 - beta1) * d_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * d_t^2
        p_t = p_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    >>> opt = rc.Adam(1e-3, hyper=rc.SGD(1e-4))
    """

    decoupled_weight_decay = False
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("beta1", unit_interval, can_be_off=True),
        Hyperparameter("beta2", unit_interval),
        Hyperparameter("eps", positive),
        Hyperparameter("weight_decay", positive, can_be_off=True),
    )

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **options):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"rc.{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        super().__init__(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, **options)

    def init(self, params):
        return {
            "step": 0,
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
        }

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
        weight_decay = hyper["weight_decay"]
        has_weight_decay = self.initial_values["weight_decay"] != 0.0
        step = state["step"] + 1
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        new_params, exp_avgs, exp_avg_sqs = [], [], []
        for param, grad, exp_avg, exp_avg_sq in zip(params, grads, state["exp_avg"], state["exp_avg_sq"]):
            if has_weight_decay:
                if self.decoupled_weight_decay:
                    param = param * (1 - lr * weight_decay)
                else:
                    grad = _ops.add_scaled(grad, param, weight_decay)
            exp_avg = _ops.lerp(exp_avg, grad, 1 - beta1)
            exp_avg_sq = _ops.addcmul(exp_avg_sq * beta2, grad, grad, 1 - beta2)
            denom = _ops.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
            new_params.append(_ops.addcdiv(param, exp_avg, denom, -step_size))
            exp_avgs.append(exp_avg)
            exp_avg_sqs.append(exp_avg_sq)
        return new_params, {"step": step, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay,
    p <- p * (1 - lr * weight_decay) before the Adam step."""

    decoupled_weight_decay = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **options):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **options)
