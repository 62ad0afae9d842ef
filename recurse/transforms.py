"""Transforms a level applies to the gradient it receives.

Gradients at different levels of a tower live on very different scales
(the task's gradient vs. a hypergradient that is a dot product over every
model coordinate), so a hyper-learning-rate that suits one task can be
useless or explosive on another. A level can normalise its incoming
gradient first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from recurse.optim import _ops


class Normalizer:
    """Protocol: ``state = init(grads)``; ``grads, state = apply(grads, state)``.

    Pure and out-of-place, like the optimizers.

    >>> class Sign(rc.transforms.Normalizer):         # keep only the sign of each coordinate
    ...     def init(self, grads):
    ...         return {}
    ...     def apply(self, grads, state):
    ...         return [g.sign() for g in grads], state
    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3, normalize=Sign())))
    """

    # True where apply also runs on host vectors (lists of Python floats, see
    # recurse.optim._ops); declared by each class itself, not inherited.
    host_floats = False

    def init(self, grads: Sequence[Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, grads: Sequence[Tensor], state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        raise NotImplementedError


class RunningRMS(Normalizer):
    """Divide the level's whole gradient by its running root-mean-square.

        m_t = decay * m_{t-1} + (1 - decay) * mean(g_t ** 2)   (over all coordinates)
        g_hat_t = g_t / sqrt(m_t / (1 - decay ** t) + eps ** 2)

    One scalar per level, so the direction of the gradient is kept (SGD stays
    SGD) while its scale becomes ~1: a hyper-learning-rate then means "step
    size in units of a typical gradient", the same on any task.

    >>> rms = rc.transforms.RunningRMS(decay=0.9)
    >>> grads, state = rms.apply([torch.tensor([3.0, 4.0])], rms.init([torch.zeros(2)]))
    >>> grads[0].tolist()                                 # divided by sqrt(mean(g^2)) = 3.5355
    [0.8485..., 1.1313...]
    """

    host_floats = True

    def __init__(self, decay: float = 0.99, eps: float = 1e-12) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"RunningRMS: decay must be in [0, 1), got {decay!r}")
        if not eps > 0.0:
            raise ValueError(f"RunningRMS: eps must be > 0, got {eps!r}")
        self.decay = decay
        self.eps = eps

    def init(self, grads: Sequence[Tensor]) -> dict[str, Any]:
        return {"step": 0, "mean_square": 0.0}

    def apply(self, grads: Sequence[Tensor], state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        grads = list(grads)
        step = state["step"] + 1
        count = max(_ops.size(grads), 1)
        square_sum = _ops.dot(grads, grads)
        previous = state["mean_square"]
        if not (isinstance(square_sum, Tensor) and square_sum.requires_grad):
            # Not differentiated through (as in an unroll): the running mean is
            # one number, kept as a host float, as the engine keeps
            # hyperparameter values, instead of paying a tensor operation's
            # dispatch for each scalar step.
            square_sum, previous = float(square_sum), float(previous)
        mean_square = self.decay * previous + (1.0 - self.decay) * square_sum / count
        denominator = mean_square / (1.0 - self.decay**step) + self.eps**2
        if isinstance(denominator, Tensor):
            scale = torch.rsqrt(denominator)
        else:
            scale = 1.0 / math.sqrt(denominator) if denominator > 0.0 else math.inf  # (NaN stays NaN)
        return _ops.scale_all(grads, scale), {"step": step, "mean_square": mean_square}

    def __repr__(self) -> str:
        return f"RunningRMS(decay={self.decay}, eps={self.eps})"


class Clip(Normalizer):
    """Clip the level's whole gradient to norm at most ``max_norm``:

        g_hat = g * min(1, max_norm / ||g||)     (||.|| over all coordinates)

    as ``torch.nn.utils.clip_grad_norm_`` does, out of place and stateless.

    >>> grads, _ = rc.transforms.Clip(1.0).apply([torch.tensor([3.0, 4.0])], {})
    >>> grads[0].tolist()
    [0.6000000238418579, 0.800000011920929]
    """

    def __init__(self, max_norm: float) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"Clip: max_norm must be a number > 0, got {max_norm!r}")
        self.max_norm = float(max_norm)

    def init(self, grads: Sequence[Tensor]) -> dict[str, Any]:
        return {}

    def apply(self, grads: Sequence[Tensor], state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        norm = _ops.dot(grads, grads).sqrt()
        scale = torch.clamp(self.max_norm / (norm + 1e-30), max=1.0)
        return [g * scale for g in grads], state

    def __repr__(self) -> str:
        return f"Clip(max_norm={self.max_norm})"


class L2Penalty:
    """A stability penalty on meta-parameters, added to the meta-loss:

        weight * ||raw - center||^2

    ``around="zero"``: center 0, an L2 penalty on a learned optimizer's
    weights. ``around="start"``: center = the values at the start of
    training, a penalty on the drift of hyperparameters from where the user
    put them. (The meta-parameters are the unconstrained ``raw`` values: log
    lr, logit momentum, LSTM weights.)

    >>> penalty = rc.transforms.L2Penalty(0.1, around="start")
    >>> penalty(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])).item()   # 0.1 * ||raw - start||^2
    0.4000000059604645
    """

    def __init__(self, weight: float, *, around: str = "zero") -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 \
                or not math.isfinite(weight):
            raise ValueError(f"L2Penalty: weight must be a finite number >= 0, got {weight!r}")
        if around not in ("zero", "start"):
            raise ValueError(f"L2Penalty: around must be 'zero' or 'start', got {around!r}")
        self.weight, self.around = float(weight), around

    def __call__(self, raw: Tensor, start: Tensor) -> Tensor:
        center = start.detach() if self.around == "start" else torch.zeros_like(raw)
        return self.weight * (raw - center).square().sum()

    def __repr__(self) -> str:
        return f"L2Penalty({self.weight:g}, around={self.around!r})"


def log_sign(gradient: Tensor, p: float = 10.0) -> Tensor:
    """L2L's preprocessing of each coordinate into two inputs of similar scale:

        (log(|g|) / p, sign(g))   if |g| >= exp(-p)
        (-1, exp(p) * g)          otherwise

    ``gradient`` of shape (N,) gives (N, 2). Differentiable (the log is only
    taken where |g| >= exp(-p), so a zero gradient gives finite derivatives).

    >>> rc.transforms.log_sign(torch.tensor([1.0, -1e-6, 0.0]))
    tensor([[ 0.0000,  1.0000],
            [-1.0000, -0.0220],
            [-1.0000,  0.0000]])
    """
    threshold = math.exp(-p)
    large = gradient.abs() >= threshold
    magnitude = torch.where(large, gradient.abs(), torch.ones_like(gradient))
    first = torch.where(large, torch.log(magnitude) / p, -torch.ones_like(gradient))
    second = torch.where(large, torch.sign(gradient), gradient / threshold)
    return torch.stack([first, second], dim=1)


def make_normalizer(normalize: str | Normalizer | None) -> Normalizer | None:
    """None, ``"rms"`` or a Normalizer instance.

    >>> rc.transforms.make_normalizer("rms")
    RunningRMS(decay=0.99, eps=1e-12)
    """
    if normalize is None or isinstance(normalize, Normalizer):
        return normalize
    if normalize == "rms":
        return RunningRMS()
    raise ValueError(f"normalize must be None, 'rms' or a recurse.transforms.Normalizer, got {normalize!r}")
