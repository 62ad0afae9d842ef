"""The K-step engine: unrolled optimization, differentiated end to end.

"Learning to learn by gradient descent by gradient descent" (Andrychowicz et
al., 2016): run K inner steps of an optimizer functionally, take a meta-loss
(the final loss, the sum or mean over the unroll, or a validation loss) and
backpropagate through the whole unroll into the optimizer's meta-parameters.

    theta_{k+1} = update(theta_k, grad f_k(theta_k), state_k; h)      k = 0 .. K-1
    meta_loss(h) = f_K(theta_K)                  ("final")
                 | sum_{k=1..K} f_k(theta_k)     ("sum", L2L's choice; "mean" divides by K)
                 | validation(theta_K)           ("validation")

The inner gradients are taken with ``create_graph=True``, so the meta-gradient
includes the second-order terms; ``first_order=True`` treats them as constants
(L2L's simplification). ``window=W`` backpropagates through the last W steps
only: the first K - W steps run without a graph, so memory does not grow with K.

Unrolls nest (:class:`recurse.meta.MetaTrainer`): the objective of an unroll
can itself be the meta-loss of an unroll one level down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from recurse.hyper import _detach_tree
from recurse.optim.base import Optimizer, State, described, place_next_to

META_LOSSES = ("final", "sum", "mean", "validation")
Objective = Callable[[list[Tensor], int], Tensor]


@dataclass
class UnrollResult:
    """What an unroll returns. ``meta_loss`` and ``params`` carry the graph
    back to the meta-parameters; ``losses`` are the inner losses as floats.

    >>> result = rc.unroll(lambda params, k: (params[0] ** 2).sum(), [torch.ones(2)], rc.SGD(0.25), steps=2)
    >>> result.losses, result.meta_loss.item()
    ([2.0, 0.5], 0.125)
    """

    meta_loss: Tensor
    params: list[Tensor]
    state: State
    losses: list[float] = field(default_factory=list)


def unroll(objective: Objective, params: Sequence[Tensor], optimizer: Optimizer, *, steps: int,
           raw: Tensor | None = None, state: State | None = None, meta_loss: str = "final",
           validation: Callable[[list[Tensor]], Tensor] | None = None, first_order: bool = False,
           window: int | None = None, step_offset: int = 0, update_penalty: float = 0.0,
           meta_objective: Objective | None = None) -> UnrollResult:
    """Run ``steps`` steps of a recurse ``optimizer`` on ``objective`` from ``params``.

    ``objective(params, k)`` is the loss at inner step k (k counts from
    ``step_offset``; use it to pick the k-th mini-batch). ``raw`` holds the
    meta-parameters: the optimizer's learnable hyperparameters in their
    unconstrained form (see :mod:`recurse.constraints`); None runs the
    optimizer at its fixed values, with the very kernels torch.optim uses.
    ``state`` continues a previous unroll's optimizer state (``result.state``;
    for an optimizer built with ``normalize=``, ``{"optimizer": ...,
    "normalizer": ...}``: its gradient normaliser runs on each inner
    gradient, differentiably, as in the online engine).
    ``update_penalty=c`` adds c * sum_k ||theta_{k+1} - theta_k||^2 over the
    tracked steps to the meta-loss (a stability penalty on update size).
    ``meta_objective(params, k)``, when given, replaces f_k in the meta-loss
    (not in the inner gradients): e.g. the sum of per-task log losses of a
    batch of tasks, so that every task counts by its relative progress.

    The meta-gradient of the final loss with respect to log lr:

    >>> sgd = rc.SGD(0.1)
    >>> raw = sgd.raw.clone().requires_grad_()        # log lr, the meta-parameter
    >>> result = rc.unroll(lambda params, k: (params[0] ** 2).sum(), [torch.ones(2)], sgd, steps=5, raw=raw)
    >>> result.meta_loss.backward()
    >>> raw.grad.item() < 0                           # a larger lr would lower the final loss
    True
    """
    _check_options(steps, meta_loss, validation, window, update_penalty)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"rc.unroll: optimizer must be an rc.Optimizer (or use rc.unroll_torch for torch.optim), "
                        f"got {described(optimizer)}")
    params = list(params)
    optimizer.check_fits({param.dtype for param in params}, fixed_only=raw is not None)  # (dtypes may mix)
    with torch.enable_grad():  # inner gradients are needed even when the caller is in no_grad
        return _unroll(objective, params, optimizer, steps, raw, state, meta_loss, validation, first_order,
                       window, step_offset, update_penalty, meta_objective)


def _unroll(objective, params, optimizer, steps, raw, state, meta_loss, validation, first_order, window,
            step_offset, update_penalty, meta_objective) -> UnrollResult:
    normalizer, norm_state = optimizer.normalizer, None
    if state is None:
        state = optimizer.init(params)
    elif normalizer is not None:
        if not (isinstance(state, dict) and set(state) == {"optimizer", "normalizer"}):
            raise ValueError(f"rc.unroll: {optimizer!r} normalises its gradients, so state= must be the "
                             "{'optimizer': ..., 'normalizer': ...} of a previous unroll's result.state")
        state, norm_state = state["optimizer"], state["normalizer"]
    hyper = optimizer.hyper_values() if raw is None else optimizer.hyper_values(raw)
    fixed_hyper = optimizer.hyper_values() if raw is None else optimizer.hyper_values(raw.detach())
    tracked_from = steps - (window or steps)
    tracked_losses, losses, update_sizes = [], [], []
    for step in range(steps):
        tracked = step >= tracked_from
        if not tracked:
            params, state, norm_state = _detach_tree(params), _detach_tree(state), _detach_tree(norm_state)
        params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
        loss = objective(params, step_offset + step)
        _check_loss(loss, step_offset + step)
        if step > 0 and tracked:
            tracked_losses.append(loss if meta_objective is None else meta_objective(params, step_offset + step))
        losses.append(loss.item())
        # A sum/mean meta-loss backpropagates through this loss again later.
        keep = tracked and meta_loss in ("sum", "mean") and meta_objective is None
        grads = gradients(loss, params, create_graph=tracked and not first_order, retain_graph=keep or None)
        grads, norm_state = optimizer.normalized(grads, norm_state)
        new_params, state = optimizer.update(params, grads, state, hyper if tracked else fixed_hyper)
        if update_penalty and tracked:
            update_sizes.append(sum((new - old).square().sum() for new, old in zip(new_params, params)))
        params = new_params
    if meta_loss == "validation":
        final = validation(params)
    else:
        final = (objective if meta_objective is None else meta_objective)(params, step_offset + steps)
    _check_loss(final, step_offset + steps)
    tracked_losses.append(final)
    result = _combine(meta_loss, final, tracked_losses)
    if update_sizes:
        result = result + update_penalty * torch.stack(update_sizes).sum()
    if normalizer is not None:
        state = {"optimizer": state, "normalizer": norm_state}
    return UnrollResult(result, params, state, losses)


def unroll_torch(objective: Objective, params: Sequence[Tensor], optimizer: torch.optim.Optimizer, *, steps: int,
                 override: dict[str, Tensor] | None = None, meta_loss: str = "final",
                 validation: Callable[[list[Tensor]], Tensor] | None = None, first_order: bool = False,
                 window: int | None = None, step_offset: int = 0) -> UnrollResult:
    """The same unroll with a ``torch.optim`` optimizer (built over ``params``,
    starting from its state), made differentiable by ``higher``.
    ``override`` maps option names (``lr``, ``momentum``, ...) to tensors
    that require grad: the meta-parameters. ``window=W``: as in
    :func:`unroll`, only the last W steps are backpropagated through; the
    parameters and the optimizer's state are cut from the graph on entering
    them, so the result is that of K - W steps of ``optimizer`` at the
    override's values followed by a W-step unroll from where they ended.

    >>> start = [torch.ones(2, requires_grad=True)]
    >>> lr = torch.tensor(0.1, requires_grad=True)
    >>> result = rc.unroll_torch(lambda params, k: (params[0] ** 2).sum(), start, torch.optim.SGD(start, lr=0.1),
    ...                          steps=5, override={"lr": lr})
    >>> result.meta_loss.backward()
    >>> lr.grad.item() < 0
    True
    """
    import higher

    _check_options(steps, meta_loss, validation, window)
    params = list(params)
    overrides = None if override is None else {name: [value] for name, value in override.items()}
    callback = (lambda grads: [None if g is None else g.detach() for g in grads]) if first_order else None
    differentiable = higher.optim.get_diff_optim(optimizer, params, override=overrides, track_higher_grads=True,
                                                 grad_callback=callback)
    params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
    with torch.enable_grad():
        return _unroll_torch(objective, params, differentiable, steps, meta_loss, validation, window, step_offset)


def _unroll_torch(objective, params, differentiable, steps, meta_loss, validation, window,
                  step_offset) -> UnrollResult:
    tracked_from = steps - (window or steps)
    tracked_losses, losses = [], []
    for step in range(steps):
        if 0 < tracked_from and step <= tracked_from:  # before the window, and on entering it: cut the graph
            params = [param.detach().requires_grad_() for param in params]
            _detach_state(differentiable)
        loss = objective(params, step_offset + step)
        _check_loss(loss, step_offset + step)
        if step > 0 and step >= tracked_from:
            tracked_losses.append(loss)
        losses.append(loss.item())
        params = list(differentiable.step(loss, params=params))
    final = validation(params) if meta_loss == "validation" else objective(params, step_offset + steps)
    tracked_losses.append(final)
    return UnrollResult(_combine(meta_loss, final, tracked_losses), params, {}, losses)


def _detach_state(differentiable) -> None:
    """Cut a higher differentiable optimizer's state (one dict per parameter
    group, parameter index -> that parameter's state) from the graph, in
    place: its containers are higher's own."""
    for group_state in differentiable.state:
        for index, entry in list(group_state.items()):
            group_state[index] = _detach_tree(entry)


