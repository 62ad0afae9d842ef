"""Transforms a level applies to the gradient it receives.

Gradients at different levels of a tower live on very different scales
(the task's gradient vs. a hypergradient that is a dot product over every
model coordinate), so a hyper-learning-rate that suits one task can be
useless or explosive on another. A level can normalise its incoming
gradient first.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


class Normalizer:
    """Protocol: ``state = init(grads)``; ``grads, state = apply(grads, state)``.

    Pure and out-of-place, like the optimizers.
    """

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
    """

    def __init__(self, decay: float = 0.99, eps: float = 1e-12) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"RunningRMS: decay must be in [0, 1), got {decay!r}")
        if not eps > 0.0:
            raise ValueError(f"RunningRMS: eps must be > 0, got {eps!r}")
        self.decay = decay
        self.eps = eps

    def init(self, grads: Sequence[Tensor]) -> dict[str, Any]:
        return {"step": 0, "mean_square": torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)}

    def apply(self, grads: Sequence[Tensor], state: dict[str, Any]) -> tuple[list[Tensor], dict[str, Any]]:
        step = state["step"] + 1
        count = sum(g.numel() for g in grads)
        square_sum = torch.stack([g.square().sum() for g in grads]).sum()
        mean_square = self.decay * state["mean_square"] + (1.0 - self.decay) * square_sum / max(count, 1)
        scale = torch.rsqrt(mean_square / (1.0 - self.decay**step) + self.eps**2)
        return [g * scale for g in grads], {"step": step, "mean_square": mean_square}

    def __repr__(self) -> str:
        return f"RunningRMS(decay={self.decay}, eps={self.eps})"


def make_normalizer(normalize: str | Normalizer | None) -> Normalizer | None:
    """None, ``"rms"`` or a Normalizer instance."""
    if normalize is None or isinstance(normalize, Normalizer):
        return normalize
    if normalize == "rms":
        return RunningRMS()
    raise ValueError(f"normalize must be None, 'rms' or a recurse.transforms.Normalizer, got {normalize!r}")
