"""Param groups that hold level 0's values for their parameters, as torch.optim's do.

Training loops read ``optimizer.param_groups[i]["lr"]`` to log it, and
learning-rate schedulers (``torch.optim.lr_scheduler``) write it. Each group
of an ``rc.HyperOptimizer`` is stepped by its own copy of the level-0 rule
(one copy for a single group), started from the group's own options as
torch.optim's groups are. A :class:`ParamGroup` shows that rule's knobs by
name (Adam's ``"betas"`` as the pair ``(beta1, beta2)``, as torch.optim's
Adam names them), and what a write does depends on the knob:

- **a fixed knob**: the entry is the value the next step uses, read from
  the rule and written to it through :meth:`recurse.Optimizer.set_values`
  (validated; an lr of 0 is accepted and takes no step). At depth 0 every
  scheduler therefore runs exactly as on torch.optim.
- **a learned lr**: the entry is the *schedule*. The lr a step uses is the
  learned lr times ``group["lr"] / start``, where ``start`` is the lr the
  group started from: a schedule scales what the tower learned, never
  overwrites it, and a constant schedule changes nothing, to the bit.
  ``hyperparameters()`` shows the learned value, and
  ``rc.HyperOptimizer.group_lrs()`` the product each group steps with.
- **another learned knob** (momentum, Adam's betas): the tower owns it. A
  write (OneCycleLR and CyclicLR cycle momentum or betas) is not used, and
  a warning says so once per group; reading shows the learned value.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

from torch import Tensor

from recurse.optim.base import Optimizer, described

_BETAS = ("beta1", "beta2")


class ParamGroup(dict):
    """A param group whose hyperparameter keys read and write ``rule``, the
    level-0 rule that steps its parameters (see the module docstring).

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1))
    >>> opt.param_groups[0]["lr"] = 0.05          # what a scheduler does
    >>> opt.param_groups[0]["lr"], opt.hyperparameters()["0.lr"]
    (0.05, 0.05)
    """

    def __init__(self, group: dict[str, Any], rule: Optimizer, index: int, *, level_zero: Optimizer) -> None:
        super().__init__({key: value for key, value in group.items() if not self._knobs_of(rule, key)})
        self.rule, self.index = rule, index
        self.level_zero = level_zero  # (the rule itself, or the rc.PerGroup of several groups' rules)
        self.start_lr = rule.initial_values.get("lr")
        self.ignored_writes: set[str] = set()  # (learned knobs other than lr a write was refused for, warned once)
        if self._learns_lr:
            super().__setitem__("lr", self.start_lr)

    @staticmethod
    def defaults_of(optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer's starting values under the names param groups show
        them by: what torch.optim keeps as ``defaults`` (schedulers that
        cycle momentum look there for ``"momentum"`` or ``"betas"``)."""
        defaults = dict(optimizer.initial_values)
        if all(name in defaults for name in _BETAS):
            defaults["betas"] = tuple(defaults[name] for name in _BETAS)
        return defaults

    @staticmethod
    def _knobs_of(rule: Optimizer, key: str) -> tuple[str, ...]:
        """The rule's hyperparameters behind ``key`` (none: a plain key)."""
        values = rule.initial_values
        if key == "betas" and all(name in values for name in _BETAS):
            return _BETAS
        return (key,) if key in values else ()

    def current_values(self) -> dict[str, float]:
        """The rule's values now, learned ones included (several groups'
        learned values live in level 0's rc.PerGroup)."""
        if self.level_zero is self.rule:
            return self.rule.current_values()
        return self.level_zero.values_of(f"group{self.index}")

    @property
    def learned(self) -> bool:
        """Whether a level above learns the rule's learnable knobs."""
        return self.level_zero.is_learned

    @property
    def _learns_lr(self) -> bool:
        return self.learned and "lr" in self.rule.learnable

    def __missing__(self, key: str) -> Any:
        names = self._knobs_of(self.rule, key)
        if not names:
            shown = sorted(self.rule.initial_values)
            raise KeyError(f"{key!r}: not in this param group, and level 0 ({self.rule!r}) has no "
                           f"hyperparameter by that name (it has {shown})")
        values = self.current_values()
        return tuple(values[name] for name in names) if key == "betas" else values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        names = self._knobs_of(self.rule, key)
        if not names:
            super().__setitem__(key, value)
            return
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"rc.HyperOptimizer: param group 'betas' must be a pair (beta1, beta2), got {value!r}")
            self.write(dict(zip(names, value)))
        else:
            self.write({key: value})

    def write(self, values: dict[str, Any]) -> None:
        """Take ``values`` (the rule's names), all validated before any is set."""
        try:
            checked = self.rule.checked_values(values)
        except (TypeError, ValueError) as error:
            raise type(error)(f"param group {self.index}: {error}") from None
        schedule = checked.get("lr") if self._learns_lr else None
        fixed = {name: value for name, value in checked.items() if not (self.learned and name in self.rule.learnable)}
        tower_owned = set(checked) - set(fixed) - {"lr"}
        now = self.current_values() if tower_owned else {}
        # (a write of what it reads, beta2 beside a cycled beta1, is no change to warn of)
        ignored = sorted(name for name in tower_owned if checked[name] != now[name])
        self.rule.set_values(fixed)
        if schedule is not None:
            super().__setitem__("lr", schedule)
            self.rule.lr_scale = schedule / self.start_lr
        for name in ignored:
            if name not in self.ignored_writes:
                self.ignored_writes.add(name)
                warnings.warn(f"rc.HyperOptimizer: param group {self.index}'s {name} is learned by the tower, so a "
                              f"value written to it (a scheduler cycling momentum or betas) is not used; only a "
                              "learned lr follows a schedule, as a factor", stacklevel=3)

    def entries(self) -> dict[str, Any]:
        """What a checkpoint keeps of this group: its plain keys and the
        values of its fixed knobs (a learned lr's schedule is a plain key)."""
        knobs = {name: value for name, value in self.rule.initial_values.items()
                 if not (self.learned and name in self.rule.learnable)}
        return {**{key: value for key, value in self.items() if key != "params"}, **knobs}

    def _knob_entries(self, entries: dict[str, Any]) -> dict[str, Any]:
        """``entries``' knobs by the rule's names (``"betas"`` as the pair's two)."""
        values = {}
        for key, value in entries.items():
            names = self._knobs_of(self.rule, key)
            values.update(zip(names, value) if key == "betas" else ((key, value),) if names else ())
        return values

    def check(self, entries: dict[str, Any]) -> None:
        """Raise, naming the value, where :meth:`restore` of ``entries`` would."""
        try:
            self.rule.checked_values(self._knob_entries(entries))
        except (TypeError, ValueError) as error:
            raise type(error)(f"param group {self.index}: {error}") from None

    def restore(self, entries: dict[str, Any], start_lr: float | None) -> None:
        """Take back what :meth:`entries` gave (from a checkpoint), and the lr
        the saved group started from (a learned lr's schedule is a factor on it)."""
        self.start_lr = start_lr
        for key, value in entries.items():
            if not self._knobs_of(self.rule, key):
                super().__setitem__(key, value)
        self.write(self._knob_entries(entries))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and bool(self._knobs_of(self.rule, key)))

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
        return _restored, (dict(self), dict(self.__dict__))