def _combine(meta_loss: str, final: Tensor, tracked_losses: list[Tensor]) -> Tensor:
    if meta_loss in ("final", "validation"):
        return final
    total = torch.stack(tracked_losses).sum()
    return total / len(tracked_losses) if meta_loss == "mean" else total


def _check_options(steps, meta_loss, validation, window, update_penalty=0.0) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"rc.unroll: steps must be an integer >= 1, got {steps!r}")
    if meta_loss not in META_LOSSES:
        raise ValueError(f"rc.unroll: meta_loss must be one of {META_LOSSES}, got {meta_loss!r}")
    if meta_loss == "validation" and validation is None:
        raise ValueError("rc.unroll: meta_loss='validation' needs validation=<function of the final params>")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= steps):
        raise ValueError(f"rc.unroll: window must be an integer in [1, steps={steps}], got {window!r}")
    if isinstance(update_penalty, bool) or not isinstance(update_penalty, (int, float)) \
            or not 0 <= update_penalty < float("inf"):
        raise ValueError(f"rc.unroll: update_penalty must be a finite number >= 0, got {update_penalty!r}")


def _check_loss(loss, step: int) -> None:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"rc.unroll: the objective must return a scalar tensor, got {shape} at inner step {step}")


def model_objective(model: torch.nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                    batch_at: Callable[[int], tuple[Tensor, Tensor]]) -> Objective:
    """``objective(params, k) = loss_fn(model(inputs_k) with params, targets_k)``,
    the model run functionally by ``higher.patch.monkeypatch``; ``batch_at(k)``
    gives the k-th mini-batch. Pass ``list(model.parameters())`` (or copies)
    as the unroll's starting params.

    >>> objective = rc.model_objective(model, torch.nn.functional.mse_loss, lambda k: (inputs, targets))
    >>> result = rc.unroll(objective, list(model.parameters()), rc.SGD(0.1), steps=5)
    >>> result.losses[-1] < result.losses[0]
    True
    """
    import higher

    functional = higher.patch.monkeypatch(model, copy_initial_weights=True, track_higher_grads=True)

    def objective(params: list[Tensor], k: int) -> Tensor:
        inputs, targets = batch_at(k)
        return loss_fn(functional(inputs, params=params), targets)

    return objective


