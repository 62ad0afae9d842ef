"""MetaTrainer: nested unrolls, each level learned by the one above.

Level 0 holds the trained parameters theta and optimizer O_0 with
hyperparameters h_0; level i >= 1 holds h_{i-1} and optimizer O_i with
hyperparameters h_i. With depth d (optimizers O_0 .. O_d):

    L_1(h_0)     = meta-loss of a K_0-step unroll of O_0 on theta
    L_i(h_{i-1}) = meta-loss ("final") of a K_{i-1}-step unroll of O_{i-1}
                   on h_{i-2}, whose objective is L_{i-1}

One :meth:`MetaTrainer.meta_step` computes L_d(h_{d-1}), differentiates it
end to end (through K_{d-1} x ... x K_0 inner steps) and lets O_d, whose own
hyperparameters stay fixed, step h_{d-1}. Everything below carries forward to
the next meta-step without its graph (truncated backpropagation), so memory
does not grow across meta-steps.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import Tensor

from recurse.distributed import all_ranks_agree, total
from recurse.hyper import _advance, _detach_tree
from recurse.optim import _ops
from recurse.optim.base import Optimizer, State, described, flag, place_next_to
from recurse.unroll import Objective, _check_options, gradients, unroll

log = logging.getLogger("recurse")


class MetaTrainer:
    """Train ``params`` on ``objective`` with ``optimizers[0]``, whose
    hyperparameters are learned by ``optimizers[1]`` from unrolls of
    ``unroll_steps[0]`` steps, and so on up to ``optimizers[-1]`` (fixed).

    >>> theta = [torch.zeros(3)]
    >>> objective = lambda params, k: ((params[0] - 1) ** 2).sum()
    >>> trainer = rc.MetaTrainer(theta, objective, [rc.SGD(0.01), rc.Adam(0.05)], unroll_steps=[20])
    >>> losses = [trainer.meta_step() for _ in range(30)]
    >>> losses[-1] < losses[0], trainer.hyperparameters()["0.lr"] > 0.01
    (True, True)

    ``meta_loss``/``validation``/``meta_objective``/``first_order``/``window`` apply to the level-0
    unrolls (see :func:`recurse.unroll.unroll`); higher levels use the final
    meta-loss of the level below. A meta-step whose loss or meta-gradient is
    not finite is rolled back whole, counted in ``nonfinite_steps``, and the
    top optimizer's learning rate is multiplied by ``backoff`` (1 keeps it).
    Stability penalties: ``penalties`` (e.g. ``rc.transforms.L2Penalty``) are
    functions ``penalty(raw, start)`` of the top learned meta-parameters
    added to the meta-loss; ``update_penalty=c`` adds c * sum ||theta_{k+1} -
    theta_k||^2 over the level-0 unrolls (see :func:`recurse.unroll.unroll`).
    Sampled tasks: :meth:`new_task` swaps the trained parameters (and the
    objective) while the meta-parameters and the meta-optimizer's state carry on.
    The trainer steps its own copies of ``params`` (functionally, so that it
    can differentiate the unroll) and, with ``write_back=True`` (default),
    writes them back into the tensors given after every meta-step, as
    torch.optim updates a model's parameters in place: pass
    ``list(model.parameters())`` and the model is trained (``trainer.params``
    holds the same values). The copies are taken once: an edit of the given
    tensors between meta-steps is overwritten. ``write_back=False`` when the
    tensors are starting points only (meta-training over sampled tasks, which
    starts each :meth:`new_task` from them).
    Every tensor follows the parameters' device (``device=`` moves them
    there first); the objective must compute on that device too.
    ``distributed=True`` (under torch.distributed): each rank unrolls its own
    share of the tasks with an objective summing over them; the meta-gradients
    are summed over ranks (the meta-gradient of the sum over all tasks) and the
    roll-back decision is taken jointly, so every rank learns the same values.
    """

    def __init__(self, params: Sequence[Tensor], objective: Objective, optimizers: Sequence[Optimizer], *,
                 unroll_steps: Sequence[int], meta_loss: str = "final",
                 validation: Callable[[list[Tensor]], Tensor] | None = None, first_order: bool = False,
                 window: int | None = None, device: torch.device | str | None = None,
                 distributed: bool = False, penalties: Sequence[Callable[[Tensor, Tensor], Tensor]] = (),
                 update_penalty: float = 0.0, backoff: float = 0.5, meta_objective: Objective | None = None,
                 write_back: bool = True) -> None:
        optimizers = list(optimizers)
        if len(optimizers) < 2:
            raise ValueError(f"rc.MetaTrainer: needs at least two optimizers (one trains, one learns it), "
                             f"got {len(optimizers)}")
        for index, optimizer in enumerate(optimizers):
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"rc.MetaTrainer: optimizers[{index}] must be an rc.Optimizer, "
                                f"got {described(optimizer)}")
            if optimizer.needs_closure:
                raise ValueError(f"rc.MetaTrainer: optimizers[{index}] ({optimizer!r}) evaluates the loss again at "
                                 "other points, which an unroll does not offer; use it with rc.HyperOptimizer")
            if index < len(optimizers) - 1 and not optimizer.learnable:
                raise ValueError(f"rc.MetaTrainer: optimizers[{index}] ({optimizer!r}) has nothing to learn (learn=())")
        if len(unroll_steps) != len(optimizers) - 1:
            raise ValueError(f"rc.MetaTrainer: unroll_steps needs one count per learned level "
                             f"({len(optimizers) - 1}), got {list(unroll_steps)!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 < backoff <= 1:
            raise ValueError(f"rc.MetaTrainer: backoff must be in (0, 1], got {backoff!r}")
        if backoff < 1 and "lr" not in optimizers[-1].initial_values:
            raise ValueError(f"rc.MetaTrainer: backoff={backoff!r} shrinks the top optimizer's lr, but "
                             f"{optimizers[-1]!r} has none; pass backoff=1")
        for index, penalty in enumerate(penalties):
            if not callable(penalty):
                raise TypeError(f"rc.MetaTrainer: penalties[{index}] must be callable as penalty(raw, start), "
                                f"got {described(penalty)}")
        _check_options(unroll_steps[0], meta_loss, validation, window, update_penalty)
        for steps in unroll_steps[1:]:
            _check_options(steps, "final", None, None)
        self.write_back = flag("rc.MetaTrainer", "write_back", write_back)
        self._given = list(params)  # (written back after every meta-step, with write_back)
        params = [p.detach().clone() if device is None else p.detach().to(device) for p in self._given]
        if not params:
            raise ValueError("rc.MetaTrainer: got an empty parameter list")
        place_next_to(optimizers, params)
        self.objective = objective
        self.optimizers = optimizers
        self.unroll_steps = list(unroll_steps)
        self.meta_loss, self.validation = meta_loss, validation
        self.first_order, self.window = first_order, window
        self.distributed = distributed
        self.penalties, self.update_penalty, self.backoff = list(penalties), update_penalty, backoff
        self.meta_objective = meta_objective
        self.start_raw = optimizers[-2].raw.detach().clone()
        # values[i]: what level i's optimizer steps (theta, then each raw vector).
        self.values: list[list[Tensor]] = [params] + [[optimizer.raw.detach()] for optimizer in optimizers[:-1]]
        self.states: list[State | None] = [None] * len(optimizers)
        self.top_norm_state: State | None = None
        self.inner_step = 0
        self.meta_steps = 0
        self.nonfinite_steps = 0
        self.last_meta_loss = float("nan")
        self.last_meta_gradient_norm = float("nan")  # of the top learned meta-parameters, at the last meta-step

    @property
    def depth(self) -> int:
        return len(self.optimizers) - 1

    @property
    def params(self) -> list[Tensor]:
        """The trained parameters now."""
        return self.values[0]

    def hyperparameters(self) -> dict[str, float]:
        """``{"<level>.<name>": value}`` for every level, as the next meta-step starts."""
        values = {}
        for level, optimizer in enumerate(self.optimizers):
            current = optimizer.current_values(self.values[level + 1][0] if level < self.depth else None)
            values.update({f"{level}.{name}": value for name, value in current.items()})
        return values

    def new_task(self, params: Sequence[Tensor], objective: Objective | None = None,
                 meta_objective: Objective | None = None) -> None:
        """Start training fresh ``params`` (on ``objective`` and
        ``meta_objective``, where given): the
        level-0 optimizer state (e.g. an LSTM's hidden states) and the inner
        step count restart; every learned level and the meta-optimizer's
        state carry on, so meta-training continues over sampled tasks."""
        self._given = list(params)
        params = [p.detach().to(self.values[0][0].device, copy=True) for p in self._given]
        if not params:
            raise ValueError("rc.MetaTrainer.new_task: got an empty parameter list")
        self.values[0], self.states[0], self.inner_step = params, None, 0
        if objective is not None:
            self.objective = objective
        if meta_objective is not None:
            self.meta_objective = meta_objective

    def meta_loss_of(self, raw: Tensor) -> Tensor:
        """L_d at the top learned hyperparameters ``raw`` plus the penalties,
        from the current carried state (advances it; used by
        :meth:`meta_step` and by tests)."""
        loss = self._level_loss(self.depth, [raw])
        for penalty in self.penalties:
            loss = loss + penalty(raw, self.start_raw)
        return loss

    def meta_step(self) -> float:
        """One outermost step: returns L_d before the step."""
        snapshot = (list(self.values), list(self.states), self.inner_step)
        leaf = self.values[self.depth][0].detach().requires_grad_()
        loss = self.meta_loss_of(leaf)
        (gradient,) = gradients(loss, [leaf])
        if self.distributed:
            gradient = total(gradient)
        self.last_meta_gradient_norm = float(gradient.norm())
        top = self.optimizers[-1]
        new_values, (state, norm_state, _) = _advance(top, top.raw, [leaf.detach()], [gradient], self.states[-1],
                                                      self.top_norm_state, learned=False)
        finite = _ops.all_finite([loss.detach(), gradient, new_values[0]])
        if self.distributed:
            finite = all_ranks_agree(finite, leaf.device)
        if not finite:
            self.values, self.states, self.inner_step = snapshot
            self.nonfinite_steps += 1
            if self.backoff < 1:
                top.initial_values["lr"] *= self.backoff
            log.warning("rc.MetaTrainer: non-finite meta-loss or meta-gradient at meta-step %d; rolled back "
                        "(%d so far), meta lr now %g", self.meta_steps + 1, self.nonfinite_steps,
                        top.initial_values.get("lr", float("nan")))
        else:
            self.values = [_detach_tree(values) for values in self.values[:-1]] + [[new_values[0].detach()]]
            self.states = [_detach_tree(state_) for state_ in self.states[:-1]] + [state]
            self.top_norm_state = norm_state
            for optimizer, values in zip(self.optimizers[:-1], self.values[1:]):
                optimizer.assign_raw(values[0])
            self._write_back()
        self.meta_steps += 1
        self.last_meta_loss = loss.item()
        return self.last_meta_loss

    def state_dict(self) -> dict:
        """Everything a resumed run needs: every level's values and optimizer
        state, the top normaliser, the step counters and the global RNG state
        (restored by :meth:`load_state_dict`, for objectives that draw from it)."""
        from recurse.checkpoint import rng_state

        return {"rng": rng_state(), "values": [[t.clone() for t in values] for values in self.values],
                "states": _detach_tree(self.states), "top_norm_state": _detach_tree(self.top_norm_state),
                "inner_step": self.inner_step, "meta_steps": self.meta_steps,
                "nonfinite_steps": self.nonfinite_steps, "last_meta_loss": self.last_meta_loss,
                "top_values": dict(self.optimizers[-1].initial_values), "start_raw": self.start_raw.clone()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue exactly where :meth:`state_dict` was taken (the objective
        must give the same batch for the same inner step)."""
        from recurse.checkpoint import set_rng_state

        values = state_dict["values"]
        if len(values) != len(self.values) or any(len(a) != len(b) for a, b in zip(values, self.values)):
            raise ValueError(f"rc.MetaTrainer.load_state_dict: the checkpoint has {len(values)} levels of sizes "
                             f"{[len(v) for v in values]}, this trainer {[len(v) for v in self.values]}")
        reference = self.values[0][0]
        self.values = [[t.to(reference.device) for t in level] for level in values]
        self.states = list(state_dict["states"])
        self.top_norm_state = state_dict["top_norm_state"]
        self.inner_step, self.meta_steps = state_dict["inner_step"], state_dict["meta_steps"]
        self.nonfinite_steps, self.last_meta_loss = state_dict["nonfinite_steps"], state_dict["last_meta_loss"]
        self.optimizers[-1].initial_values.update(state_dict["top_values"])
        self.start_raw = state_dict["start_raw"].to(reference.device)
        for optimizer, level in zip(self.optimizers[:-1], self.values[1:]):
            optimizer.assign_raw(level[0])
        self._write_back()
        set_rng_state(state_dict["rng"])

    def _write_back(self) -> None:
        """The trained parameters into the tensors the user gave (with ``write_back``)."""
        if not self.write_back:
            return
        shapes = [(tuple(given.shape), tuple(value.shape)) for given, value in zip(self._given, self.values[0])]
        if len(self._given) != len(self.values[0]) or any(a != b for a, b in shapes):
            raise ValueError(f"rc.MetaTrainer: the trained parameters have shapes {[b for _, b in shapes]}, the "
                             f"tensors given {[a for a, _ in shapes]}; a checkpoint of another model?")
        with torch.no_grad():
            for given, value in zip(self._given, self.values[0]):
                given.copy_(value)

    def _level_loss(self, level: int, values: list[Tensor]) -> Tensor:
        """The objective of level ``level`` at ``values`` (theta for level 0)."""
        if level == 0:
            raise AssertionError("level 0 is the user's objective")
        below = level - 1
        if below == 0:
            objective, options = self.objective, {"meta_loss": self.meta_loss, "validation": self.validation,
                                                  "window": self.window, "step_offset": self.inner_step,
                                                  "update_penalty": self.update_penalty,
                                                  "meta_objective": self.meta_objective}
        else:
            objective, options = (lambda raw, _k: self._level_loss(below, raw)), {}
        result = unroll(objective, self.values[below], self.optimizers[below], steps=self.unroll_steps[below],
                        raw=values[0], state=self.states[below], first_order=self.first_order, **options)
        self.values[below], self.states[below] = result.params, result.state
        if below == 0:
            self.inner_step += self.unroll_steps[0]
        return result.meta_loss
