"""The online hypergradient engine: towers of optimizers of any depth.

Level 0 trains the model; level k (k >= 1) trains the hyperparameters of
level k - 1. At step t, with g_t the model gradient:

1. Hypergradients, bottom-up. Level k's last update u_k produced the values
   that level k - 1 (or the model) now holds, as a function of level k's
   hyperparameters h_k. So

       G_0 = g_t . d u_0 / d h_0,   G_k = G_{k-1} . d u_k / d h_k,

   one vector-Jacobian product per level, through the graph of that last
   update only. For SGD over SGD, G_0 = -g_t . g_{t-1} (w.r.t. lr).
2. Updates, top-down. Level k steps h_{k-1} with G_{k-1}; level k - 1 then
   uses its freshly updated hyperparameters; level 0 steps the model. Each
   level keeps the graph of this update for step t + 1 and nothing older.

Model parameters stay leaf tensors (updated in place, like torch.optim);
hyperparameters are learned in their unconstrained form (log lr, logit of
betas), see :mod:`recurse.constraints`.

A level above the model whose "parameters" are a handful of numbers (the
raw vector of the level below, at most ``HOST_LEVEL_MAX_ENTRIES``) and whose
optimizer and normaliser declare ``host_floats`` is a *host level*: it steps
them as Python floats (one multiply-add is ~50 ns there, against a few
microseconds of dispatch for a tensor operation of any size). Its
hypergradient is a list of floats; ``raw`` stays a tensor.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from recurse import defaults, partial, plan
from recurse.estimators import (MAX_TANGENTS, Horizon, OneStep, TrainingLoss, UpdateRecord, closed_form_update,
                                has_closed_form, step_values, vjp)
from recurse.optim import _ops
from recurse.constraints import positive
from recurse.optim.base import Optimizer, State, described, finite_float, place_next_to, raw_dtype_for
from recurse.optim.per_group import PerGroup
from recurse.param_group import ParamGroup
from recurse.partial import Cohort, PartialUpdate
from recurse.sharding import Sharding

log = logging.getLogger("recurse")

GUARD_MODES = ("skip", "raise", "off")
# A level steps the raw vector below it in Python floats up to this size;
# above it, one tensor operation per formula step is cheaper. (One learned
# RMS-normalised step on CPU: floats and tensors break even near 100 entries
# for SGD and 80 for Adam; at 64 floats take 11 vs 15 us and 29 vs 37 us.)
HOST_LEVEL_MAX_ENTRIES = 64
_NO_CONTEXT = contextlib.nullcontext()
# torch.optim's registries of step hooks for every optimizer: (pre, post).
_GLOBAL_STEP_HOOKS = (_global_optimizer_pre_hooks, _global_optimizer_post_hooks)


class _Level:
    """One level of the tower: an optimizer and what it keeps between steps."""

    def __init__(self, optimizer: Optimizer, tied: bool) -> None:
        self.optimizer = optimizer
        self.tied = tied
        self.host = False  # steps the level below in Python floats (set by _build_levels)
        self.state: State | None = None
        self.norm_state: State | None = None
        self.last_update: UpdateRecord | None = None
        # Only for a tied level: its update of its own hyperparameters.
        self.self_state: State | None = None
        self.self_norm_state: State | None = None
        self.last_self_update: UpdateRecord | None = None

    def with_inputs_only(self) -> _Level:
        """A shallow copy whose last updates keep their inputs but no graph
        or closed form (closures and graphs can be neither pickled nor
        deep-copied apart from the tensors they hold)."""
        level = copy.copy(self)
        level.last_update, level.last_self_update = (
            None if update is None else update.with_inputs_only() if isinstance(update, PartialUpdate)
            else UpdateRecord(**update.to_dict())
            for update in (self.last_update, self.last_self_update))
        return level


@dataclass
class _Proposal:
    """Everything one step would change; committed only if all is finite."""

    model_params: list[Tensor] | None
    raws: dict[int, Tensor]
    level_updates: dict[int, tuple[State, State | None, UpdateRecord | None]]
    self_update: tuple[State, State | None, UpdateRecord] | None
    horizon_memory: Any = None  # (what level 0's horizon keeps, when it keeps more than the last update)
    hypergradients: list = field(default_factory=list)  # (what last_hypergradients shows once committed)
    points: list = field(default_factory=list)  # (the raws those hypergradients were taken at)
    first_step_measured: bool = False  # (the first-step limit has looked at a step that moves the parameters)
    level_zero_steps: int | None = None  # (the steps every parameter took, where level 0 holds one state)


class CopiesWhole:
    """For a torch.optim.Optimizer subclass: ``copy.deepcopy`` and ``pickle``
    take all its attributes (torch.optim's ``__getstate__`` keeps only
    defaults, state and param_groups), less the methods tools patched onto
    the instance: an LR scheduler wraps ``step`` around a weak reference to
    this very optimizer, which a copy must not call."""

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if not callable(getattr(type(self), key, None))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class HyperOptimizer(CopiesWhole, torch.optim.Optimizer):
    """A torch.optim.Optimizer that runs a tower of recurse optimizers
    (given none, the recommended one: :func:`recurse.defaults.tower`).

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-3, hyper=rc.SGD(1e-4)))
    >>> opt.zero_grad(); loss.backward(); opt.step()
    >>> round(opt.hyperparameters()["0.lr"], 6), opt.depth
    (0.001, 1)

    ``guard``: what a non-finite gradient or proposed value does.
    ``"skip"`` (default): the step is skipped, nothing is updated, the
    event is counted in ``nonfinite_steps`` and logged. ``"raise"``: a
    FloatingPointError, nothing updated. ``"off"``: no check (fastest).

    ``record_history``: keep the learned hyperparameters after every step
    (cheap: a few numbers per step); read them with :meth:`history`.

    ``horizon``: how far back the hypergradient of level 0's knobs looks,
    an :mod:`recurse.estimators` horizon: ``OneStep()`` (default, the last
    update) or ``Decayed(mu)`` (a decayed sum of every past update).

    ``hypergradient_loss``: which loss's gradient level 0's hypergradient
    is taken with: ``rc.estimators.TrainingLoss()`` (default, the training
    gradient) or ``rc.estimators.HeldOut(closure, every=k)`` (a held-out
    loss, every k steps).

    ``first_step_limit``: where level 0 learns its lr, the largest first
    step, as a fraction of the parameters' norm. If the first update at the
    starting lr would move the parameters further, ||p_1 - p_0|| >
    limit * ||p_0||, the learned lrs start lower by the factor that makes it
    exactly that far (every built-in's first step is proportional to its
    lr), and the tower learns on from there: no level above can undo a first
    step that wrecks the network (Adam's first step moves every coordinate
    by about lr), since a hypergradient needs two. The step is measured at
    the schedule's full factor (a warm-up's first steps are scaled down; one
    that starts at 0 moves nothing, and the first step that moves the
    parameters is measured). A warning says by how much the lr was lowered.
    Default ``recurse.defaults.FIRST_STEP_LIMIT`` (0.1); None never limits.
    It leaves a fixed lr alone (the user's, as in torch.optim), and
    parameters that are all 0 (no scale to compare with).

    Param groups carry their own values, as torch.optim's do: a group's
    keys that name a knob of level 0 (``"lr"``, ``"betas"``, ...) are its
    starting values, and with several groups each is stepped by its own
    copy of the rule and, where the tower learns, learns its own values
    (``"0.group<i>.lr"``). ``param_groups[i]["lr"]`` is what
    ``torch.optim.lr_scheduler`` reads and writes: for a fixed lr the value
    used (0 takes no step), for a learned lr a schedule that scales what the
    tower learned; :meth:`group_lrs` gives the lr each group steps with
    (see :mod:`recurse.param_group`).

    A learned level 0 keeps what its next hypergradient reads: what its
    closed form saved, where that is all it needs (SGD; Adam learning only
    lr), else this step's ``.grad`` tensors, uncopied. If one of those is
    written in place behind the
    optimizer (``model.zero_grad(set_to_none=False)``, gradients accumulated
    across steps, DDP's ``gradient_as_bucket_view``), that hypergradient is
    skipped with a warning and ``copies_gradients`` turns True: gradients
    are copied from then on. This optimizer's own ``zero_grad`` never
    writes into a kept gradient.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        optimizer: Optimizer | None = None,
        *,
        guard: str = "skip",
        record_history: bool = False,
        horizon: Horizon | None = None,
        hypergradient_loss: TrainingLoss | None = None,
        first_step_limit: float | None = defaults.FIRST_STEP_LIMIT,
    ) -> None:
        hypergradient_loss = TrainingLoss() if hypergradient_loss is None else hypergradient_loss
        if not isinstance(hypergradient_loss, TrainingLoss):
            raise TypeError("rc.HyperOptimizer: hypergradient_loss must be rc.estimators.TrainingLoss() or "
                            "rc.estimators.HeldOut(closure), got "
                            f"{described(hypergradient_loss)}")
        if first_step_limit is not None:
            first_step_limit = finite_float("rc.HyperOptimizer", "first_step_limit", first_step_limit)
            if first_step_limit <= 0:
                raise ValueError(f"rc.HyperOptimizer: first_step_limit must be a number > 0 or None, "
                                 f"got {first_step_limit!r}")
        if optimizer is None:
            optimizer = defaults.tower()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "rc.HyperOptimizer: optimizer must be an rc.Optimizer (for example rc.Adam(1e-3)), "
                f"got {described(optimizer)}"
            )
        if guard not in GUARD_MODES:
            raise ValueError(f"rc.HyperOptimizer: guard must be one of {GUARD_MODES}, got {guard!r}")
        horizon = OneStep() if horizon is None else horizon
        if not isinstance(horizon, Horizon):
            raise TypeError("rc.HyperOptimizer: horizon must be an rc.estimators horizon (OneStep() or "
                            f"Decayed(mu)), got {described(horizon)}")
        optimizer = plan.instantiate(optimizer)  # (the description stays as given: it can build others)
        if isinstance(params, Tensor):
            raise TypeError("rc.HyperOptimizer: params must be an iterable of tensors, got a single tensor")
        with warnings.catch_warnings():  # (torch.optim only warns of a repeated parameter; _check_params refuses it)
            warnings.filterwarnings("ignore", message="optimizer contains a parameter group with duplicate parameters")
            super().__init__(params, defaults={})
        self.defaults = ParamGroup.defaults_of(optimizer)
        self._params: list[Tensor] = [p for group in self.param_groups for p in group["params"]]
        self._check_params()
        # Under FSDP2 (see recurse.sharding) the engine steps each parameter's shard on this rank, in place.
        self._sharding = Sharding.of(self._params, "rc.HyperOptimizer")
        self._handles = self._params  # (what the user gave: where .grad is read and zeroed)
        if self._sharding is not None:
            self._params = self._sharding.local(self._handles)
        plan.levels(optimizer)  # (the description as given is checked first: its errors name its levels)
        optimizer, rules = _level_zero_for(optimizer, self.param_groups)
        self.param_groups = [ParamGroup(group, rule, index, level_zero=optimizer)
                             for index, (group, rule) in enumerate(zip(self.param_groups, rules))]
        self.guard = guard
        self.first_step_limit = first_step_limit
        self.record_history = record_history
        self.levels = _build_levels(optimizer)
        self.horizon = horizon
        self.hypergradient_loss = hypergradient_loss
        self._keeps_last_update = horizon.keeps_last_update  # (read every step)
        if self._sharding is not None:
            self._sharding.check_level_zero(self.levels[0].optimizer, hypergradient_loss)
        if not self._keeps_last_update:
            _check_horizon(horizon, self.levels[0])
        self._horizon_memory: Any = None
        self._dtypes = frozenset(param.dtype for param in self._params)  # (they may mix)
        place_next_to([level.optimizer for level in self.levels], self._params)
        self.step_count = 0
        # The steps level 0's parameters took while they share one state (where they do not, each cohort
        # counts its own: see recurse.partial).
        self._level_zero_steps = 0
        self._first_step_pending = True  # (until the first-step limit has measured a step that moves them)
        self.nonfinite_steps = 0
        self._history: list[list[Tensor]] = []
        self._last_hypergradients: list[Tensor | list[float] | None] = [None] * len(self.levels)
        self._hypergradient_points: list[Tensor | list[float] | None] = [None] * len(self.levels)
        self._finite = _ops.FiniteCheck(self._params[0].device)
        # Level 0 keeps this step's gradient for the next hypergradient. By
        # default it keeps the very .grad tensors (with their version
        # counters, to notice an in-place write: then one hypergradient is
        # skipped and gradients are copied from then on).
        self.copies_gradients = False
        self._kept_grads: list[tuple[Tensor, int]] | None = None
        self._pending_kept_grads: list[tuple[Tensor, int]] | None = None
        self._ready = True

    # --- construction checks --------------------------------------------

    def _check_params(self) -> None:
        if not self._params:
            raise ValueError("rc.HyperOptimizer: got an empty parameter list")
        first = self._params[0]
        seen: dict[int, int] = {}
        for index, param in enumerate(self._params):
            if id(param) in seen:
                raise ValueError(f"rc.HyperOptimizer: parameter {index} is parameter {seen[id(param)]} again; pass "
                                 "each parameter once (a repeated one would count twice in every hypergradient)")
            seen[id(param)] = index
            if not param.is_floating_point():
                raise TypeError(f"rc.HyperOptimizer: parameter {index} has dtype {param.dtype}; expected floating point")
            if param.device != first.device:
                raise ValueError(
                    f"rc.HyperOptimizer: parameter {index} is on {param.device} but parameter 0 is on "
                    f"{first.device}; all parameters must share one device"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_ready", False):
            raise NotImplementedError("rc.HyperOptimizer: parameters cannot be added after construction "
                                      "(add_param_group); build a new HyperOptimizer over all of them")
        super().add_param_group(param_group)

    # --- public views -------------------------------------------------------

    @property
    def depth(self) -> int:
        """Number of levels above the one that trains the model."""
        top = self.levels[-1]
        return len(self.levels) - 1 + (top.optimizer.tied_depth if top.tied else 0)

    def group_lrs(self) -> list[float | None]:
        """The lr each param group's next step uses: level 0's lr (learned or
        fixed; ``"group<i>.lr"`` among ``hyperparameters()`` where there are
        several groups) times the schedule's factor on it (see
        :mod:`recurse.param_group`); None for a rule without an lr."""
        lrs = [group.current_values().get("lr") for group in self.param_groups]
        return [None if lr is None else lr * group.rule.lr_scale for lr, group in zip(lrs, self.param_groups)]

    def hyperparameters(self) -> dict[str, float]:
        """Current values of every knob of every level, fixed ones included,
        as ``{"<level>.<name>": value}`` (:meth:`learned_hyperparameters`: the
        learned ones alone)."""
        return {
            f"{index}.{name}": value
            for index, level in enumerate(self.levels)
            for name, value in level.optimizer.current_values().items()
        }

    @property
    def last_hypergradients(self) -> list[Tensor | None]:
        """d loss / d raw that each level received at the last step (None
        where none yet), one 1-D tensor per level on the raw's device."""
        return [None if gradient is None else level.optimizer.as_raw_tensor(gradient)
                for level, gradient in zip(self.levels, self._last_hypergradients)]

    def hypergradients(self) -> dict[str, float]:
        """The hypergradient each learned level received at the last step,
        d loss / d value at the value the last update used, as
        ``{"<level>.<name>": value}`` (``last_hypergradients`` holds the same
        w.r.t. the unconstrained ``raw`` vectors). Under a schedule, a learned
        lr's is d loss / d learned lr: the schedule's factor times d loss / d
        the lr the step used."""
        result = {}
        for index, (level, gradient) in enumerate(zip(self.levels, self.last_hypergradients)):
            if gradient is None:
                continue
            point = level.optimizer.as_raw_tensor(self._hypergradient_points[index])
            values = level.optimizer.hypergradient_values(point, gradient)
            result.update({f"{index}.{name}": value for name, value in values.items()})
        return result

    def learned_hyperparameters(self) -> dict[str, float]:
        """The learned values alone, as in :meth:`hyperparameters` (which
        also holds every fixed knob): ``{"0.lr": ..., "1.lr": ...}`` (an
        LSTM optimizer's weights as their summary, ``"0.weights.rms"``)."""
        learned = {f"{index}.{name}" for index, level in enumerate(self.levels) if level.optimizer.is_learned
                   for name in level.optimizer.tracked_names()}
        return {key: value for key, value in self.hyperparameters().items() if key in learned}

    def history(self) -> dict[str, list[float]]:
        """Learned hyperparameters after each recorded step, ``{"0.lr": [...], ...}``."""
        names = [
            f"{index}.{name}"
            for index, level in enumerate(self.levels)
            if level.optimizer.is_learned
            for name in level.optimizer.tracked_names()
        ]
        columns: dict[str, list[float]] = {name: [] for name in names}
        for row in self._history:
            values = [value for entry in row for value in (entry.tolist() if isinstance(entry, Tensor) else entry)]
            for name, value in zip(names, values):
                columns[name].append(value)
        return columns

    # --- the step -------------------------------------------------------------

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step of every level. ``closure`` re-evaluates the loss (and
        calls backward) as in torch.optim; it must return the loss.

        Step hooks (``register_step_pre_hook`` and friends, global ones too)
        and the profiler's "Optimizer.step#HyperOptimizer.step" range work
        as in torch.optim, through torch.optim's own wrapper; it is entered
        only when a hook is registered or a profiler is running, since it
        opens a profiler range on every call otherwise (about 8 us a step)."""
        if (torch._C._autograd._profiler_enabled() or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or _GLOBAL_STEP_HOOKS[0] or _GLOBAL_STEP_HOOKS[1]):
            return self._step_with_hooks(closure)
        return self._step(closure)

    step.hooked = True  # (torch.optim.Optimizer.__init__ wraps an unmarked step in that wrapper)

    def _step(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        # No graph is built here, but where autograd differentiates an update
        # (a learned level without a closed form, Newton; see _advance).
        with torch.no_grad():
            loss, proposal = self._attempt(closure)
            if isinstance(proposal, str):
                self._reject(proposal)
            else:
                self._commit(proposal)
        return loss

    def _attempt(self, closure: Callable[[], Tensor] | None) -> tuple[Tensor | None, _Proposal | str]:
        """The loss, and the step every level would take; or, where the
        guard rejects it, what was non-finite ("gradient" or "update").
        Nothing is changed yet (_commit or _reject does that). Called under
        no_grad; the closure runs with grad enabled."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if loss is None:
                raise ValueError("rc.HyperOptimizer.step: the closure returned None; it must return the loss")
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                found = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"rc.HyperOptimizer.step: the closure must return the scalar loss, got {found}")
        if self.levels[0].optimizer.needs_loss_graph:
            if closure is None:
                raise ValueError(f"rc.HyperOptimizer.step: {self.levels[0].optimizer!r} needs the loss; call "
                                 "step(closure) with a closure that returns it without calling backward")
            closure = self._gradients_from(loss)
        elif self.levels[0].optimizer.needs_closure and closure is None:
            raise ValueError(f"rc.HyperOptimizer.step: {self.levels[0].optimizer!r} evaluates the loss again; call "
                             "step(closure) with a closure as torch.optim.LBFGS takes (it zeroes the gradients, "
                             "computes the loss, calls backward and returns the loss)")
        if self._sharding is not None:  # (a shard's storage may have been swapped: load_state_dict(assign=True))
            self._params = self._sharding.local(self._handles)
        self._forget_overwritten_gradients()
        grads = self._model_grads()
        points = [None if level.last_update is None else level.last_update.raw for level in self.levels]
        if not self._keeps_last_update:  # (level 0's last update used the raw it holds now)
            points[0] = self.levels[0].optimizer.raw
        hypergradients, level_grads = self._hypergradients(grads)
        proposal = self._propose(level_grads, hypergradients, closure)
        if self._first_step_pending and self.first_step_limit is not None and proposal.model_params is not None:
            measured, lowered = self._lowered_start(proposal.model_params)
            if lowered is not None:
                proposal = self._propose(level_grads, hypergradients, closure, start={0: lowered})
            proposal.first_step_measured = measured
        proposal.hypergradients, proposal.points = hypergradients, points
        if self.guard != "off":
            proposed = [raw for raw in proposal.raws.values() if isinstance(raw, Tensor)] + [
                value for value in proposal.model_params or () if value is not None]
            host_values = [value for raw in proposal.raws.values() if isinstance(raw, list) for value in raw]
            if not (all(map(math.isfinite, host_values)) and self._all_finite(proposed)):
                return loss, "gradient" if not self._all_finite([g for g in grads if g is not None]) else "update"
        return loss, proposal

    _step_with_hooks = torch.optim.Optimizer.profile_hook_step(_step)

    def _shard_layout(self) -> dict[str, Any] | None:
        """Which shards this rank holds: its place on the mesh, the mesh's
        size and the shards' shapes (None: not sharded)."""
        if self._sharding is None:
            return None
        mesh = self._sharding.mesh
        return {"rank": mesh.get_local_rank(), "ranks": mesh.size(), "shapes": [list(p.shape) for p in self._params]}

    def _all_finite(self, tensors: list[Tensor]) -> bool:
        """Whether every value is finite (on every rank's shard, where sharded)."""
        finite = self._finite(tensors)
        return finite if self._sharding is None else self._sharding.all_agree(finite)

    def _gradients_from(self, loss: Tensor) -> Callable[[], Tensor]:
        """Fill .grad from ``loss`` keeping its graph, for a level 0 that
        differentiates the loss again (Newton); returns a closure giving it."""
        fill_gradients("rc.HyperOptimizer.step", loss, self._params)
        return lambda: loss

    def _model_grads(self) -> list[Tensor | None]:
        """Each parameter's gradient; None where it has none (a frozen layer,
        a branch this loss did not use): that parameter is skipped this step,
        as torch.optim skips it (see :mod:`recurse.partial`)."""
        originals = ([param.grad for param in self._params] if self._sharding is None
                     else self._sharding.local_grads(self._handles))
        missing = 0
        for index, grad in enumerate(originals):
            if grad is None:
                missing += 1
            elif grad.is_sparse:
                raise RuntimeError(f"rc.HyperOptimizer.step: parameter {index} has a sparse gradient; not supported")
        if missing == len(originals):
            raise RuntimeError("rc.HyperOptimizer.step: no parameter has a .grad; call loss.backward() before step()")
        grads = [grad if grad is None or not grad.requires_grad else grad.detach() for grad in originals]
        if self.levels[0].optimizer.is_learned and self._keeps_last_update:
            if self.copies_gradients:
                grads = [None if grad is None else grad.clone() for grad in grads]
            else:
                self._pending_kept_grads = [(grad, grad._version) for grad in originals if grad is not None]
        return grads

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's, except that with ``set_to_none=False`` the
        gradients level 0 keeps for the next hypergradient are replaced by
        new zero tensors rather than zeroed in place.

        Written out rather than inherited: torch.optim's opens a profiler
        range and a dynamo guard on every call, which costs about 10 us,
        a few percent of a small model's step."""
        kept = set() if set_to_none or self._kept_grads is None else {grad.data_ptr() for grad, _ in self._kept_grads}
        for param in self._handles:
            grad = param.grad
            if grad is None:
                continue
            if set_to_none:
                param.grad = None
            elif kept and _data_ptr(grad) in kept:
                param.grad = torch.zeros_like(grad)
            else:
                if grad.grad_fn is not None:
                    grad.detach_()
                else:
                    grad.requires_grad_(False)
                grad.zero_()

    def _forget_overwritten_gradients(self) -> None:
        """If a gradient level 0 kept was written in place since (an
        accumulating backward, model.zero_grad(set_to_none=False), DDP's
        gradient_as_bucket_view), drop the update that reads it: one
        hypergradient is skipped, and gradients are copied from now on."""
        if self._kept_grads is None or all(grad._version == version for grad, version in self._kept_grads):
            return
        self.levels[0].last_update = None
        self._kept_grads = None
        self.copies_gradients = True
        log.warning("rc.HyperOptimizer: a gradient kept for the next hypergradient was written in place "
                    "(model.zero_grad(set_to_none=False), gradient accumulation across steps, or DDP's "
                    "gradient_as_bucket_view); one hypergradient was skipped, and gradients are copied from now on")

    def _hypergradients(self, grads: list[Tensor]) -> tuple[list, list]:
        """G_k for every level, bottom-up (None where not available yet), and
        the gradient each level steps with: the model's for level 0, G_{k-1}
        in the level's own form (floats for a host level) for level k."""
        hypergradients: list[Tensor | list[float] | None] = []
        level_grads: list[list | None] = [grads]
        for index, level in enumerate(self.levels):
            optimizer = level.optimizer
            incoming = level_grads[index]
            if incoming is None or not optimizer.is_learned:
                hypergradient = None
            elif index == 0:  # level 0's knobs: the hypergradient loss's gradient, as far back as the horizon looks
                kept = level.last_update if self._keeps_last_update else self._horizon_memory
                vector = None if kept is None else self.hypergradient_loss.incoming(self._params, incoming,
                                                                                    self.step_count)
                if vector is None:
                    hypergradient = None
                elif isinstance(level.last_update, PartialUpdate):
                    hypergradient = level.last_update.hypergradient(optimizer, vector, self._params)
                else:
                    hypergradient = self.horizon.hypergradient(optimizer, level.last_update, self._horizon_memory,
                                                               partial.incoming_at(optimizer, vector, self._params))
                if hypergradient is not None and self._sharding is not None:  # (each rank's shard's share)
                    hypergradient = self._sharding.total(hypergradient)
            else:
                hypergradient = None if level.last_update is None else vjp(optimizer, level.last_update, incoming,
                                                                          retain_graph=False)
            if hypergradient is None:
                hypergradients.append(None)
                level_grads.append(None)
                continue
            if level.tied and level.last_self_update is not None:
                through_self = hypergradient
                for _ in range(optimizer.tied_depth - 1):
                    through_self = vjp(optimizer, level.last_self_update, [through_self], retain_graph=True)
                    hypergradient = hypergradient + through_self
            hypergradients.append(hypergradient)
            above = index + 1
            level_grads.append(self._as_level_input(above, hypergradient) if above < len(self.levels) else None)
        return hypergradients, level_grads

    def _as_level_input(self, index: int, gradient: Tensor | list[float]) -> list:
        """G_{index-1} as level ``index`` steps with it: floats for a host
        level, else a one-tensor list."""
        if self.levels[index].host:
            return gradient if isinstance(gradient, list) else gradient.tolist()
        return [self.levels[index - 1].optimizer.as_raw_tensor(gradient)]

    def _lowered_start(self, proposed: list[Tensor]) -> tuple[bool, list[float] | None]:
        """Whether the first step ``proposed`` could be measured (a learned lr
        and a step that moves the parameters: under a warm-up from 0 the
        first steps do not), and level 0's raw with its learned lrs lowered
        so that this step, at the schedule's full factor, moves the
        parameters by ``first_step_limit`` of their norm; None where it
        moves them less (or there is nothing to lower)."""
        optimizer = self.levels[0].optimizer
        entries = optimizer.learned_lr_entries() if optimizer.is_learned else []
        scale = max(optimizer.lr_scales())
        if not entries or scale <= 0:
            return not entries, None
        # (in float64, read in one go: a half-precision sum of squares overflows)
        pairs = [(new, p.detach().double()) for new, p in zip(proposed, self._params) if new is not None]
        squares = [[p.square().sum() for _, p in pairs], [(new.double() - p).square().sum() for new, p in pairs]]
        sums = torch.stack([torch.stack(row).sum() for row in squares])
        size_squared, change_squared = (sums if self._sharding is None else self._sharding.total(sums)).tolist()
        size, change = math.sqrt(size_squared), math.sqrt(change_squared) / scale
        limit = self.first_step_limit * size
        if not (size > 0 and math.isfinite(change) and change > limit):  # (a non-finite step: the guard's)
            return change > 0 or size == 0, None
        raw, factor = list(optimizer.raw_floats()), limit / change
        for index, constraint in entries:
            raw[index] = raw[index] + math.log(factor) if constraint is positive else raw[index] * factor
        log.warning("rc.HyperOptimizer: the first step at the starting lr would move the parameters by %.3g of "
                    "their norm (first_step_limit %g); the learned lr starts %.3g times lower "
                    "(first_step_limit=None keeps it)", change / size, self.first_step_limit, 1 / factor)
        return True, _ops.rounded(raw, optimizer.raw_dtype)

    def _propose(self, level_grads, hypergradients, closure, start=None) -> _Proposal:
        """The step every level would take. ``start``: level index -> the raw
        (floats) it holds before this step instead of its own (the first
        step's lowered lr): what the level above steps, and, where no level
        above steps it, what it steps with and keeps."""
        start = start or {}
        raws: dict[int, Tensor | list[float]] = {}
        level_updates: dict[int, tuple[State, State | None, UpdateRecord | None]] = {}
        self_update = None
        top_index = len(self.levels) - 1
        top = self.levels[top_index]
        if top.tied and hypergradients[top_index] is not None:
            optimizer = top.optimizer
            new_raw, self_update = _advance(  # (a schedule scales the model's step, not this one)
                optimizer, optimizer.raw, [optimizer.raw], [hypergradients[top_index]],
                top.self_state, top.self_norm_state, learned=True, scaled=False,
            )
            raws[top_index] = new_raw[0].detach()
        model_params = horizon_memory = level_zero_steps = state_steps = None
        for index in range(top_index, -1, -1):
            level = self.levels[index]
            optimizer = level.optimizer
            if index == 0:
                targets = list(self._params)  # (it differentiates the loss at the very parameters: Newton)
                if optimizer.is_learned and not optimizer.needs_loss_graph:
                    if optimizer.update_depends_on_params() and (
                            closure is not None or not has_closed_form(optimizer)
                            or optimizer.closed_form_keeps_params()):
                        # Kept by the last update, and the model changes in place.
                        targets = [p.clone() for p in targets]
                    elif not has_closed_form(optimizer):  # autograd differentiates the update: no edge to the model
                        targets = [p.detach() for p in targets]
            else:
                below = self.levels[index - 1].optimizer
                if level_grads[index] is None:
                    continue
                below_raw = start.get(index - 1)
                if below_raw is None:
                    targets = list(below.raw_floats()) if level.host else [below.raw]
                else:
                    targets = list(below_raw) if level.host else [below.as_raw_tensor(below_raw)]
            target_grads = level_grads[index]
            raw = raws.get(index)
            if raw is None and index in start:  # (no level above stepped it: it keeps the start)
                raws[index] = raw = start[index]
            if raw is None:  # a closed form reads floats; autograd needs the tensor
                raw = optimizer.raw_floats() if optimizer.is_learned and has_closed_form(optimizer) else optimizer.raw
            elif isinstance(raw, list) and not (optimizer.is_learned and has_closed_form(optimizer)):
                raw = optimizer.as_raw_tensor(raw)
            if index == 0 and (isinstance(level.state, list) or any(grad is None for grad in target_grads)):
                new_values, (state, norm_state, last_update), state_steps = self._advance_present(
                    optimizer, raw, targets, target_grads, level, closure)
            else:
                new_values, (state, norm_state, last_update) = _advance(
                    optimizer, raw, targets, target_grads, level.state, level.norm_state,
                    learned=optimizer.is_learned, closure=closure if index == 0 else None,
                )
            if index == 0 and last_update is not None:
                if self._keeps_last_update:  # (what the closed form saved, where that is enough)
                    last_update = last_update.without_inputs()
                else:
                    horizon_memory = self.horizon.remember(optimizer, last_update, self._horizon_memory)
                    last_update = None
            level_updates[index] = (state, norm_state, last_update)
            if index == 0:
                model_params = [value.detach() if value is not None and value.requires_grad else value
                                for value in new_values]
                level_zero_steps = None if isinstance(state, list) else (
                    self._level_zero_steps + 1 if not isinstance(level.state, list) else state_steps)
            elif level.host:
                raws[index - 1] = _ops.rounded(new_values, below.raw_dtype)
            else:
                raws[index - 1] = new_values[0].detach()
        return _Proposal(model_params, raws, level_updates, self_update, horizon_memory,
                         level_zero_steps=level_zero_steps)

    def _advance_present(self, optimizer, raw, targets, grads, level, closure):
        """Level 0's update where some parameters have no gradient, or took
        different numbers of steps: the present ones, batched by the steps
        they took, one call of the rule per batch (see :mod:`recurse.partial`).
        Returns what :func:`_advance` does, with None for a skipped
        parameter's new value, the cohorts as the state (one state again
        where every parameter took as many steps: then also that number) and
        a :class:`recurse.partial.PartialUpdate` as the last update. A
        parameter that never had a gradient gets its state at its first
        step (a frozen backbone holds none)."""
        present = {index for index, grad in enumerate(grads) if grad is not None}
        if len(present) < len(grads):
            missing = min(set(range(len(grads))) - present)
            shape = tuple(self._handles[missing].shape)
            if not optimizer.skips_parameters():
                raise RuntimeError(f"rc.HyperOptimizer.step: parameter {missing} (shape {shape}) has no .grad, and "
                                   f"{optimizer!r} steps every parameter at every step (it declares no "
                                   "per_parameter_state); give every parameter a gradient, or leave that one out")
            if not self._keeps_last_update:
                raise RuntimeError(f"rc.HyperOptimizer.step: parameter {missing} (shape {shape}) has no .grad, and "
                                   f"horizon={self.horizon!r} follows every parameter at every step; use the "
                                   "default OneStep() horizon to skip parameters")
        norm_state = level.norm_state
        if optimizer.normalizer is not None:  # (the gradient of the present parameters, as one vector)
            order = sorted(present)
            normalized, norm_state = optimizer.normalized([grads[i] for i in order], norm_state)
            grads = list(grads)
            for index, grad in zip(order, normalized):
                grads[index] = grad
        cohorts = level.state if isinstance(level.state, list) else [
            Cohort(list(range(len(targets))), level.state, self._level_zero_steps)]
        stepped, cohorts = partial.batches(optimizer, cohorts, present)
        new_values: list[Tensor | None] = [None] * len(targets)
        records = []
        for batch in stepped:  # (a batch's state is None before its parameters' first step: _advance builds it)
            values, (state, _, record) = _advance(
                optimizer.for_positions(batch.positions), raw, [targets[i] for i in batch.positions],
                [grads[i] for i in batch.positions], batch.state, None, learned=optimizer.is_learned, normalize=False,
                closure=closure)
            for index, value in zip(batch.positions, values):
                new_values[index] = value
            cohorts.append(Cohort(batch.positions, state, batch.steps + 1))
            if record is not None:
                records.append((batch.positions, record))
        last_update = PartialUpdate(records) if optimizer.is_learned else None
        if len(records) == 1 and len(records[0][0]) == len(targets):
            last_update = records[0][1]
        if len(cohorts) == 1:  # (every parameter took as many steps again: one state, the whole list's)
            return new_values, (cohorts[0].state, norm_state, last_update), cohorts[0].steps
        return new_values, (cohorts, norm_state, last_update), None

    def _commit(self, proposal: _Proposal) -> None:
        self._last_hypergradients, self._hypergradient_points = proposal.hypergradients, proposal.points
        if proposal.model_params is not None:  # (under no_grad: see _step)
            if all(value is not None for value in proposal.model_params):
                _ops.copy_all(self._params, proposal.model_params)
            else:  # (parameters skipped this step keep their values)
                stepped = [(param, value) for param, value in zip(self._params, proposal.model_params)
                           if value is not None]
                _ops.copy_all([param for param, _ in stepped], [value for _, value in stepped])
        for index, raw in proposal.raws.items():
            if isinstance(raw, list):
                self.levels[index].optimizer.set_raw_floats(raw, rounded=True)
            else:
                self.levels[index].optimizer.raw = raw
        for index, (state, norm_state, last_update) in proposal.level_updates.items():
            level = self.levels[index]
            level.state, level.norm_state, level.last_update = state, norm_state, last_update
        if proposal.self_update is not None:
            top = self.levels[-1]
            top.self_state, top.self_norm_state, top.last_self_update = proposal.self_update
        if not self._keeps_last_update:
            self._horizon_memory = proposal.horizon_memory
        kept = self.levels[0].last_update
        # (a record without inputs holds no gradient that an in-place write could change)
        self._kept_grads = self._pending_kept_grads if kept is not None and kept.grads is not None else None
        self._pending_kept_grads = None
        self.step_count += 1
        if proposal.first_step_measured:
            self._first_step_pending = False
        if proposal.level_zero_steps is not None:
            self._level_zero_steps = proposal.level_zero_steps
        if self.record_history:
            self._history.append(_learned_values(self.levels))

    def _reject(self, what: str) -> None:
        message = (
            f"rc.HyperOptimizer: non-finite {what} at step {self.step_count + 1}; "
            "the step was skipped and nothing was updated"
        )
        if self.guard == "raise":
            raise FloatingPointError(message)
        self._skipped()
        log_skipped_step(message, self.nonfinite_steps)

    def _skipped(self) -> None:
        """Count a skipped step; the last-update graphs were consumed, so restart the chain cleanly."""
        self.nonfinite_steps += 1
        self._kept_grads = self._pending_kept_grads = None
        for level in self.levels:
            level.last_update = None
            level.last_self_update = None

    # --- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: hyperparameters, optimizer and
        normaliser states and the inputs of each level's last update."""
        self._forget_overwritten_gradients()  # a resumed run must skip what this one will
        return {
            "step_count": self.step_count,
            "level_zero_steps": self._level_zero_steps,
            "first_step_pending": self._first_step_pending,
            "nonfinite_steps": self.nonfinite_steps,
            "copies_gradients": self.copies_gradients,
            "levels": [
                {
                    "optimizer": type(level.optimizer).__name__,
                    "flags": level.optimizer.flags(),
                    "values": dict(level.optimizer.initial_values),
                    "raw": level.optimizer.raw,
                    "state": None if isinstance(level.state, list) else level.state,
                    # (level 0 where its parameters took different numbers of steps: see recurse.partial)
                    "cohorts": [cohort.to_dict() for cohort in level.state] if isinstance(level.state, list) else None,
                    "norm_state": level.norm_state,
                    "last_update": (None if level.last_update is None or isinstance(level.last_update, PartialUpdate)
                                    else level.last_update.to_dict()),
                    "partial_update": (level.last_update.to_dict()["records"]
                                       if isinstance(level.last_update, PartialUpdate) else None),
                    "self_state": level.self_state,
                    "self_norm_state": level.self_norm_state,
                    "last_self_update": None if level.last_self_update is None else level.last_self_update.to_dict(),
                }
                for level in self.levels
            ],
            "history": self._history,
            "param_groups": [group.entries() for group in self.param_groups],
            "param_shapes": [list(param.shape) for param in self._handles],  # (whole, where sharded)
            "shard_layout": self._shard_layout(),
            "param_group_start_lrs": [group.start_lr for group in self.param_groups],
            "horizon": repr(self.horizon),
            "horizon_memory": self._horizon_memory,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_levels = state_dict.get("levels") if isinstance(state_dict, dict) else None
        if saved_levels is None:
            raise ValueError("rc.HyperOptimizer.load_state_dict: not a HyperOptimizer state_dict (no 'levels')")
        saved_horizon = state_dict.get("horizon", repr(OneStep()))
        if saved_horizon != repr(self.horizon):
            raise ValueError(f"rc.HyperOptimizer.load_state_dict: the checkpoint was taken with horizon={saved_horizon}, "
                             f"this optimizer has horizon={self.horizon!r}; build it with the same horizon")
        saved_groups = state_dict.get("param_groups")
        if saved_groups is not None and len(saved_groups) != len(self.param_groups):
            raise ValueError(f"rc.HyperOptimizer.load_state_dict: the checkpoint has {len(saved_groups)} param "
                             f"groups, this optimizer has {len(self.param_groups)}")
        saved_shapes = state_dict.get("param_shapes")  # (absent from checkpoints taken before it was kept)
        if saved_shapes is not None:
            shapes = [list(param.shape) for param in self._handles]
            if len(saved_shapes) != len(shapes):
                raise ValueError(f"rc.HyperOptimizer.load_state_dict: the checkpoint holds state for "
                                 f"{len(saved_shapes)} parameters, this optimizer has {len(shapes)}; build it over "
                                 "the same parameters")
            for index, (saved_shape, shape) in enumerate(zip(saved_shapes, shapes)):
                if list(saved_shape) != shape:
                    raise ValueError(f"rc.HyperOptimizer.load_state_dict: parameter {index} has shape {tuple(shape)} "
                                     f"here but {tuple(saved_shape)} in the checkpoint; build it over the same "
                                     "parameters")
        saved_layout = state_dict.get("shard_layout")  # (absent: a checkpoint from before sharding, unsharded)
        if saved_layout != self._shard_layout():
            def described_layout(layout):
                return "unsharded" if layout is None else (f"sharded (rank {layout['rank']} of {layout['ranks']}, "
                                                           f"its shards {[tuple(s) for s in layout['shapes']]})")
            raise ValueError(f"rc.HyperOptimizer.load_state_dict: the checkpoint was taken with the parameters "
                             f"{described_layout(saved_layout)}, here they are "
                             f"{described_layout(self._shard_layout())}; a state dict loads where it was taken "
                             "only (rc.distributed.save_optimizer and load_optimizer reshard)")
        if len(saved_levels) != len(self.levels):
            raise ValueError(
                f"rc.HyperOptimizer.load_state_dict: the checkpoint has {len(saved_levels)} levels, "
                f"this tower has {len(self.levels)}"
            )
        for index, (level, saved) in enumerate(zip(self.levels, saved_levels)):
            name = type(level.optimizer).__name__
            # (A knob switched on or off changes what is learnable: name it first, it is the cause.)
            switched = [key for key, value in saved.get("values", {}).items()
                        if (value == 0.0) != (level.optimizer.initial_values.get(key, value) == 0.0)]
            if saved["optimizer"] == name and switched:
                raise ValueError(f"rc.HyperOptimizer.load_state_dict: level {index} has {switched} "
                                 f"{'off' if level.optimizer.initial_values[switched[0]] == 0.0 else 'on'} here but "
                                 "not in the checkpoint; build the same tower as the one saved")
            flags = level.optimizer.flags()
            if saved["optimizer"] == name and saved.get("flags", flags) != flags:
                raise ValueError(f"rc.HyperOptimizer.load_state_dict: level {index} is {name} with {flags} here but "
                                 f"{saved['flags']} in the checkpoint; build the same tower as the one saved")
            if saved["optimizer"] == name and "flags" not in saved and isinstance(saved.get("state"), dict):
                # (a checkpoint from before flags were kept: its state shows the variant, amsgrad's an entry more)
                size = len(self._params) if index == 0 else 1
                expected = _layout(level.optimizer.init([torch.zeros(0)] * size))
                if _layout(saved["state"]) != expected:
                    raise ValueError(f"rc.HyperOptimizer.load_state_dict: level {index}'s state in the checkpoint "
                                     f"holds {_layout(saved['state'])}, this {name} ({flags}) holds {expected}; "
                                     "build the same tower as the one saved")
            if saved["optimizer"] != name or saved["raw"].shape != level.optimizer.raw.shape:
                raise ValueError(
                    f"rc.HyperOptimizer.load_state_dict: level {index} is {saved['optimizer']} with "
                    f"{saved['raw'].numel()} learnable hyperparameters in the checkpoint, but {name} with "
                    f"{level.optimizer.raw.numel()} here"
                )
        for group, entries in zip(self.param_groups, saved_groups or ()):
            try:
                group.check(entries)
            except (TypeError, ValueError) as error:
                raise type(error)(f"rc.HyperOptimizer.load_state_dict: the checkpoint's {error}; build the same "
                                  "param groups as the ones saved") from None
        # As torch.optim's load_state_dict casts state: every tensor goes to the parameters' device, a
        # floating one in the dtype of what it belongs to (level 0's: the parameters', where they share
        # one; the rest: the raws').
        device, raw_dtype = self._params[0].device, self.levels[0].optimizer.raw_dtype
        params_dtype = next(iter(self._dtypes)) if len(self._dtypes) == 1 else None

        def last_update(saved_update, dtype):
            if saved_update is None:
                return None
            return UpdateRecord(**_moved({key: value for key, value in saved_update.items() if key != "raw"}, device,
                                        dtype), raw=_moved(saved_update["raw"], device, raw_dtype))

        for index, (level, saved) in enumerate(zip(self.levels, saved_levels)):
            dtype = params_dtype if index == 0 else raw_dtype
            level.optimizer.raw = saved["raw"].to(device, raw_dtype)
            level.optimizer.initial_values.update(saved.get("values", {}))  # (a scheduler may have set them)
            level.state, level.norm_state = _moved(saved["state"], device, dtype), _moved(saved["norm_state"], device, dtype)
            if saved.get("cohorts") is not None:
                level.state = [Cohort(list(cohort["positions"]), _moved(cohort["state"], device, dtype), cohort["steps"])
                               for cohort in saved["cohorts"]]
            level.self_state = _moved(saved["self_state"], device, raw_dtype)
            level.self_norm_state = _moved(saved["self_norm_state"], device, raw_dtype)
            level.last_update = last_update(saved["last_update"], dtype)
            if saved.get("partial_update") is not None:
                level.last_update = PartialUpdate([(list(positions), last_update(record, dtype))
                                                   for positions, record in saved["partial_update"]])
            level.last_self_update = last_update(saved["last_self_update"], raw_dtype)
        self.step_count = state_dict["step_count"]
        self._level_zero_steps = state_dict.get("level_zero_steps", self.step_count)
        self._first_step_pending = state_dict.get("first_step_pending", self.step_count == 0)
        self.nonfinite_steps = state_dict["nonfinite_steps"]
        self.copies_gradients = state_dict.get("copies_gradients", False)
        self._kept_grads = None  # the loaded last update holds its own gradients
        memory = state_dict.get("horizon_memory")  # (tangents: one list per learned value, each like the parameters)
        self._horizon_memory = None if memory is None else [
            [tangent.to(device, raw_dtype_for(param.dtype)) for tangent, param in zip(tangents, self._params)]
            for tangents in memory]
        self._history = list(state_dict.get("history", []))
        starts = state_dict.get("param_group_start_lrs", [group.start_lr for group in self.param_groups])
        for group, entries, start in zip(self.param_groups, state_dict.get("param_groups", ()), starts):
            group.restore(entries, start)

    def __getstate__(self) -> dict[str, Any]:
        """As :class:`CopiesWhole`, each level's last update as its inputs
        alone: its graph or closed form is rebuilt at the next step, as after
        load_state_dict. So ``copy.deepcopy`` and ``pickle`` of a model with
        its optimizer give a pair that trains on exactly as the original."""
        state = super().__getstate__()
        state["levels"] = [level.with_inputs_only() for level in self.levels]
        state["_kept_grads"] = state["_pending_kept_grads"] = None  # (the inputs hold their own gradients)
        return state

    def __repr__(self) -> str:
        return f"rc.HyperOptimizer(depth={self.depth}, {self.levels[0].optimizer!r})"


def _check_horizon(horizon: Horizon, level: _Level) -> None:
    """A horizon that keeps its own memory needs a level 0 that steps from
    the gradient, is not tied, and learns few enough values."""
    optimizer = level.optimizer
    if level.tied or optimizer.needs_loss_graph:
        raise ValueError(f"rc.HyperOptimizer: horizon={horizon!r} needs a level 0 that steps from the gradient "
                         f"and is not tied; {optimizer!r} is {'tied' if level.tied else 'a Newton step'}")
    if optimizer.is_learned and optimizer.raw.numel() > MAX_TANGENTS:
        raise ValueError(f"rc.HyperOptimizer: horizon={horizon!r} keeps one model-sized tangent per learned value "
                         f"and level 0 ({type(optimizer).__name__}) learns {optimizer.raw.numel()} (at most "
                         f"{MAX_TANGENTS}); use the default OneStep() horizon")


def fill_gradients(owner: str, loss: Any, params: list[Tensor]) -> None:
    """Set each of ``params``' ``.grad`` from ``loss``, keeping the loss's
    graph (for an optimizer that differentiates the loss again: Newton,
    vSGD); a parameter the loss does not reach gets 0, a frozen one
    (``requires_grad`` False) keeps no gradient, as after backward."""
    if not (isinstance(loss, Tensor) and loss.requires_grad):
        raise ValueError(f"{owner}: the closure's loss does not depend on the parameters "
                         "(was backward called inside it, or the loss detached?)")
    trainable = [param for param in params if param.requires_grad]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss, trainable, retain_graph=True, allow_unused=True, materialize_grads=True)
    for param, grad in zip(trainable, grads):
        param.grad = grad.detach()


