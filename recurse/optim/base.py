"""The optimizer protocol: a pure, differentiable update rule plus its knobs.

Every recurse optimizer is a pair of functions,

    state = optimizer.init(params)
    new_params, new_state = optimizer.step(params, grads, state, hyper)

written with out-of-place tensor ops, so that ``new_params`` is a
differentiable function of the hyperparameters ``hyper``. That is what lets
another optimizer (``hyper=``) learn them. The object also holds the current
hyperparameter values: learnable ones as an unconstrained vector ``raw``
(see :mod:`recurse.constraints`), fixed ones as Python floats.

A custom optimizer declares its hyperparameters and writes ``init`` and
``update``::

    class SignSGD(rc.Optimizer):
        hyperparameter_specs = (rc.Hyperparameter("lr", rc.constraints.positive),)

        def __init__(self, lr=0.01, **options):
            super().__init__(lr=lr, **options)

        def init(self, params):
            return {}

        def update(self, params, grads, state, hyper, *, closure=None):
            return [p - hyper["lr"] * g.sign() for p, g in zip(params, grads)], state
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from recurse.constraints import Constraint, identity, positive
from recurse.optim import _ops
from recurse.transforms import Normalizer, make_normalizer

State = dict[str, Any]
HyperValues = dict[str, float | Tensor]


@dataclass(frozen=True)
class Hyperparameter:
    """One knob of an optimizer.

    ``can_be_off``: the value 0 is also accepted and means the feature is
    switched off (momentum, weight decay, ...). An off knob stays exactly 0
    and is never learned.

    >>> rc.Hyperparameter("lr", rc.constraints.positive).validate("rc.MyOptimizer", 0.1)
    0.1
    """

    name: str
    constraint: Constraint
    can_be_off: bool = False

    def validate(self, owner: str, value: Any) -> float:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"{owner}: {self.name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{owner}: {self.name} must be a real number, got {type(value).__name__} {value!r}")
        value = float(value)
        if self.can_be_off and value == 0.0:
            return value
        if not self.constraint.contains(value):
            expected = self.constraint.description + (" or exactly 0 (off)" if self.can_be_off else "")
            raise ValueError(f"{owner}: {self.name} must be {expected}, got {value!r}")
        return value


@dataclass(slots=True)  # (built every step of a learned level: a frozen dataclass costs ~1 us more)
class SavedProduct:
    """A closed-form vector-Jacobian product that is a function of what it
    saved alone: ``product(saved, incoming)``. A rule's ``update_with_vjp``
    returns one where it can (``saved`` is then all a checkpoint needs, and
    the rule's ``saved_vjp`` is ``product``), so the online engine keeps neither
    the update's inputs nor the gradient."""

    saved: dict[str, Any]
    product: Callable[[dict[str, Any], list[Tensor]], Tensor]
    # True where what it saved includes the gradient it was given, uncopied (plain SGD's direction): the
    # engine then keeps watching that gradient for in-place writes.
    holds_gradient: bool = False

    def __call__(self, incoming: list[Tensor]) -> Tensor:
        return self.product(self.saved, incoming)


class Optimizer:
    """Base class of every recurse optimizer (see the module docstring).

    Options shared by all optimizers:

    - ``hyper``: the optimizer that learns this one's hyperparameters online
      (the next level of the tower), or None for fixed hyperparameters.
    - ``learn``: names of the hyperparameters to learn; default all that are
      not off. ``learn=()`` freezes them all.
    - ``normalize``: how this level normalises the gradient it receives
      before using it: None, ``"rms"`` (running RMS, see
      :class:`recurse.transforms.RunningRMS`) or a ``Normalizer``.
    - ``parametrization``: ``{name: "identity"}`` learns that value in its
      own units, raw = value, as "Gradient Descent: The Ultimate Optimizer"
      (gdtuo) does, instead of its constrained form (log lr, logit beta;
      ``"constrained"``, the default). A hyper-step is then additive, and
      nothing keeps the value in its valid set (a negative lr ascends).

    A new optimizer declares its knobs and writes ``init`` and ``update``:

    >>> class SignSGD(rc.Optimizer):
    ...     hyperparameter_specs = (rc.Hyperparameter("lr", rc.constraints.positive),)
    ...     def __init__(self, lr=0.01, **options):
    ...         super().__init__(lr=lr, **options)
    ...     def init(self, params):
    ...         return {}
    ...     def update(self, params, grads, state, hyper, *, closure=None):
    ...         return [p - hyper["lr"] * g.sign() for p, g in zip(params, grads)], state
    >>> opt = rc.HyperOptimizer(model.parameters(), SignSGD(0.01, hyper=rc.SGD(1e-3)))
    >>> loss.backward(); opt.step(); opt.depth
    1
    """

    hyperparameter_specs: ClassVar[tuple[Hyperparameter, ...]] = ()
    # True for rules that need the loss's graph (Newton's Hessian): the
    # online engine then requires step(closure) and takes the gradient itself.
    needs_loss_graph: ClassVar[bool] = False
    # True for rules that evaluate the loss again at other points (vSGD's
    # finite differences): the online engine then requires step(closure)
    # with a closure as torch.optim.LBFGS takes (it zeroes the gradients,
    # computes the loss, calls backward and returns the loss), calls it once
    # for the step's gradient and hands it to the rule.
    needs_closure: ClassVar[bool] = False
    # True for rules whose init, update and update_with_vjp also run on host
    # vectors (lists of Python floats, see recurse.optim._ops): the online
    # engine then steps this optimizer's levels above the model in floats.
    # Declared by each class itself; a subclass does not inherit it.
    host_floats: ClassVar[bool] = False
    # Set by the online engine on a level whose raw vector the level above
    # steps in Python floats: raw_gradient then reads its rows to the host
    # at once and returns floats, rather than building a tensor that the
    # engine would read back anyway.
    hypergradient_on_host: bool = False
    # The largest magnitude the tensors this optimizer steps can hold (their
    # dtype's, set by :meth:`to`): a value beyond it is as saturated as an
    # infinite one (torch cannot even take it as a float32 ``alpha``).
    value_limit: float = sys.float_info.max
    params_dtype: torch.dtype = torch.float64  # (set by :meth:`to`)
    # What a schedule multiplies a learned lr by in every step this
    # optimizer takes (see :meth:`scaled`); set by the engine's param group.
    lr_scale: float = 1.0
    # The rule's flags: keyword-only switches that pick a variant of the
    # update (nesterov, maximize, amsgrad, centered), held as attributes of
    # those names, checked by :func:`flag`, never learned, and kept in an
    # engine's checkpoint (see :meth:`flags`).
    flag_names: ClassVar[tuple[str, ...]] = ()
    # The entries of this rule's state that hold one item per parameter (its
    # other entries, a step count, are shared and depend only on how many
    # steps were taken). Declared, the rule can step some of its parameters
    # at a step, as torch.optim skips a parameter whose .grad is None (see
    # recurse.partial); None: it steps every parameter at every step.
    per_parameter_state: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        *,
        hyper: Optimizer | None = None,
        learn: Iterable[str] | str | None = None,
        normalize: str | Normalizer | None = None,
        parametrization: Mapping[str, str] | None = None,
        **values: Any,
    ) -> None:
        owner = f"rc.{type(self).__name__}"
        specs = {spec.name: spec for spec in self.hyperparameter_specs}
        self._constraints = _constraints_of(owner, specs, parametrization)
        unknown = sorted(set(values) - set(specs))
        if unknown:
            flags = f" (and the flags {list(self.flag_names)})" if self.flag_names else ""
            raise TypeError(f"{owner}: unknown hyperparameter(s) {unknown}; expected some of {sorted(specs)}{flags}")
        missing = sorted(set(specs) - set(values))
        if missing:
            raise TypeError(f"{owner}: missing value(s) for {missing}")
        self.initial_values: dict[str, float] = {
            name: spec.validate(owner, values[name]) for name, spec in specs.items()
        }
        # Knobs named by learn= must get a level that learns them (recurse.plan refuses them otherwise).
        self.learn_given = learn is not None
        self.hyper = _check_hyper(owner, hyper)
        self.normalizer = make_normalizer(normalize)
        self.tied_depth = 0
        self._set_learnable(self._select_learnable(owner, specs, learn), torch.float64, torch.device("cpu"))

    def _set_learnable(self, names: tuple[str, ...], dtype: torch.dtype, device: torch.device) -> None:
        """Learn ``names``, from their current values: ``learnable``, the
        maps from raw to value, and ``raw`` (of ``dtype``, on ``device``)."""
        self.learnable: tuple[str, ...] = names
        self._learnable_constraints = [(name, self._constraints[name]) for name in names]
        constraints = [self._constraints[name] for name in names]
        self._constraint_masks = [
            (constraint, torch.tensor([c is constraint for c in constraints], device=device))
            for constraint in dict.fromkeys(constraints)
        ]
        self.raw = torch.tensor([self._constraints[name].to_raw(self.initial_values[name]) for name in names],
                                dtype=dtype, device=device)

    def _select_learnable(self, owner: str, specs: Mapping[str, Hyperparameter], learn) -> tuple[str, ...]:
        active = tuple(name for name in specs if self.initial_values[name] != 0.0 or not specs[name].can_be_off)
        if learn is None:
            return active
        names = (learn,) if isinstance(learn, str) else tuple(learn)
        for name in names:
            if name not in specs:
                raise ValueError(f"{owner}: learn= names unknown hyperparameter {name!r}; expected some of {sorted(specs)}")
            if name not in active:
                raise ValueError(
                    f"{owner}: cannot learn {name!r}: it is 0, which switches it off; start it at a positive value"
                )
        return tuple(name for name in specs if name in names)

    # --- the protocol -------------------------------------------------------

    def init(self, params: Sequence[Tensor]) -> State:
        """The optimizer state for ``params`` before the first step."""
        raise NotImplementedError

    def update(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        state: State,
        hyper: HyperValues,
        *,
        closure: Callable[[], Tensor] | None = None,
    ) -> tuple[list[Tensor], State]:
        """The update rule: out-of-place, differentiable in ``hyper``."""
        raise NotImplementedError

    def update_with_vjp(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        state: State,
        values: Mapping[str, float],
    ) -> tuple[list[Tensor], State, Callable[[Sequence[Tensor]], Tensor]] | None:
        """Optional closed form of a learned step, for the online engine.

        Returns ``(new_params, new_state, vjp)``: the update at the fixed
        float ``values`` and a function that, given ``c`` (one tensor per
        param), returns the 1-D tensor

            vjp(c)[h] = sum_i < c_i, d new_params_i / d raw_h >

        over the learnable hyperparameters h, in ``self.learnable`` order,
        with respect to their unconstrained ``raw`` entries (write the rows
        d / d value and finish with :meth:`raw_gradient`; where rows combine
        several inner products, take them with
        :func:`recurse.optim._ops.inner_products` and pass them through
        :meth:`host_scalars` first, so that a host level above reads them
        once). The default, None, lets the engine differentiate
        :meth:`update` with autograd; a closed form must agree with that
        (each built-in is tested to 1e-10 in float64) and saves building and
        walking a graph every step.
        """
        return None

    def provides_closed_form(self) -> bool:
        """Whether :meth:`update_with_vjp` is written (the engine then
        steps this rule at float values and keeps no graph)."""
        return type(self).update_with_vjp is not Optimizer.update_with_vjp

    def saved_vjp(self, saved: dict[str, Any], incoming: Sequence[Tensor]) -> Tensor | list[float]:
        """The vector-Jacobian product of :meth:`update_with_vjp` from what it
        saved, for a rule whose closed form returns a
        :class:`SavedProduct` (then this is its
        ``product``, and a resumed run rebuilds it from a checkpoint)."""
        raise NotImplementedError(f"rc.{type(self).__name__} returns no SavedProduct from update_with_vjp")

    def raw_gradient(self, rows: Sequence[tuple[float, Tensor]], values: Mapping[str, float]) -> Tensor | list[float]:
        """Rows ``(coefficient, tensor)`` with d loss / d value = coefficient *
        tensor, one per learnable hyperparameter, as the vector d loss / d raw
        (each times its constraint's d value / d raw, in one multiplication):
        a 1-D tensor, or Python floats for host rows or where
        ``hypergradient_on_host`` is set."""
        scales = [coefficient * constraint.raw_derivative(values[name])
                  for (coefficient, _), (name, constraint) in zip(rows, self._learnable_constraints)]
        tensors = self.host_scalars([tensor for _, tensor in rows])
        scaled = [tensor * scale for tensor, scale in zip(tensors, scales)]
        if _ops.on_host(scaled):
            return scaled
        return scaled[0].reshape(1) if len(scaled) == 1 else torch.stack(scaled)

    def host_scalars(self, scalars: Sequence[Tensor | float] | Tensor) -> list[Tensor] | list[float]:
        """``scalars`` (0-d tensors, or a 1-D tensor, of inner products a
        closed form combines into its rows) as Python floats, read in one
        go, where ``hypergradient_on_host`` is set; else as 0-d tensors."""
        if isinstance(scalars, Tensor):
            return scalars.tolist() if self.hypergradient_on_host else list(scalars.unbind())
        scalars = list(scalars)
        if not scalars or not self.hypergradient_on_host or _ops.on_host(scalars):
            return scalars
        return [scalars[0].item()] if len(scalars) == 1 else torch.stack(scalars).tolist()

    def values_from_raw(self, raw: Sequence[float]) -> dict[str, float]:
        """Every hyperparameter as a Python float, the learnable ones read
        from the unconstrained ``raw`` floats."""
        values = dict(self.initial_values)
        for (name, constraint), entry in zip(self._learnable_constraints, raw):
            values[name] = constraint.value_of(entry)
        return values

    def within_constraints(self, values: Mapping[str, float]) -> bool:
        """Whether every learnable value lies inside its valid set and within
        ``value_limit``. A raw value far out saturates its map (sigmoid to
        exactly 1.0, exp to inf or beyond the dtype's largest number), and
        float formulas then divide by zero (1 - beta^t = 0) or overflow."""
        limit = self.value_limit
        return all(constraint.contains(values[name]) and -limit <= values[name] <= limit
                   for name, constraint in self._learnable_constraints)

    def normalized(self, grads: Sequence[Tensor], norm_state: State | None) -> tuple[list[Tensor], State | None]:
        """``grads`` through this optimizer's ``normalize=`` normaliser (started
        from ``init`` where ``norm_state`` is None), and its new state; as
        they are where it has none. What every engine applies before
        :meth:`update`."""
        if self.normalizer is None:
            return list(grads), norm_state
        if norm_state is None:
            norm_state = self.normalizer.init(grads)
        return self.normalizer.apply(grads, norm_state)

    def skips_parameters(self) -> bool:
        """Whether the rule can step some of its parameters at a step (it
        declares ``per_parameter_state``)."""
        return self.per_parameter_state is not None

    def for_positions(self, positions: Sequence[int]) -> Optimizer:
        """This rule as it steps only the parameters at ``positions`` of the
        list it was built for (itself: a rule does not know positions; an
        rc.PerGroup maps its groups onto them)."""
        return self

    def state_at(self, state: State, indices: Sequence[int]) -> State:
        """The state of the parameters at ``indices`` of the list ``state``
        is for: each per-parameter entry at those indices, the shared
        entries as they are."""
        return {key: [value[i] for i in indices] if key in self.per_parameter_state else value
                for key, value in state.items()}

    def joined_state(self, parts: Sequence[tuple[Sequence[int], State]]) -> State:
        """One state from ``parts``, pairs (positions, state of those
        parameters) over disjoint positions that took as many steps: each
        per-parameter entry in the order of the positions, the shared
        entries (equal in every part) as they are."""
        first = parts[0][1]
        for _, state in parts[1:]:
            differing = [key for key, value in state.items()
                         if key not in self.per_parameter_state and not _same(value, first[key])]
            if differing:
                raise RuntimeError(f"rc.{type(self).__name__}: parameters that took as many steps have different "
                                   f"{differing} in their states; entries that are not per_parameter_state must "
                                   "depend only on the number of steps taken")
        order = sorted(range(sum(len(positions) for positions, _ in parts)),
                       key=[position for positions, _ in parts for position in positions].__getitem__)
        joined = dict(first)
        for key in self.per_parameter_state:
            if key in first:
                items = [item for _, state in parts for item in state[key]]
                joined[key] = [items[i] for i in order]
        return joined

    def flags(self) -> dict[str, bool]:
        """``{name: value}`` of the rule's flags (see ``flag_names``)."""
        return {name: getattr(self, name) for name in self.flag_names}

    @property
    def maximizes(self) -> bool:
        """Whether the rule ascends the gradient it is given (``maximize=True``,
        as torch.optim's ``maximize``)."""
        return bool(getattr(self, "maximize", False))

    def update_depends_on_params(self) -> bool:
        """Whether d(update) / d(hyper) depends on the parameter values.

        A rule p_new = p + delta(g, state, hyper) does not (its Jacobian in
        ``hyper`` is that of delta); weight decay makes it depend on p. When
        False, the engine keeps no copy of the parameters for the next
        hypergradient. The default, True, is always safe.
        """
        return True

    def closed_form_keeps_params(self) -> bool:
        """Whether what :meth:`update_with_vjp` keeps for the next
        hypergradient refers to the parameters it was given (so the engine
        must copy them, since the model changes in place). The default is
        :meth:`update_depends_on_params`; a closed form that saves what it
        needs from them (Adam learning only lr) says False."""
        return self.update_depends_on_params()

    def step(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        state: State,
        hyper: HyperValues | None = None,
        *,
        closure: Callable[[], Tensor] | None = None,
    ) -> tuple[list[Tensor], State]:
        """``(new_params, new_state)``; ``hyper`` defaults to the current values.
        The rule alone: a ``normalize=`` normaliser is applied to ``grads`` by
        the engines (HyperOptimizer, unroll, evaluate), which keep its state."""
        if len(params) != len(grads):
            raise ValueError(f"rc.{type(self).__name__}.step: {len(params)} params but {len(grads)} grads")
        return self.update(params, grads, state, self.hyper_values() if hyper is None else hyper, closure=closure)

    # --- the learnable values: a tensor, or host floats the engine set ------

    @property
    def raw(self) -> Tensor:
        """The learnable hyperparameters in unconstrained form, a 1-D tensor
        (built on first read after :meth:`set_raw_floats`)."""
        if self._raw is None:
            self._raw = self.as_raw_tensor(self._raw_floats)
            self._raw_version = self._raw._version
        return self._raw

    @raw.setter
    def raw(self, value: Tensor) -> None:
        self._raw, self._raw_floats = value, None
        self.raw_dtype, self.raw_device = value.dtype, value.device

    def raw_floats(self) -> list[float]:
        """``raw`` as Python floats: what the closed forms and host levels read."""
        if self._raw_floats is None or (self._raw is not None and self._raw._version != self._raw_version):
            self._raw_floats = self._raw.tolist()
            self._raw_version = self._raw._version
        return self._raw_floats

    def as_raw_tensor(self, values: Tensor | list[float]) -> Tensor:
        """``values`` (floats shaped like ``raw``) as a tensor of raw's dtype on its device."""
        if isinstance(values, Tensor):
            return values
        return torch.tensor(values, dtype=self.raw_dtype, device=self.raw_device)

    def set_raw_floats(self, values: list[float], *, rounded: bool = False) -> None:
        """Take ``values`` as ``raw``, rounded to raw's dtype as a tensor
        would hold them (``rounded=True``: they already are); no tensor is
        built until ``raw`` is read."""
        self._raw_floats, self._raw = (values if rounded else _ops.rounded(values, self.raw_dtype)), None

    # --- hyperparameter values ---------------------------------------------

    @property
    def is_learned(self) -> bool:
        """True when another optimizer (or this one, tied) steps the hyperparameters."""
        return self.hyper is not None and bool(self.learnable)

    def hyper_values(self, raw: Tensor | None = None) -> HyperValues:
        """name -> value. Fixed ones are exact Python floats. The learnable
        ones are ``constraint.from_raw(raw)`` tensors, differentiable in
        ``raw``, when ``raw`` is given (an unroll's meta-parameters) or when
        the optimizer is learned (``raw`` then defaults to ``self.raw``)."""
        values: HyperValues = dict(self.initial_values)
        if raw is None:
            if not self.is_learned:
                return values
            raw = self.raw
        if not self.learnable:
            return values
        constrained = None
        for constraint, mask in self._constraint_masks:
            mapped = constraint.from_raw(raw)
            constrained = mapped if constrained is None else torch.where(mask, mapped, constrained)
        values.update(zip(self.learnable, constrained.unbind()))
        return values

    def lr_scales(self) -> tuple[float, ...]:
        """The schedule's factor on each learned lr this optimizer steps
        with (one for a plain rule): what an update record keeps, so that
        its step can be rebuilt at the factor it was taken at."""
        return (self.lr_scale,)

    def scaled(self, values: Mapping[str, Any], scales: Sequence[float]) -> Mapping[str, Any]:
        """``values`` as a step uses them: a learned ``lr`` times the
        schedule's factor ``scales[0]`` (``param_groups[i]["lr"]`` over the
        lr the tower started from), the rest as they are. A factor of
        exactly 1 returns ``values`` itself, so a run without a schedule
        (or under a constant one) is bit for bit the unscheduled run."""
        (scale,) = scales
        if scale == 1.0 or "lr" not in self.learnable:
            return values
        return {**values, "lr": values["lr"] * scale}

    def exact_at(self, scales: Sequence[float]) -> bool:
        """Whether the closed form stays exact with a learned lr scaled by
        ``scales``: its rows convert d / d value to d / d raw at the value
        they see, which is right for an lr learned as its log (d(s e^r)/dr
        = s e^r) but not in its own units (``parametrization``)."""
        (scale,) = scales
        return scale == 1.0 or "lr" not in self.learnable or self._constraints["lr"] is positive

    def start_from(self, values: Mapping[str, Any], *, owner: str) -> None:
        """Start from ``values`` (name -> value, validated) instead: what a
        param group's own options do to the rule that steps it, as in
        torch.optim. Any valid value is taken, 0 included (momentum or
        weight decay off in this group, an lr of 0: a frozen group); a knob
        set to 0 is not learned, since knobs are learned in log or logit
        space and 0 switches it off."""
        specs = {spec.name: spec for spec in self.hyperparameter_specs}
        checked = {}
        for name, value in values.items():
            value = (_scheduled_lr(owner, value) if name == "lr"
                     else Hyperparameter(name, specs[name].constraint, can_be_off=True).validate(owner, value))
            self._check_fits(name, value, self.params_dtype, zero_rounding=name != "lr")
            checked[name] = value
        if not checked:  # (a rule whose raw is not its knobs, an LSTM's weights, has none to set)
            return
        self.initial_values.update(checked)
        off = {name for name, value in checked.items() if value == 0.0}
        self._set_learnable(tuple(name for name in self.learnable if name not in off), self.raw_dtype, self.raw_device)
        self.values_changed()

    def values_changed(self) -> None:
        """Called after :meth:`start_from` set new starting values: a rule
        that derives something from them at construction (which closed-form
        products it needs) derives it again here."""

    def assign_raw(self, raw: Tensor) -> None:
        """Take ``raw`` (unconstrained learnable values, e.g. after meta-training)
        as this optimizer's values: learned or fixed, the next step uses them.
        Knobs marked ``learn=`` then hold what was learned, and an online
        engine may run them fixed (recurse.plan no longer asks for a level above)."""
        self.raw = raw.detach()
        self.learn_given = False
        values = self.hyper_values(self.raw)
        for name in self.learnable:
            self.initial_values[name] = float(values[name])

    def spec(self, name: str) -> Hyperparameter:
        """The declaration of hyperparameter ``name``."""
        for spec in self.hyperparameter_specs:
            if spec.name == name:
                return spec
        raise KeyError(f"rc.{type(self).__name__} has no hyperparameter {name!r}")

    def current_values(self, raw: Tensor | None = None) -> dict[str, float]:
        """name -> float, the values the next step will use (at ``raw``
        when given). What ``hyperparameters()`` of the engines report."""
        return {name: float(value) for name, value in self.hyper_values(raw).items()}

    def raw_labels(self) -> list[str]:
        """A name for each entry of ``raw``: the learnable hyperparameters, in order."""
        return list(self.learnable)

    def learned_lr_entries(self) -> list[tuple[int, Constraint]]:
        """``(position in raw, constraint)`` of each learned lr: learned as its
        log (``positive``: adding log f to raw multiplies the lr by f) or in
        its own units (``identity``: multiplying raw by f does)."""
        return [(index, constraint) for index, (name, constraint) in enumerate(self._learnable_constraints)
                if name == "lr"]

    def tracked_names(self) -> tuple[str, ...]:
        """Names of the learned quantities recorded in histories: one per
        learnable hyperparameter (an optimizer whose meta-parameters are a
        weight vector reports summaries of it instead)."""
        return self.learnable

    def tracked_values(self, raw: Tensor | None = None) -> Tensor:
        """The values of :meth:`tracked_names` as one detached 1-D tensor (no
        host synchronisation, so recording them every step is cheap)."""
        values = self.hyper_values(self.raw if raw is None else raw)
        return torch.stack([values[name] for name in self.learnable]).detach()

    def hypergradient_values(self, raw: Tensor, gradient: Tensor) -> dict[str, float]:
        """d loss / d value for each learnable hyperparameter, from
        ``gradient`` = d loss / d ``raw``: dividing by d value / d raw (the
        constraint's slope at the value ``raw`` gives)."""
        values = self.hyper_values(raw)
        return {name: float(gradient[position] / self._constraints[name].raw_derivative(values[name]))
                for position, name in enumerate(self.learnable)}

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Optimizer:
        """Move the learnable hyperparameters next to the parameters they
        step, held in :func:`raw_dtype_for` ``dtype`` (after
        :meth:`check_fits`: a value ``dtype`` cannot hold is refused, and
        nothing moves)."""
        self.check_fits(dtype)
        self.raw = self.raw.to(device=device, dtype=raw_dtype_for(dtype))
        self.params_dtype = dtype
        self.value_limit = torch.finfo(dtype).max
        self._constraint_masks = [(c, mask.to(device)) for c, mask in self._constraint_masks]
        return self

    def check_fits(self, dtypes: torch.dtype | Iterable[torch.dtype], *, fixed_only: bool = False) -> None:
        """Raise a ValueError naming any value that ``dtypes`` (the
        parameters'; one, or each of several where they mix) cannot hold:
        beyond its largest number (lr = 1e39 in float32; torch cannot even
        take it as a scale), or a value that must be > 0 (a positive knob
        that cannot be off: lr, eps) but rounds to 0 (Adam's default eps =
        1e-8 in float16, which turns the update into 0 / 0 wherever a
        gradient is 0). ``fixed_only``: skip the learnable values (an unroll
        reads them from its ``raw``)."""
        for dtype in (dtypes,) if isinstance(dtypes, torch.dtype) else dtypes:
            for name, value in self.initial_values.items():
                if not (fixed_only and name in self.learnable):
                    self._check_fits(name, value, dtype)

    def _check_fits(self, name: str, value: float, dtype: torch.dtype, *, zero_rounding: bool = True) -> None:
        """``zero_rounding=False``: a value that rounds to 0 in ``dtype`` is
        allowed (an lr near the end of a decay to 0 is a step near none)."""
        info = torch.finfo(dtype)
        owner = f"rc.{type(self).__name__}"
        if not -info.max <= value <= info.max:
            raise ValueError(f"{owner}: {name} = {value!r} is beyond the largest {dtype} ({info.max:.6g}), the "
                             "dtype of the parameters it steps")
        spec = self.spec(name)
        if (zero_rounding and spec.constraint is positive and not spec.can_be_off and value != 0.0
                and _ops.rounded([value], dtype)[0] == 0.0):
            raise ValueError(f"{owner}: {name} = {value!r} rounds to 0 in {dtype}, the dtype of the parameters it "
                             f"steps (its smallest positive number is {info.tiny * info.eps:.3g})")

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Use ``values`` (name -> value) from the next step on, each
        validated (:meth:`checked_values`) before any is set; a learned one
        goes on learning from its new value. What a learning-rate scheduler
        writing ``param_groups[i]`` of an rc.HyperOptimizer calls, for a
        fixed knob."""
        checked = self.checked_values(values)
        owner = f"rc.{type(self).__name__}"
        for name, value in checked.items():
            if self.is_learned and name in self.learnable and value == 0.0:
                raise ValueError(f"{owner}: {name} is learned (in log space) and cannot be set to 0")
        current_values = self.current_values() if any(name in self.learnable for name in checked) else {}
        raw = list(self.raw_floats()) if current_values else None
        for name, value in checked.items():
            # (A scheduler writing back the value it read leaves a learned raw as it is, to the bit; a fixed lr
            # of 0 has no raw, and a learned one cannot be 0.)
            if name in self.learnable and value != current_values[name] and value != 0.0:
                raw[self.learnable.index(name)] = self._constraints[name].to_raw(value)
            self.initial_values[name] = value
        if raw is not None and raw != self.raw_floats():
            self.set_raw_floats(raw)

    def checked_values(self, values: Mapping[str, Any]) -> dict[str, float]:
        """``values`` (name -> value) as floats, each validated as the
        constructor validates it and by :meth:`check_fits`. A knob that is
        off (0) stays off, and one that is on stays on: that decides the
        form of the update. ``lr`` may be 0 (the last step of a decay to
        zero: no step)."""
        owner = f"rc.{type(self).__name__}"
        checked = {}
        for name, value in values.items():
            spec = self.spec(name)
            value = _scheduled_lr(owner, value) if name == "lr" else spec.validate(owner, value)
            current = self.initial_values[name]
            if spec.can_be_off and (current == 0.0) != (value == 0.0):
                change = "switched on" if current == 0.0 else "switched off"
                raise ValueError(f"{owner}: {name} cannot be {change} after construction (it is {current!r}), "
                                 f"got {value!r}")
            self._check_fits(name, value, self.params_dtype, zero_rounding=name != "lr")
            checked[name] = value
        return checked

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value:g}" for name, value in self.current_values().items())
        hyper = "" if self.hyper is None else (", hyper=<self>" if self.hyper is self else f", hyper={self.hyper!r}")
        return f"rc.{type(self).__name__}({values}{hyper})"


def place_next_to(optimizers: Iterable[Optimizer], params: Sequence[Tensor]) -> None:
    """Move each optimizer's values next to ``params`` (their device; held as
    for the narrowest of their dtypes, which may mix: a bfloat16 layer in a
    float32 model), once every value is checked to fit each of their dtypes
    (:meth:`Optimizer.check_fits`): a value that does not fit raises before
    any optimizer moves."""
    optimizers = list(optimizers)
    dtypes = {param.dtype for param in params}
    for optimizer in optimizers:
        optimizer.check_fits(dtypes)
    for optimizer in optimizers:
        optimizer.to(params[0].device, narrowest(dtypes))


def narrowest(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The dtype with the smallest largest number among ``dtypes`` (of
    parameters that mix them): the one that bounds the values a tower may
    learn (float16, then bfloat16, float32, float64)."""
    return min(dtypes, key=lambda dtype: torch.finfo(dtype).max)


