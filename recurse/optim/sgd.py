"""Stochastic gradient descent with momentum, dampening, Nesterov and L2."""

from __future__ import annotations

from recurse.constraints import positive, unit_interval
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer


class SGD(Optimizer):
    """torch.optim.SGD as a pure function of its hyperparameters.

        d_t = g_t + weight_decay * p_{t-1}
        b_t = d_t                                        (first step)
        b_t = momentum * b_{t-1} + (1 - dampening) * d_t (later steps)
        u_t = d_t + momentum * b_t  (nesterov)  |  b_t  (otherwise)
        p_t = p_{t-1} - lr * u_t

    With momentum 0 there is no buffer and u_t = d_t.

    >>> opt = rc.SGD(0.1, momentum=0.9, hyper=rc.SGD(1e-3))
    """

    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("momentum", unit_interval, can_be_off=True),
        Hyperparameter("dampening", unit_interval, can_be_off=True),
        Hyperparameter("weight_decay", positive, can_be_off=True),
    )

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, *, nesterov=False, **options):
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, **options)
        if nesterov and (momentum == 0.0 or dampening != 0.0):
            raise ValueError(
                f"rc.SGD: nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
                f"dampening={dampening!r}"
            )
        self.nesterov = bool(nesterov)

    def init(self, params):
        return {"momentum_buffer": [None] * len(params)}

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        lr, momentum, weight_decay = hyper["lr"], hyper["momentum"], hyper["weight_decay"]
        use_momentum = self.initial_values["momentum"] != 0.0
        new_params, new_buffers = [], []
        for param, grad, buffer in zip(params, grads, state["momentum_buffer"]):
            if self.initial_values["weight_decay"] != 0.0:
                grad = _ops.add_scaled(grad, param, weight_decay)
            if use_momentum:
                if buffer is None:
                    buffer = grad
                else:
                    buffer = _ops.add_scaled(buffer * momentum, grad, 1 - hyper["dampening"])
                grad = _ops.add_scaled(grad, buffer, momentum) if self.nesterov else buffer
            new_buffers.append(buffer)
            new_params.append(_ops.add_scaled(param, grad, -lr))
        return new_params, {"momentum_buffer": new_buffers}