def log_skipped_step(message: str, count: int) -> None:
    """Warn of the ``count``-th skipped step: the 1st, 2nd, 4th, 8th, ..."""
    if count & (count - 1) == 0:
        log.warning("%s (%d non-finite steps so far)", message, count)


def _level_zero_for(optimizer: Optimizer, groups: list[dict[str, Any]]) -> tuple[Optimizer, list[Optimizer]]:
    """Level 0 for these param groups, and the rule that steps each group.

    A group's keys that name a knob of ``optimizer`` (``"betas"`` for Adam's
    pair) are its own starting values, as in torch.optim. One group: the
    optimizer itself, started from them. Several: an :class:`rc.PerGroup`
    of copies of the rule, one per group, each learning its own values
    where the optimizer is learned (``"group<i>.<name>"``), under the
    optimizer's ``hyper=`` and ``normalize=``."""
    options = [_options_of(optimizer, group) for group in groups]
    if len(groups) == 1:
        optimizer.start_from(options[0], owner="rc.HyperOptimizer: param group 0")
        return optimizer, [optimizer]
    for refused, why in ((optimizer.hyper is optimizer, "a tied tower (tie=True) steps itself as one group"),
                         (optimizer.needs_loss_graph, f"{type(optimizer).__name__} differentiates the whole loss"),
                         (isinstance(optimizer, PerGroup), "an rc.PerGroup forms its own groups")):
        if refused:
            raise ValueError(f"rc.HyperOptimizer: {len(groups)} param groups, but {why}; pass the parameters as one "
                             "group")
    rules, start = {}, 0
    for index, (group, values) in enumerate(zip(groups, options)):
        rule = copy.deepcopy(optimizer, {id(optimizer.hyper): None, id(optimizer.normalizer): None})
        rule.start_from(values, owner=f"rc.HyperOptimizer: param group {index}")
        count = len(group["params"])
        rules[f"group{index}"] = (rule, list(range(start, start + count)))
        start += count
    level_zero = PerGroup(rules, hyper=optimizer.hyper, normalize=optimizer.normalizer)
    return level_zero, [rule for rule, _ in rules.values()]