def evaluate(optimizer: Optimizer, losses: Callable[[list[Tensor], int], Tensor], params: Sequence[Tensor], *,
             steps: int) -> tuple[Tensor, list[Tensor]]:
    """Run ``optimizer`` at its current values for ``steps`` steps from
    ``params`` (no meta-gradient: how a learned optimizer is tested on
    held-out tasks). ``losses(params, k)`` may return one loss or a tensor
    of per-task losses (a batch of independent tasks); the gradient is that
    of their sum. Returns ``(history, params)``: the losses before each step
    and after the last, detached, shape ``(steps + 1, *losses.shape)``, and
    the final parameters. The optimizer is moved to the parameters' device
    and dtype first. :func:`evaluate_torch` does the same for torch.optim.

    >>> history, final = rc.evaluate(rc.SGD(0.25), lambda params, k: (params[0] ** 2).sum(), [torch.ones(2)], steps=3)
    >>> history.tolist()
    [2.0, 0.5, 0.125, 0.03125]
    """
    _check_options(steps, "final", None, None)
    params = [p.detach() for p in params]
    if params:  # as the engines do: the optimizer's values follow the parameters
        place_next_to([optimizer], params)
    state, norm_state = optimizer.init(params), None
    hyper = _detach_tree(optimizer.hyper_values())
    history = []
    with torch.enable_grad():
        for step in range(steps + 1):
            params = [p.detach().requires_grad_() for p in params]
            values = losses(params, step)
            history.append(values.detach())
            if step == steps:
                break
            grads = gradients(values.sum(), params)
            with torch.no_grad():
                grads, norm_state = optimizer.normalized(grads, norm_state)
                params, state = optimizer.update(params, grads, state, hyper)
    return torch.stack(history), [p.detach() for p in params]


def evaluate_torch(make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
                   losses: Callable[[list[Tensor], int], Tensor], params: Sequence[Tensor], *,
                   steps: int) -> tuple[Tensor, list[Tensor]]:
    """:func:`evaluate` with a torch.optim optimizer, ``make_optimizer(params)``,
    built over copies of ``params`` (the reference a learned optimizer is
    compared with).

    >>> losses = lambda params, k: (params[0] ** 2).sum()
    >>> history, final = rc.evaluate_torch(lambda p: torch.optim.SGD(p, lr=0.25), losses, [torch.ones(2)], steps=3)
    >>> history.tolist()
    [2.0, 0.5, 0.125, 0.03125]
    """
    _check_options(steps, "final", None, None)
    params = [p.detach().clone().requires_grad_() for p in params]
    optimizer = make_optimizer(params)
    history = []
    with torch.enable_grad():
        for step in range(steps + 1):
            values = losses(params, step)
            history.append(values.detach())
            if step == steps:
                break
            optimizer.zero_grad()
            values.sum().backward()
            optimizer.step()
    return torch.stack(history), [p.detach() for p in params]


def gradients(loss: Tensor, params: Sequence[Tensor], **options) -> list[Tensor]:
    """d loss / d params by ``torch.autograd.grad(loss, params, **options)``,
    with zeros for parameters the loss does not reach."""
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, **options))