def raw_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype that holds the learnable hyperparameters of an optimizer
    stepping ``dtype`` parameters: ``dtype``, but at least float32. In
    bfloat16 (8 significant bits) log lr is stored in steps of 2^-5 near
    log 0.01, so hyper-steps smaller than 0.016 would round away and the
    learning rate could not move; as mixed-precision training keeps float32
    master weights, a tower keeps float32 hyperparameters."""
    return torch.promote_types(dtype, torch.float32)


def _constraints_of(owner: str, specs: Mapping[str, Hyperparameter],
                    parametrization: Mapping[str, str] | None) -> dict[str, Constraint]:
    """Each hyperparameter's map from raw to value: its spec's constraint,
    or the identity where ``parametrization`` says ``"identity"``."""
    parametrization = dict(parametrization or {})
    for name, kind in parametrization.items():
        if name not in specs:
            raise ValueError(f"{owner}: parametrization= names unknown hyperparameter {name!r}; "
                             f"expected some of {sorted(specs)}")
        if kind not in ("constrained", "identity"):
            raise ValueError(f"{owner}: parametrization of {name!r} must be 'constrained' or 'identity', got {kind!r}")
    return {name: identity if parametrization.get(name) == "identity" else spec.constraint
            for name, spec in specs.items()}


def _check_hyper(owner: str, hyper: Any) -> Optimizer | None:
    if hyper is None or isinstance(hyper, Optimizer):
        return hyper
    raise TypeError(f"{owner}: hyper= must be an rc.Optimizer (for example rc.SGD(1e-4)) or None, got "
                    f"{described(hyper)}")


def described(value: Any) -> str:
    """How an error names a value of the wrong kind: ``the class m.Name``
    for a class (torch.optim.Adam where an rc optimizer was meant), else its
    type ``m.Name``."""
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _same(a: Any, b: Any) -> bool:
    """Whether two shared state entries are equal (a tensor only to itself)."""
    return a is b or (type(a) is type(b) and not isinstance(a, Tensor) and a == b)


def flag(owner: str, name: str, value: Any) -> bool:
    """A flag's value: True or False, nothing else (``maximize=1`` or
    ``amsgrad="yes"`` is refused rather than read as truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def finite_float(owner: str, name: str, value: Any) -> float:
    """A float option that is not a hyperparameter (e.g. an initial accumulator)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _scheduled_lr(owner: str, value: Any) -> float:
    """A learning rate a schedule wrote: a finite number >= 0 (0: no step)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: lr must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}: lr must be a finite number >= 0, got {value!r}")
    return float(value)