# torch.optim's per-group options that are not knobs: torch applies them to one group, an rc rule to all.
_RULE_OPTIONS = ("nesterov", "maximize", "amsgrad", "centered", "initial_accumulator_value", "etas", "step_sizes",
                 "foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay")


def _options_of(optimizer: Optimizer, group: dict[str, Any]) -> dict[str, Any]:
    """A param group's values for ``optimizer``'s knobs, by the rule's names
    (its other keys stay plain entries of the group, as torch.optim keeps
    them; a torch.optim option that is not a knob is refused)."""
    options = sorted(key for key in group if key in _RULE_OPTIONS)
    if options:
        raise ValueError(f"rc.HyperOptimizer: a param group sets {options}, which torch.optim takes per group but an "
                         f"rc optimizer takes once, for every group (e.g. rc.SGD(0.1, nesterov=True)); a group "
                         f"carries only the rule's knobs {sorted(optimizer.initial_values)}")
    values = {key: value for key, value in group.items() if key in optimizer.initial_values}
    if "betas" in group and all(name in optimizer.initial_values for name in ("beta1", "beta2")):
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"rc.HyperOptimizer: param group 'betas' must be a pair (beta1, beta2), got {betas!r}")
        values.update(beta1=betas[0], beta2=betas[1])
    return values