def _restored(entries: dict[str, Any], attributes: dict[str, Any]) -> ParamGroup:
    """A ParamGroup back from ``__reduce__`` (a copy or an unpickling)."""
    group = ParamGroup.__new__(ParamGroup)
    dict.update(group, entries)
    group.__dict__.update(attributes)
    return group


def per_tensor(params: Iterable[Any]) -> list[dict[str, Any]]:
    """One param group per parameter tensor, so that each tensor learns its
    own values of level 0's learned knobs (``"group<i>.lr"`` among
    ``hyperparameters()``, ``i`` the tensor's place) and a scheduler may
    give each its own factor, as for any param groups.

    ``params`` as torch.optim takes them: tensors, ``named_parameters()``
    (each group keeps its tensor's name in ``param_names``, as torch.optim
    keeps names), or param groups (each split into one group per tensor,
    every one with the group's other entries).

    >>> opt = rc.HyperOptimizer(rc.per_tensor(model.parameters()))
    >>> loss.backward(); opt.step(); opt.zero_grad()
    >>> len(opt.param_groups), [name for name in opt.learned_hyperparameters() if name.endswith(".lr")]
    (2, ['0.group0.lr', '0.group1.lr'])
    """
    if isinstance(params, Tensor):
        raise TypeError("rc.per_tensor: params must be an iterable of tensors, got a single tensor")
    entries = list(params)
    if not entries:
        raise ValueError("rc.per_tensor: got an empty parameter list")
    dicts = [isinstance(entry, dict) for entry in entries]
    for index, entry in enumerate(entries):
        if any(dicts) and not (dicts[index] and "params" in entry):
            raise TypeError(f"rc.per_tensor: params must be tensors, (name, tensor) pairs or param groups (dicts "
                            f"with 'params'), got {described(entry)} at position {index} (not a mixture of them)")
    groups = entries if any(dicts) else [{"params": entries}]
    split = []
    for group in groups:
        members = group["params"]
        members = [members] if isinstance(members, Tensor) else list(members)
        options = {key: value for key, value in group.items() if key not in ("params", "param_names")}
        names = group.get("param_names")
        split.extend({"params": [member], **options, **({} if names is None else {"param_names": [names[place]]})}
                     for place, member in enumerate(members))
    return split
