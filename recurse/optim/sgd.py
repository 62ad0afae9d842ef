"""Stochastic gradient descent with momentum, dampening, Nesterov and L2."""

from __future__ import annotations

from recurse.constraints import positive, unit_interval
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, SavedProduct, flag


class SGD(Optimizer):
    """torch.optim.SGD as a pure function of its hyperparameters.

        d_t = g_t + weight_decay * p_{t-1}      (-g_t with maximize=True)
        b_t = d_t                                        (first step)
        b_t = momentum * b_{t-1} + (1 - dampening) * d_t (later steps)
        u_t = d_t + momentum * b_t  (nesterov)  |  b_t  (otherwise)
        p_t = p_{t-1} - lr * u_t

    With momentum 0 there is no buffer and u_t = d_t.

    >>> opt = rc.SGD(0.1, momentum=0.9, hyper=rc.SGD(1e-3))
    """

    host_floats = True
    flag_names = ("nesterov", "maximize")
    per_parameter_state = ("momentum_buffer",)
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("momentum", unit_interval, can_be_off=True),
        Hyperparameter("dampening", unit_interval, can_be_off=True),
        Hyperparameter("weight_decay", positive, can_be_off=True),
    )

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, *, nesterov=False, maximize=False,
                 **options):
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, **options)
        nesterov, self.maximize = flag("rc.SGD", "nesterov", nesterov), flag("rc.SGD", "maximize", maximize)
        if nesterov and (momentum == 0.0 or dampening != 0.0):
            raise ValueError(
                f"rc.SGD: nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
                f"dampening={dampening!r}"
            )
        self.nesterov = nesterov

    def init(self, params):
        return {"momentum_buffer": [None] * len(params)}

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        new_params, new_state, _ = self._step(params, grads, state, hyper)
        return new_params, new_state

    def _step(self, params, grads, state, hyper):
        """The update, and its intermediates (d_t, b_{t-1}, b_t, u_t), one list each."""
        lr, momentum = hyper["lr"], hyper["momentum"]
        params, decayed = list(params), list(grads)
        if self.maximize:
            decayed = _ops.negated_all(decayed)
        if self.initial_values["weight_decay"] != 0.0:
            decayed = _ops.add_scaled_all(decayed, params, hyper["weight_decay"])
        previous = list(state["momentum_buffer"])
        directions = buffers = decayed
        if self.initial_values["momentum"] != 0.0:
            if previous and previous[0] is not None:  # (all buffers start together, on the first step)
                buffers = _ops.add_scaled_all(_ops.scale_all(previous, momentum), decayed, 1 - hyper["dampening"])
            else:  # b_1 = d_1, a copy: d_1 may be the caller's .grad, which a loop can zero in place
                buffers = _ops.copies(decayed)
            directions = _ops.add_scaled_all(decayed, buffers, momentum) if self.nesterov else buffers
        else:
            buffers = [None] * len(params)
        new_params = _ops.add_scaled_all(params, directions, -lr)
        return new_params, {"momentum_buffer": buffers}, (decayed, previous, buffers, directions)

    def update_with_vjp(self, params, grads, state, values):
        """Closed form: p_t = p_{t-1} - lr u_t, so d p_t / d lr = -u_t and d p_t / d h = -lr d u_t / d h with

            d b / d momentum = b_{t-1},  d b / d dampening = -d_t  (0 on the first step),
            d d / d weight_decay = p,   d b / d weight_decay = (1 - dampening) p (p on the first step),
            u = d + momentum b (Nesterov): d u = d d + b [for momentum] + momentum d b;  u = b otherwise.
        """
        new_params, new_state, (decayed, previous, buffers, directions) = self._step(params, grads, state, values)
        first = values["momentum"] == 0.0 or not previous or previous[0] is None
        learnable = self.learnable
        # Every row is an inner product of the incoming vector with one of these lists (saved, and nothing
        # else: without Nesterov the direction is the new momentum buffer, which the state holds anyway).
        lists = {}
        if "lr" in learnable:
            lists["u"] = directions
        if "momentum" in learnable:
            if self.nesterov:
                lists["b"] = buffers
            if not first:
                lists["b_prev"] = previous
        if "dampening" in learnable and not first:
            lists["d"] = decayed
        if "weight_decay" in learnable:
            lists["p"] = list(params)
        saved = {"lists": lists, "first": first, "values": values}  # (values: a new dict every step)
        # (without weight decay or maximize, d_t is the gradient list itself, and u_t = d_t without momentum)
        holds_gradient = (self.initial_values["weight_decay"] == 0.0 and not self.maximize
                          and any(ys is decayed for ys in lists.values()))
        return new_params, new_state, SavedProduct(saved, self.saved_vjp, holds_gradient)

    def saved_vjp(self, saved, incoming):
        """The rows of :meth:`update_with_vjp` from the lists it saved."""
        values, first, lists = saved["values"], saved["first"], saved["lists"]
        lr, momentum, dampening = values["lr"], values["momentum"], values["dampening"]
        nesterov = self.nesterov
        incoming = list(incoming)
        products = self.host_scalars(_ops.inner_products([(incoming, ys) for ys in lists.values()]))
        dot = dict(zip(lists, products))
        zero = 0.0 if self.hypergradient_on_host else _ops.zero_like(incoming[0])
        rows = []  # (coefficient, scalar): d p_t / d value = coefficient * scalar
        for name in self.learnable:
            if name == "lr":
                rows.append((-1.0, dot["u"]))
            elif name == "momentum":  # d u / d momentum = [b_t if Nesterov] + (momentum if Nesterov else 1) b_{t-1}
                row = dot["b"] if nesterov else zero
                if not first:
                    row = row + (momentum if nesterov else 1.0) * dot["b_prev"]
                rows.append((-lr, row))
            elif name == "dampening":
                scale = 0.0 if first else (momentum if nesterov else 1.0)
                rows.append((lr * scale, zero if first else dot["d"]))
            else:  # weight_decay
                through_buffer = 1.0 if first else 1.0 - dampening
                scale = (1.0 + momentum * through_buffer if nesterov else through_buffer) if momentum != 0.0 else 1.0
                rows.append((-lr * scale, dot["p"]))
        return self.raw_gradient(rows, values)