def _build_levels(optimizer: Optimizer) -> list[_Level]:
    """The levels of the tower ``optimizer`` (the engine's own copy, see
    :func:`recurse.plan.instantiate`), each stepping the one below in
    Python floats where it can (a host level)."""
    levels: list[_Level] = []
    for current in plan.levels(optimizer):
        tied = current.hyper is current
        level = _Level(current, tied)
        current.hypergradient_on_host = False
        if levels:
            below = levels[-1].optimizer
            level.host = (not tied and type(current).__dict__.get("host_floats", False)
                          and (current.normalizer is None or type(current.normalizer).__dict__.get("host_floats", False))
                          and below.raw.numel() <= HOST_LEVEL_MAX_ENTRIES)
            below.hypergradient_on_host = level.host
        levels.append(level)
    return levels


def _advance(optimizer, raw, targets, grads, state, norm_state, *, learned, closure=None, scaled=True,
             normalize=True):
    """One level's update of ``targets``, differentiable in ``raw`` when learned,
    with a learned lr times the schedule's factor (``scaled``; see
    :mod:`recurse.param_group`), of ``grads`` through the optimizer's
    normaliser (``normalize``; False: normalised already).

    Returns the new values and (new state, new normaliser state, last update).
    """
    if normalize and optimizer.normalizer is not None:
        grads, norm_state = optimizer.normalized(grads, norm_state)
    if state is None:
        state = optimizer.init(targets)
    lr_scales = optimizer.lr_scales() if learned and scaled else None
    if learned and (closure is None or optimizer.needs_loss_graph or optimizer.needs_closure):
        closed = closed_form_update(optimizer, raw, targets, grads, state, lr_scales, closure)
        if closed is not None:
            new_values, new_state, last_update = closed
            return new_values, (new_state, norm_state, last_update)
        if _ops.on_host(targets):  # a saturated value (see _closed_form_update): a non-finite step
            return [math.nan] * len(targets), (state, norm_state, None)
        if optimizer.update_depends_on_params() and not optimizer.closed_form_keeps_params():
            targets = [target.clone() for target in targets]  # (not copied for the closed form that declined)
    raw = optimizer.as_raw_tensor(raw)
    hyper_leaf = raw.detach().requires_grad_() if learned else None
    with torch.enable_grad() if learned or closure is not None else _NO_CONTEXT:
        hyper = step_values(optimizer, hyper_leaf, lr_scales) if learned else optimizer.hyper_values()
        new_values, new_state = optimizer.update(targets, grads, state, hyper, closure=closure)
    last_update = None
    if learned:
        # The state's dependence on this step's hyperparameters is dropped:
        # the hypergradient is one step deep, and a state that kept its graph
        # would chain every past step's graph together. (A fixed level's
        # state has no graph: its hyperparameters are floats.)
        new_state = _detach_tree(new_state)
        last_update = UpdateRecord(list(targets), list(grads), state, raw.detach(), hyper_leaf, new_values,
                                   lr_scales=lr_scales)
    return new_values, (new_state, norm_state, last_update)


