"""Adam and AdamW."""

from __future__ import annotations

import logging

import torch

from recurse.constraints import positive, unit_interval
from recurse.optim import _ops
from recurse.optim.base import Hyperparameter, Optimizer, SavedProduct, flag

log = logging.getLogger("recurse")

# The inner products that Adam's closed-form rows combine, summed over the
# parameters: name -> (xs, ys) for <xs, ys>, or (xs, None) for the total of
# xs. Operands: c (the incoming vector), w = c / den, z = w m_t / den,
# z/s = z / s (0 where s = 0), zd/s = z/s * d_t, and m_t, m_{t-1}, v_{t-1},
# d_t and p.
_PRODUCTS = {
    "w.m_prev": ("w", "m_prev"), "w.d": ("w", "d"), "w.m": ("w", "m"), "c.p": ("c", "p"), "sum z": ("z", None),
    "z/s.v_prev": ("z/s", "v_prev"), "zd/s.d": ("zd/s", "d"), "w.p": ("w", "p"), "zd/s.p": ("zd/s", "p"),
}
# The temporaries among the operands, each computed from the one before it.
_TEMPORARIES = ("w", "z", "z/s", "zd/s")


def _products_per_tensor(names, incoming, denoms, exp_avgs, roots, decayed, previous_avgs, previous_sqs, params):
    """The products ``names`` as a 1-D tensor, written one parameter tensor
    at a time: the form in which torch.compile fuses each tensor's operands
    and sums into a loop or two (operands no product needs are dropped by
    the compiler). Adam(compile=True) runs it compiled."""
    sums = []
    for c, den, m, s, d, m_prev, v_prev, p in zip(incoming, denoms, exp_avgs, roots, decayed, previous_avgs,
                                                  previous_sqs, params):
        w = c / den
        z = w / den * m
        z_over_root = z / s.clamp_min(torch.finfo(s.dtype).tiny)
        operands = {"c": c, "w": w, "m": m, "m_prev": m_prev, "v_prev": v_prev, "d": d, "p": p, "z": z,
                    "z/s": z_over_root, "zd/s": z_over_root * d}
        sums.append(torch.stack([(operands[x] * operands[y]).sum() if y is not None else operands[x].sum()
                                 for x, y in (_PRODUCTS[name] for name in names)]))
    return torch.stack(sums).sum(0)


_compiled_per_tensor = None  # torch.compile(_products_per_tensor), built on first use


