"""One optimizer per parameter group, as one optimizer.

"Learning to learn" needed two LSTMs on CIFAR (one for the convolutional
layers, one for the fully connected ones). ``PerGroup`` gives each group of
parameters its own optimizer and presents them as a single ``rc.Optimizer``,
whose meta-parameters are the concatenation of the groups' ``raw`` vectors,
so ``rc.MetaTrainer``, ``rc.unroll`` and the online towers learn all of them
at once. ``rc.graph.per_group(graph)`` builds one from an optimization graph.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import Tensor

from recurse.optim.base import Optimizer, SavedProduct, raw_dtype_for


class PerGroup(Optimizer):
    """``PerGroup({"weights": (rc.LSTMOptimizer(seed=0), [0, 2]), "biases": (rc.LSTMOptimizer(seed=1), [1, 3])})``

    Each entry is ``name: (optimizer, indices)``: that optimizer steps the
    parameters at ``indices`` of the list the PerGroup is given, in the
    order of that list; every index must belong to exactly one group. Hyperparameters are reported as
    ``"<group>.<name>"``. The groups' optimizers must not have ``hyper=`` or
    ``normalize=`` of their own: give them to the PerGroup, which learns
    them all and normalises the whole gradient.

    >>> weight, bias = model.parameters()
    >>> per_group = rc.PerGroup({"weights": (rc.SGD(0.1), [0]), "biases": (rc.SGD(0.01), [1])}, hyper=rc.SGD(1e-3))
    >>> opt = rc.HyperOptimizer([weight, bias], per_group)
    >>> sorted(name for name in opt.hyperparameters() if name.endswith("lr"))
    ['0.biases.lr', '0.weights.lr', '1.lr']
    """

    def __init__(self, groups: Mapping[str, tuple[Optimizer, Sequence[int]]], **options) -> None:
        owner = "rc.PerGroup"
        if not groups:
            raise ValueError(f"{owner}: needs at least one group")
        seen: dict[int, str] = {}
        for name, entry in groups.items():
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Optimizer)):
                raise TypeError(f"{owner}: group {name!r} must be (rc.Optimizer, indices), got {entry!r}")
            optimizer, indices = entry
            if optimizer.hyper is not None:
                raise ValueError(f"{owner}: group {name!r}'s optimizer {optimizer!r} has hyper= of its own; "
                                 "give hyper= to the PerGroup instead")
            if optimizer.normalizer is not None:
                raise ValueError(f"{owner}: group {name!r}'s optimizer {optimizer!r} has normalize= of its own, "
                                 "which a group cannot apply; give normalize= to the PerGroup instead (it "
                                 "normalises the gradient of every group together)")
            for index in indices:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise TypeError(f"{owner}: group {name!r}'s indices must be integers (positions in the list of "
                                    f"parameters the tower steps), got {type(index).__name__}")
                if index in seen:
                    raise ValueError(f"{owner}: parameter {index} is in groups {seen[index]!r} and {name!r}; "
                                     "each parameter is stepped by one optimizer")
                seen[index] = name
        if len({optimizer.maximizes for optimizer, _ in groups.values()}) > 1:
            raise ValueError(f"{owner}: some groups have maximize=True and others not; one tower minimises or "
                             "maximises one objective")
        if sorted(seen) != list(range(len(seen))):
            raise ValueError(f"{owner}: the indices must cover 0 .. n-1 exactly once, got {sorted(seen)}")
        super().__init__(learn=(), **options)
        # (each group's indices ascending: its rule sees its parameters in the order of the list, the order
        # in which a view of some of them, for_positions, and a join of their states, joined_state, hold them)
        self.groups = {name: (optimizer, sorted(indices)) for name, (optimizer, indices) in groups.items()}
        self.learnable = tuple(f"{name}.{learned}" for name, (optimizer, _) in self.groups.items()
                               for learned in optimizer.learnable)
        self.learn_given = any(optimizer.learn_given for optimizer, _ in self.groups.values())
        self.raw = torch.cat([optimizer.raw.reshape(-1) for optimizer, _ in self.groups.values()])

    @property
    def maximizes(self) -> bool:
        return any(optimizer.maximizes for optimizer, _ in self.groups.values())

    def flags(self) -> dict[str, bool]:
        """Each group's flags, as ``{"<group>.<flag>": value}``."""
        return {f"{name}.{key}": value for name, (optimizer, _) in self.groups.items()
                for key, value in optimizer.flags().items()}

    def _pieces(self, raw: Tensor | None) -> list[Tensor | None]:
        """``raw`` split into the groups' raw vectors (None stays None)."""
        if raw is None:
            return [None] * len(self.groups)
        return list(raw.split([optimizer.raw.numel() for optimizer, _ in self.groups.values()]))

    def init(self, params):
        return {name: optimizer.init([params[i] for i in indices])
                for name, (optimizer, indices) in self.groups.items()}

    # --- stepping some of the parameters (recurse.partial) -------------------

    def skips_parameters(self) -> bool:
        return all(optimizer.skips_parameters() for optimizer, _ in self.groups.values())

    def for_positions(self, positions):
        """This PerGroup over the parameters at ``positions`` (ascending) alone:
        the same rules (so the same values), each group's indices mapped onto
        the ranks of its parameters among ``positions`` (a group may be empty)."""
        rank = {position: index for index, position in enumerate(positions)}
        view = copy.copy(self)
        view.groups = {name: (optimizer, [rank[i] for i in indices if i in rank])
                       for name, (optimizer, indices) in self.groups.items()}
        return view

    def state_at(self, state, indices):
        """Each group's share of the parameters at ``indices`` (ranks in this PerGroup's list)."""
        wanted = set(indices)
        return {name: optimizer.state_at(state[name], [local for local, i in enumerate(group) if i in wanted])
                for name, (optimizer, group) in self.groups.items()}

    def joined_state(self, parts):
        """Each group's :meth:`Optimizer.joined_state` over its parameters among the parts' positions."""
        joined = {}
        for name, (optimizer, indices) in self.groups.items():
            members = set(indices)
            own = [(sorted(members.intersection(positions)), state[name]) for positions, state in parts]
            joined[name] = optimizer.joined_state([part for part in own if part[0]] or own[:1])
        return joined

    def update_depends_on_params(self):
        return any(optimizer.update_depends_on_params() for optimizer, _ in self.groups.values())

    @property
    def needs_closure(self) -> bool:
        return any(optimizer.needs_closure for optimizer, _ in self.groups.values())

    def update(self, params, grads, state, hyper, *, closure=None):
        """Each group's update; ``closure`` (the step's, where one was given)
        reaches the groups whose rule evaluates the loss again (``needs_closure``:
        each calls it for its own parameters)."""
        new_params: list[Tensor | None] = [None] * len(params)
        new_state = {}
        for name, (optimizer, indices) in self.groups.items():
            stepped, new_state[name] = optimizer.update([params[i] for i in indices], [grads[i] for i in indices],
                                                        state[name], hyper[name], **_closure_for(optimizer, closure))
            for index, value in zip(indices, stepped):
                new_params[index] = value
        return new_params, new_state

    # --- the groups' values, side by side ---------------------------------

    def hyper_values(self, raw: Tensor | None = None):
        """``{group: that group's hyper_values}``; learned (or at ``raw``) when the PerGroup is."""
        if raw is None and self.is_learned:
            raw = self.raw
        return {name: optimizer.hyper_values(piece)
                for (name, (optimizer, _)), piece in zip(self.groups.items(), self._pieces(raw))}

    def values_of(self, name: str) -> dict[str, float]:
        """Group ``name``'s optimizer's :meth:`current_values`, learned (from
        its share of ``raw``) where the PerGroup is."""
        pieces = self._pieces(self.raw if self.is_learned else None)
        index = list(self.groups).index(name)
        return self.groups[name][0].current_values(pieces[index])

    def provides_closed_form(self) -> bool:
        return all(optimizer.provides_closed_form() for optimizer, _ in self.groups.values())

    def update_with_vjp(self, params, grads, state, values, *, closure=None):
        """Each group's closed form; the product is the groups' raw
        gradients side by side (in ``raw``'s order), or None where a group
        has none. Where every group's is a :class:`SavedProduct`, so is the
        PerGroup's (what the groups saved, and their indices): the engine then
        keeps no inputs, and a checkpoint rebuilds it."""
        new_params: list[Tensor | None] = [None] * len(params)
        new_state, products = {}, []
        for name, (optimizer, indices) in self.groups.items():
            optimizer.hypergradient_on_host = self.hypergradient_on_host
            result = optimizer.update_with_vjp([params[i] for i in indices], [grads[i] for i in indices],
                                               state[name], values[name], **_closure_for(optimizer, closure))
            if result is None:
                return None
            stepped, new_state[name], product = result
            products.append((product, indices))
            for index, value in zip(indices, stepped):
                new_params[index] = value
        if all(isinstance(product, SavedProduct) for product, _ in products):
            saved = {"groups": [product.saved for product, _ in products],
                     "indices": [indices for _, indices in products]}
            return new_params, new_state, SavedProduct(saved, self.saved_vjp,
                                                       any(product.holds_gradient for product, _ in products))

        def vjp(incoming):
            return self._side_by_side([product([incoming[i] for i in indices]) if indices else None
                                       for product, indices in products], incoming)

        return new_params, new_state, vjp

    def saved_vjp(self, saved, incoming):
        """The groups' products from what each saved, side by side."""
        gradients = []
        for (optimizer, _), group_saved, indices in zip(self.groups.values(), saved["groups"], saved["indices"]):
            optimizer.hypergradient_on_host = self.hypergradient_on_host
            gradients.append(optimizer.saved_vjp(group_saved, [incoming[i] for i in indices]) if indices else None)
        return self._side_by_side(gradients, incoming)

    def _side_by_side(self, gradients, incoming):
        """The groups' raw gradients as one (floats where the level above
        steps in floats); None, for a group with no parameters here (in a view
        of some of them, :meth:`for_positions`), is a zero row each."""
        sizes = [optimizer.raw.numel() for optimizer, _ in self.groups.values()]
        if self.hypergradient_on_host:
            return [value for gradient, size in zip(gradients, sizes)
                    for value in ([0.0] * size if gradient is None
                                  else gradient if isinstance(gradient, list) else gradient.tolist())]
        return torch.cat([self.as_raw_tensor(incoming[0].new_zeros(size) if gradient is None else gradient).reshape(-1)
                          for gradient, size in zip(gradients, sizes)])

    def _float_pieces(self, raw: list[float]) -> list[list[float]]:
        pieces, start = [], 0
        for optimizer, _ in self.groups.values():
            size = optimizer.raw.numel()
            pieces.append(raw[start:start + size])
            start += size
        return pieces

    def values_from_raw(self, raw):
        """``{group: that group's values_from_raw}`` from the PerGroup's raw floats."""
        return {name: optimizer.values_from_raw(piece)
                for (name, (optimizer, _)), piece in zip(self.groups.items(), self._float_pieces(list(raw)))}

    def within_constraints(self, values) -> bool:
        return all(optimizer.within_constraints(values[name]) for name, (optimizer, _) in self.groups.items())

    def exact_at(self, scales) -> bool:
        return all(optimizer.exact_at((scale,)) for (optimizer, _), scale in zip(self.groups.values(), scales))

    def lr_scales(self) -> tuple[float, ...]:
        return tuple(optimizer.lr_scale for optimizer, _ in self.groups.values())

    def scaled(self, values, scales):
        """Each group's values through its own :meth:`Optimizer.scaled`, at its factor in ``scales``."""
        if all(scale == 1.0 for scale in scales):
            return values
        return {name: optimizer.scaled(values[name], (scale,))
                for (name, (optimizer, _)), scale in zip(self.groups.items(), scales)}

    def assign_raw(self, raw: Tensor) -> None:
        self.raw = raw.detach()
        for (optimizer, _), piece in zip(self.groups.values(), self._pieces(self.raw)):
            optimizer.assign_raw(piece)

    def current_values(self, raw: Tensor | None = None) -> dict[str, float]:
        if raw is None and self.is_learned:
            raw = self.raw
        return {f"{name}.{key}": value
                for (name, (optimizer, _)), piece in zip(self.groups.items(), self._pieces(raw))
                for key, value in optimizer.current_values(piece).items()}

    def learned_lr_entries(self):
        entries, offset = [], 0
        for optimizer, _ in self.groups.values():
            entries += [(offset + index, constraint) for index, constraint in optimizer.learned_lr_entries()]
            offset += optimizer.raw.numel()
        return entries

    def raw_labels(self) -> list[str]:
        return [f"{name}.{label}" for name, (optimizer, _) in self.groups.items() for label in optimizer.raw_labels()]

    def tracked_names(self) -> tuple[str, ...]:
        return tuple(f"{name}.{key}" for name, (optimizer, _) in self.groups.items()
                     for key in optimizer.tracked_names())

    def tracked_values(self, raw: Tensor | None = None) -> Tensor:
        pieces = self._pieces(self.raw if raw is None else raw)
        return torch.cat([optimizer.tracked_values(piece) for (optimizer, _), piece in zip(self.groups.values(), pieces)
                          if optimizer.tracked_names()])

    def hypergradient_values(self, raw: Tensor, gradient: Tensor) -> dict[str, float]:
        return {f"{name}.{key}": value
                for (name, (optimizer, _)), piece, grad in zip(self.groups.items(), self._pieces(raw),
                                                               self._pieces(gradient))
                for key, value in optimizer.hypergradient_values(piece, grad).items()}

    def check_fits(self, dtypes, *, fixed_only=False) -> None:
        """Each group's :meth:`Optimizer.check_fits` (a PerGroup holds no values of its own)."""
        for optimizer, _ in self.groups.values():
            optimizer.check_fits(dtypes, fixed_only=fixed_only)

    def to(self, device, dtype) -> PerGroup:
        for optimizer, _ in self.groups.values():
            optimizer.to(device, dtype)
        self.raw = self.raw.to(device=device, dtype=raw_dtype_for(dtype))
        return self

    def __repr__(self) -> str:
        groups = ", ".join(f"{name!r}: {optimizer!r}" for name, (optimizer, _) in self.groups.items())
        hyper = "" if self.hyper is None else f", hyper={self.hyper!r}"
        return f"rc.PerGroup({{{groups}}}{hyper})"


def _closure_for(optimizer: Optimizer, closure) -> dict:
    """The keyword a group's rule takes the step's closure by: only a rule
    that evaluates the loss again gets it (the others take none)."""
    return {"closure": closure} if optimizer.needs_closure and closure is not None else {}
