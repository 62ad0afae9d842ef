"""Adam and AdamW."""

from __future__ import annotations

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
    host_floats = True
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
        # Which temporaries the closed form's rows need (fixed by what is learned).
        learned_l2 = "weight_decay" in self.learnable and not self.decoupled_weight_decay
        self._rows_need_z = learned_l2 or "eps" in self.learnable or "beta2" in self.learnable
        self._rows_need_z_over_root = learned_l2 or "beta2" in self.learnable

    def init(self, params):
        return {
            "step": 0,
            "exp_avg": _ops.zeros_like_all(params),
            "exp_avg_sq": _ops.zeros_like_all(params),
        }

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def update(self, params, grads, state, hyper, *, closure=None):
        new_params, new_state, _ = self._step(params, grads, state, hyper)
        return new_params, new_state

    def _step(self, params, grads, state, hyper):
        """The update, and its intermediates: the lists d_t (the gradient
        with L2 weight decay), sqrt(v_t) and denominators sqrt(v_t) / sqrt(1 - beta2^t) + eps,
        and the scalars 1 - beta1^t, sqrt(1 - beta2^t) and lr / (1 - beta1^t)."""
        lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
        weight_decay = hyper["weight_decay"]
        has_weight_decay = self.initial_values["weight_decay"] != 0.0
        step = state["step"] + 1
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        params, grads = list(params), list(grads)
        if has_weight_decay:
            if self.decoupled_weight_decay:
                params = _ops.scale_all(params, 1 - lr * weight_decay)
            else:
                grads = _ops.add_scaled_all(grads, params, weight_decay)
        exp_avgs = _ops.lerp_all(state["exp_avg"], grads, 1 - beta1)
        exp_avg_sqs = _ops.addcmul_all(_ops.scale_all(state["exp_avg_sq"], beta2), grads, grads, 1 - beta2)
        roots = _ops.sqrt_all(exp_avg_sqs)
        denoms = _ops.shift_all(_ops.divide_all(roots, bias_correction2_sqrt), eps)
        new_params = _ops.addcdiv_all(params, exp_avgs, denoms, -step_size)
        new_state = {"step": step, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
        return new_params, new_state, (grads, roots, denoms, bias_correction1, bias_correction2_sqrt, step_size)

    def update_with_vjp(self, params, grads, state, values):
        """Closed form. With r = m_t / den, den = s / c + eps, s = sqrt(v_t),
        c = sqrt(1 - beta2^t), b = 1 - beta1^t and step = lr / b, p_t = p - step r:

            d p_t / d lr    = -r / b                        (AdamW: also -weight_decay p)
            d p_t / d eps   = step r / den
            d p_t / d beta1 = -step ((m_{t-1} - d_t) + m_t t beta1^(t-1) / b) / den
            d p_t / d beta2 = step r / den ((v_{t-1} - d_t^2) / (2 s c) + s t beta2^(t-1) / (2 c^3))
            d p_t / d weight_decay = -step ((1 - beta1) p - r (1 - beta2) d_t p / (s c)) / den   (L2)
                                   = -lr p                                                    (AdamW)

        where a term divided by s is 0 at s = 0 (as :func:`recurse.optim._ops.sqrt` defines it).
        """
        new_params, new_state, (decayed, roots, denoms, bias_correction1, c, step_size) = \
            self._step(params, grads, state, values)
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        weight_decay, step = values["weight_decay"], new_state["step"]
        learnable, decoupled = self.learnable, self.decoupled_weight_decay
        exp_avgs, previous_avgs = new_state["exp_avg"], state["exp_avg"]
        params = list(params)

        def vjp(incoming):
            # Every row is a few inner products with w = incoming / den and
            # z = w m_t / den (= incoming r / den), so no per-row temporaries.
            # Two are combinations of others, since m_t and v_t are:
            # <w, m_t> = beta1 <w, m_{t-1}> + (1 - beta1) <w, d_t>, and
            # <z, s> = <z / s, v_t> = beta2 <z / s, v_{t-1}> + (1 - beta2) <z d_t / s, d_t>.
            w = _ops.divide_each(list(incoming), denoms)
            z = _ops.multiply_each(_ops.divide_each(w, denoms), exp_avgs) if self._rows_need_z else None
            if self._rows_need_z_over_root:
                # z / s, 0 where s = 0: there every gradient so far was 0, so m_t and z are 0 too.
                z_over_root = _ops.divide_each(z, _ops.clamp_min_all(roots, _ops.tiny(roots)))
                z_d_over_root = _ops.multiply_each(z_over_root, decayed)
            # The inner products the rows combine (floats, read in one go,
            # where the level above steps in floats).
            pairs = {}  # name -> (xs, ys): <xs, ys>, or the total of xs where ys is None
            if "beta1" in learnable:
                pairs["w.m_prev"], pairs["w.d"] = (w, previous_avgs), (w, decayed)
            elif "lr" in learnable:
                pairs["w.m"] = (w, exp_avgs)
            if decoupled and ("weight_decay" in learnable or ("lr" in learnable and weight_decay != 0.0)):
                pairs["c.p"] = (list(incoming), params)  # (AdamW's lr and weight_decay rows both use it)
            if "eps" in learnable:
                pairs["sum z"] = (z, None)
            if "beta2" in learnable:
                pairs["z/s.v_prev"], pairs["zd/s.d"] = (z_over_root, state["exp_avg_sq"]), (z_d_over_root, decayed)
            if "weight_decay" in learnable and not decoupled:
                pairs["w.p"], pairs["zd/s.p"] = (w, params), (z_d_over_root, params)
            products = dict(zip(pairs, self.host_scalars(_ops.inner_products(list(pairs.values())))))
            if "beta1" in learnable:
                products["w.m"] = beta1 * products["w.m_prev"] + (1 - beta1) * products["w.d"]

            rows = []  # (coefficient, scalar): d p_t / d value = coefficient * scalar
            for name in learnable:
                if name == "lr":
                    row = products["w.m"]
                    if decoupled and weight_decay != 0.0:
                        row = row + bias_correction1 * weight_decay * products["c.p"]
                    rows.append((-1.0 / bias_correction1, row))
                elif name == "eps":
                    rows.append((step_size, products["sum z"]))
                elif name == "beta1":
                    rows.append((-step_size, products["w.m_prev"] - products["w.d"]
                                 + step * beta1 ** (step - 1) / bias_correction1 * products["w.m"]))
                elif name == "beta2":
                    previous_part, gradient_part = products["z/s.v_prev"], products["zd/s.d"]
                    z_dot_root = beta2 * previous_part + (1 - beta2) * gradient_part
                    rows.append((step_size, (previous_part - gradient_part) / (2 * c)
                                 + step * beta2 ** (step - 1) / (2 * c**3) * z_dot_root))
                elif decoupled:  # weight_decay, AdamW
                    rows.append((-lr, products["c.p"]))
                else:  # weight_decay, L2
                    rows.append((-step_size, (1 - beta1) * products["w.p"] - (1 - beta2) / c * products["zd/s.p"]))
            return self.raw_gradient(rows, values)

        return new_params, new_state, vjp


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay,
    p <- p * (1 - lr * weight_decay) before the Adam step.

    >>> opt = rc.AdamW(1e-3, weight_decay=1e-2, hyper=rc.SGD(1e-4))
    >>> opt.learnable
    ('lr', 'beta1', 'beta2', 'eps', 'weight_decay')"""

    decoupled_weight_decay = True
    host_floats = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **options):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **options)