def _fused_products(*arguments):
    global _compiled_per_tensor
    if _compiled_per_tensor is None:
        _compiled_per_tensor = torch.compile(_products_per_tensor, dynamic=False, fullgraph=True)
    return _compiled_per_tensor(*arguments)


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient).

        d_t = g_t + weight_decay * p_{t-1}      (-g_t with maximize=True)
        m_t = beta1 * m_{t-1} + (1 - beta1) * d_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * d_t^2
        p_t = p_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    ``amsgrad=True`` divides by the running maximum of v instead,
    vmax_t = max(vmax_{t-1}, v_t) (vmax_0 = 0), as torch.optim's amsgrad.
    Its closed-form hypergradient covers lr, eps, beta1 and AdamW's weight
    decay (which do not act through the maximum); where beta2 or Adam's L2
    weight decay is learned, autograd differentiates the update, through
    the branch the maximum took.

    ``compile=True``: a learned Adam level computes the inner products of
    its closed-form hypergradient with ``torch.compile``, fused into a loop
    or two per parameter tensor instead of about ten passes over the
    parameters. It pays where the level learns several of Adam's knobs
    (lr, betas and eps on a 1e5-parameter MLP, CPU: the first learned
    level costs 26% of a step instead of 40%), not for lr alone. The
    first step compiles (seconds; on CPU it needs a C++ compiler); where
    compiling fails, a warning says so and the step runs without it.

    >>> opt = rc.Adam(1e-3, hyper=rc.SGD(1e-4))
    """

    decoupled_weight_decay = False
    host_floats = True
    flag_names = ("amsgrad", "maximize")
    per_parameter_state = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    hyperparameter_specs = (
        Hyperparameter("lr", positive),
        Hyperparameter("beta1", unit_interval, can_be_off=True),
        Hyperparameter("beta2", unit_interval),
        Hyperparameter("eps", positive),
        Hyperparameter("weight_decay", positive, can_be_off=True),
    )

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, amsgrad=False, maximize=False,
                 compile=False, **options):
        owner = f"rc.{type(self).__name__}"
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"{owner}: compile must be True or False, got {compile!r}")
        super().__init__(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, **options)
        self.amsgrad, self.maximize = flag(owner, "amsgrad", amsgrad), flag(owner, "maximize", maximize)
        self.compile = compile
        self.values_changed()

    def values_changed(self) -> None:
        """Which products the closed form needs (fixed by what is learned and by whether weight decay is on)."""
        self._product_names = self._products_needed()
        used = {operand for name in self._product_names for operand in _PRODUCTS[name]}
        # How many of _TEMPORARIES the eager path computes (a prefix of them).
        self._temporaries_needed = max((_TEMPORARIES.index(x) + 1 for x in used if x in _TEMPORARIES), default=0)

    def _products_needed(self) -> tuple[str, ...]:
        """The _PRODUCTS the closed-form rows combine, fixed by what is learned."""
        learnable, decoupled = self.learnable, self.decoupled_weight_decay
        names = ["w.m_prev", "w.d"] if "beta1" in learnable else ["w.m"] if "lr" in learnable else []
        if decoupled and ("weight_decay" in learnable or ("lr" in learnable and self.initial_values["weight_decay"])):
            names.append("c.p")  # (AdamW's lr and weight_decay rows both use it)
        if "eps" in learnable:
            names.append("sum z")
        if "beta2" in learnable:
            names += ["z/s.v_prev", "zd/s.d"]
        if "weight_decay" in learnable and not decoupled:
            names += ["w.p", "zd/s.p"]
        return tuple(names)

    def init(self, params):
        state = {"step": 0, "exp_avg": _ops.zeros_like_all(params), "exp_avg_sq": _ops.zeros_like_all(params)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = _ops.zeros_like_all(params)
        return state

    def provides_closed_form(self) -> bool:
        # (amsgrad: beta2 and L2 weight decay act through the running maximum, which the rows do not follow)
        return not (self.amsgrad and ("beta2" in self.learnable or (
            "weight_decay" in self.learnable and not self.decoupled_weight_decay)))

    def update(self, params, grads, state, hyper, *, closure=None):
        new_params, new_state, _ = self._step(params, grads, state, hyper)
        return new_params, new_state

    def _step(self, params, grads, state, hyper, *, keep_direction=False):
        """The update, and its intermediates: the lists d_t (the gradient
        with L2 weight decay), sqrt(v_t) (amsgrad: sqrt(vmax_t)) and
        denominators sqrt(v_t) / sqrt(1 - beta2^t) + eps,
        and the scalars 1 - beta1^t, sqrt(1 - beta2^t) and lr / (1 - beta1^t).
        ``keep_direction``: the update is taken as p - step * u with the list
        u = m_t / den (+ (1 - beta1^t) weight_decay p, AdamW) computed first,
        which is -(1 - beta1^t) d p_t / d lr (rather than torch.optim's
        decay then addcdiv, which may round differently in the last bit),
        and u comes back after the denominators (None otherwise)."""
        lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
        weight_decay = hyper["weight_decay"]
        has_weight_decay = self.initial_values["weight_decay"] != 0.0
        step = state["step"] + 1
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        params, grads = list(params), list(grads)
        decoupled = has_weight_decay and self.decoupled_weight_decay
        if self.maximize:
            grads = _ops.negated_all(grads)
        if has_weight_decay and not decoupled:
            grads = _ops.add_scaled_all(grads, params, weight_decay)
        exp_avgs = _ops.lerp_all(state["exp_avg"], grads, 1 - beta1)
        exp_avg_sqs = _ops.addcmul_all(_ops.scale_all(state["exp_avg_sq"], beta2), grads, grads, 1 - beta2)
        new_state = {"step": step, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
        if self.amsgrad:
            new_state["max_exp_avg_sq"] = _ops.maximum_each(state["max_exp_avg_sq"], exp_avg_sqs)
        roots = _ops.sqrt_all(new_state["max_exp_avg_sq"] if self.amsgrad else exp_avg_sqs)
        denoms = _ops.shift_all(_ops.divide_all(roots, bias_correction2_sqrt), eps)
        directions = None
        if keep_direction:
            directions = _ops.divide_each(exp_avgs, denoms)
            if decoupled:  # p - lr weight_decay p - step r = p - step (r + b weight_decay p)
                directions = _ops.add_scaled_all(directions, params, bias_correction1 * weight_decay)
            new_params = _ops.add_scaled_all(params, directions, -step_size)
        else:
            if decoupled:
                params = _ops.scale_all(params, 1 - lr * weight_decay)
            new_params = _ops.addcdiv_all(params, exp_avgs, denoms, -step_size)
        return new_params, new_state, (grads, roots, denoms, directions, bias_correction1, bias_correction2_sqrt,
                                       step_size)

    def update_with_vjp(self, params, grads, state, values):
        """Closed form. With r = m_t / den, den = s / c + eps, s = sqrt(v_t),
        c = sqrt(1 - beta2^t), b = 1 - beta1^t and step = lr / b, p_t = p - step r:

            d p_t / d lr    = -r / b                        (AdamW: also -weight_decay p)
            d p_t / d eps   = step r / den
            d p_t / d beta1 = -step ((m_{t-1} - d_t) + m_t t beta1^(t-1) / b) / den
            d p_t / d beta2 = step r / den ((v_{t-1} - d_t^2) / (2 s c) + s t beta2^(t-1) / (2 c^3))
            d p_t / d weight_decay = -step ((1 - beta1) p - r (1 - beta2) d_t p / (s c)) / den   (L2)
                                   = -lr p                                                    (AdamW)

        where a term divided by s is 0 at s = 0 (as :func:`recurse.optim._ops.sqrt` defines it). With
        amsgrad, s = sqrt(vmax_t) and the beta2 and L2 weight-decay rows are not written (None: the
        engine differentiates :meth:`update` instead, see :meth:`provides_closed_form`).

        Where lr is the only learned knob, the step keeps the one list
        u = r + b weight_decay p (u = r for Adam, or without weight decay),
        so that d p_t / d lr = -u / b: the next hypergradient is then one
        inner product <incoming, u>, rather than dividing the incoming
        vector by den first (three more passes over the parameters, when
        they are no longer in cache), and the engine keeps no copy of p.
        """
        if not self.provides_closed_form():
            return None
        by_direction = self._keeps_direction()
        new_params, new_state, (decayed, roots, denoms, directions, bias_correction1, c, step_size) = \
            self._step(params, grads, state, values, keep_direction=by_direction)
        if by_direction:  # (keeps only u until the next step: the engine then keeps no inputs either)
            saved = {"direction": directions, "bias_correction1": bias_correction1, "values": values}
            return new_params, new_state, SavedProduct(saved, self.saved_vjp)
        else:
            products_of = self._products_of(denoms, new_state["exp_avg"], roots, decayed, state["exp_avg"],
                                            state["exp_avg_sq"], list(params))
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        weight_decay, step = values["weight_decay"], new_state["step"]
        learnable, decoupled = self.learnable, self.decoupled_weight_decay

        def vjp(incoming):
            # Every row is a few inner products with w = incoming / den and
            # z = w m_t / den (= incoming r / den), so no per-row temporaries.
            # Two are combinations of others, since m_t and v_t are:
            # <w, m_t> = beta1 <w, m_{t-1}> + (1 - beta1) <w, d_t>, and
            # <z, s> = <z / s, v_t> = beta2 <z / s, v_{t-1}> + (1 - beta2) <z d_t / s, d_t>.
            # The products are read to the host in one go where the level above steps in floats.
            products = dict(zip(self._product_names, self.host_scalars(products_of(list(incoming)))))
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

    def _keeps_direction(self) -> bool:
        """Whether the closed form saves d p_t / d lr as one list: lr is the only learned knob, learned as its
        log (so that the closed form holds under any schedule, see :meth:`exact_at`), and no compile."""
        return self.learnable == ("lr",) and self._constraints["lr"] is positive and not self.compile

    def update_depends_on_params(self):
        return self.initial_values["weight_decay"] != 0.0

    def closed_form_keeps_params(self):
        # Where the closed form saves u = r (+ b weight_decay p) itself, it keeps no reference to p.
        return self.update_depends_on_params() and not self._keeps_direction()

    def saved_vjp(self, saved, incoming):
        """d p_t / d lr = -u / b, from the saved u = m_t / den + b weight_decay p (AdamW; m_t / den for
        Adam) and b = 1 - beta1^t (lr the only row)."""
        (product,) = self.host_scalars(_ops.inner_products([(list(incoming), saved["direction"])]))
        return self.raw_gradient([(-1.0 / saved["bias_correction1"], product)], saved["values"])

    def _products_of(self, denoms, exp_avgs, roots, decayed, previous_avgs, previous_sqs, params):
        """incoming -> the products this level needs, through torch.compile
        when asked, else eagerly."""
        def products(incoming):
            lists = (incoming, denoms, exp_avgs, roots, decayed, previous_avgs, previous_sqs, params)
            sums = self._products_through_compile(lists)
            return _ops.inner_products(self._product_operands(*lists)) if sums is None else sums
        return products

    def _product_operands(self, incoming, denoms, exp_avgs, roots, decayed, previous_avgs, previous_sqs, params):
        """The (xs, ys) pairs of the products this level needs, with one
        foreach operation per temporary over the whole parameter list."""
        operands = {"c": incoming, "m": exp_avgs, "m_prev": previous_avgs, "v_prev": previous_sqs, "d": decayed,
                    "p": params}
        needed = self._temporaries_needed
        if needed > 0:
            operands["w"] = _ops.divide_each(incoming, denoms)
        if needed > 1:
            operands["z"] = _ops.multiply_each(_ops.divide_each(operands["w"], denoms), exp_avgs)
        if needed > 2:
            # z / s, 0 where s = 0: there every gradient so far was 0, so m_t and z are 0 too.
            operands["z/s"] = _ops.divide_each(operands["z"], _ops.clamp_min_all(roots, _ops.tiny(roots)))
        if needed > 3:
            operands["zd/s"] = _ops.multiply_each(operands["z/s"], decayed)
        return [(operands[x], None if y is None else operands[y])
                for x, y in (_PRODUCTS[name] for name in self._product_names)]

    def _products_through_compile(self, lists):
        """The products through torch.compile (compile=True, tensors), or
        None: not asked for, host floats, or compiling failed (then never
        tried again for this optimizer)."""
        if not self.compile or _ops.on_host(lists[0]):
            return None
        try:
            return _fused_products(self._product_names, *lists)
        except Exception as error:  # no C++ compiler, an unsupported device or dtype, ...
            self.compile = False
            log.warning("rc.%s(compile=True): torch.compile failed (%s: %s); the closed form runs without it",
                        type(self).__name__, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            return None


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay,
    p <- p * (1 - lr * weight_decay) before the Adam step.

    >>> opt = rc.AdamW(1e-3, weight_decay=1e-2, hyper=rc.SGD(1e-4))
    >>> opt.learnable
    ('lr', 'beta1', 'beta2', 'eps', 'weight_decay')"""

    decoupled_weight_decay = True
    host_floats = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, amsgrad=False, maximize=False,
                 **options):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                         **options)