def _layout(state: Any) -> Any:
    """A state's nested dict keys, without its values (what two variants of a rule keep differently)."""
    return {key: _layout(value) for key, value in state.items()} if isinstance(state, dict) else None


def _map_tensors(tree: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``tree`` (nested dicts, lists and tuples) with ``function`` applied to each tensor in it."""
    if isinstance(tree, Tensor):
        return function(tree)
    if isinstance(tree, dict):
        return {key: _map_tensors(value, function) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(value, function) for value in tree)
    return tree


def _detach_tree(tree: Any) -> Any:
    return _map_tensors(tree, Tensor.detach)


def _moved(tree: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """``tree``'s tensors on ``device``, the floating ones in ``dtype`` (None: as they are)."""
    return _map_tensors(tree, lambda x: x.to(device, dtype) if dtype is not None and x.is_floating_point()
                        else x.to(device))


def _learned_values(levels: list[_Level]) -> list[Tensor | list[float]]:
    """One history row: each learned level's tracked values, as host floats
    where a host level steps its raw (no tensor to build), else a tensor
    (no host synchronisation)."""
    row = []
    for level, above in zip(levels, levels[1:] + [None]):
        optimizer = level.optimizer
        if not optimizer.is_learned:
            continue
        if above is not None and above.host and type(optimizer).tracked_values is Optimizer.tracked_values:
            values = optimizer.values_from_raw(optimizer.raw_floats())
            row.append([values[name] for name in optimizer.learnable])
        else:
            row.append(optimizer.tracked_values())
    return row


def _data_ptr(grad: Tensor) -> int:
    """Where a gradient's values start (a DTensor's: its shard on this rank)."""
    return grad.to_local().data_ptr() if hasattr(grad, "to_local") else grad.data_ptr()
