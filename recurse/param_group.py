"""Param groups that show level 0's hyperparameters, as torch.optim's do.

Training loops read ``optimizer.param_groups[0]["lr"]`` to log it, and
learning-rate schedulers (``torch.optim.lr_scheduler``) write it. An
``rc.HyperOptimizer``'s groups hold only ``params``; the values live in the
rc optimizer at level 0, learned or fixed. A :class:`ParamGroup` reads them
from there when asked (no copy to refresh every step) and hands writes to
:meth:`recurse.Optimizer.set_values`, which validates them; ``"betas"`` is
``(beta1, beta2)`` where the optimizer has both, as torch.optim's Adam names
them. Every group shows the one level-0 optimizer, so writing one group's
value sets it for all.
"""

from __future__ import annotations

from typing import Any

from recurse.optim.base import Optimizer

_BETAS = ("beta1", "beta2")


class ParamGroup(dict):
    """A param group whose hyperparameter keys read and write ``optimizer``.

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1))
    >>> opt.param_groups[0]["lr"] = 0.05          # what a scheduler does
    >>> opt.param_groups[0]["lr"], opt.hyperparameters()["0.lr"]
    (0.05, 0.05)
    """

    def __init__(self, group: dict[str, Any], optimizer: Optimizer) -> None:
        super().__init__(group)
        self.optimizer = optimizer

    @staticmethod
    def defaults_of(optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer's starting values under the names param groups show
        them by: what torch.optim keeps as ``defaults`` (schedulers that
        cycle momentum look there for ``"momentum"`` or ``"betas"``)."""
        defaults = dict(optimizer.initial_values)
        if all(name in defaults for name in _BETAS):
            defaults["betas"] = tuple(defaults[name] for name in _BETAS)
        return defaults

    def _names(self, key: str) -> tuple[str, ...]:
        """The optimizer's hyperparameters behind ``key`` (none: a plain key)."""
        values = self.optimizer.initial_values
        if key == "betas" and all(name in values for name in _BETAS):
            return _BETAS
        return (key,) if key in values else ()

    def __missing__(self, key: str) -> Any:
        names = self._names(key)
        if not names:
            shown = sorted(self.optimizer.initial_values)
            raise KeyError(f"{key!r}: not in this param group, and level 0 ({self.optimizer!r}) has no "
                           f"hyperparameter by that name (it has {shown})")
        values = self.optimizer.current_values()
        return tuple(values[name] for name in names) if key == "betas" else values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        names = self._names(key)
        if not names:
            super().__setitem__(key, value)
        elif key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"rc.HyperOptimizer: param group 'betas' must be a pair (beta1, beta2), got {value!r}")
            self.optimizer.set_values(dict(zip(names, value)))
        else:
            self.optimizer.set_values({key: value})

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and bool(self._names(key)))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __reduce__(self):
        return ParamGroup, (dict(self), self.optimizer)
