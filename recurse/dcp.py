"""An rc.HyperOptimizer's state through torch.distributed.checkpoint (DCP).

    import torch.distributed.checkpoint as dcp
    dcp.save(model.state_dict(), checkpoint_id=path / "model")
    rc.distributed.save_optimizer(opt, path / "optimizer")
    ...                                                  # fresh processes, same script
    rc.distributed.load_optimizer(opt, path / "optimizer")

DCP loads into a state dict that already has the checkpoint's structure,
and a fresh optimizer has none yet (its state appears with the first step;
torch.optim's helpers take a step with zero gradients to make one). So the
checkpoint holds two things: the skeleton, the optimizer's state dict with
every tensor replaced by a named slot (one JSON string per rank), and the
tensors. :func:`load_optimizer` reads the skeleton
first, allocates each slot, lets DCP fill them, and hands the result to
``load_state_dict``.

Level 0's per-parameter tensors (a list that holds, in order, one tensor
shaped like each parameter's shard: Adam's moments, the saved product, the
horizon's tangents) are saved whole: where the parameters are FSDP2 shards
(see :mod:`recurse.sharding`), as DTensors sharded as their parameters, so
that each rank writes its shards and DCP reshards them on load. Such a
checkpoint loads on any number of ranks, sharded or not. Where the
parameters are sharded, level 0's other tensors (its state under several
param groups, or a rule whose state is not one tensor per parameter) are
saved per rank, and then load only on as many sharded ranks (refused
otherwise, on every rank alike). The levels above, identical on every
rank, are saved once.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

SHARD, RANK_LOCAL, SHARED = "shard", "rank", "shared"
# Entries of level 0 that are the same on every rank: its learned values (wherever a record keeps them) and,
# for a tied level, what it does to itself.
_LEVEL_WIDE = {"raw", "self_state", "self_norm_state", "last_self_update"}


def save_optimizer(optimizer, checkpoint_id) -> None:
    """Save ``optimizer``'s state (an rc.HyperOptimizer's) to ``checkpoint_id`` through DCP.

    >>> import tempfile
    >>> opt = rc.HyperOptimizer(model.parameters())
    >>> loss.backward(); opt.step()
    >>> path = tempfile.mkdtemp()
    >>> rc.distributed.save_optimizer(opt, path)        # (one process: DCP needs no process group)
    """
    import torch.distributed.checkpoint as dcp

    layout = _layout(optimizer)
    skeleton, tensors = _split(optimizer.state_dict(), layout)
    dcp.save({f"skeleton-rank{layout.rank}": json.dumps(skeleton), "tensors": tensors}, checkpoint_id=checkpoint_id)


def load_optimizer(optimizer, checkpoint_id) -> None:
    """Load into ``optimizer`` what :func:`save_optimizer` saved, on the same
    ranks (level 0's shards may also load on another number of ranks). The
    optimizer may be fresh: it needs no step first.

    >>> import tempfile
    >>> opt, path = rc.HyperOptimizer(model.parameters()), tempfile.mkdtemp()
    >>> loss.backward(); opt.step()
    >>> rc.distributed.save_optimizer(opt, path)
    >>> fresh = rc.HyperOptimizer(model.parameters())
    >>> rc.distributed.load_optimizer(fresh, path)
    >>> fresh.state_dict()["step_count"], fresh.hyperparameters() == opt.hyperparameters()
    (1, True)
    """
    import torch.distributed.checkpoint as dcp

    # (Every rank takes the same collectives in the same order: each decision below reads rank 0's skeleton.)
    layout = _layout(optimizer)
    skeleton = _skeleton(checkpoint_id, 0)
    per_rank = sorted({name for name, slot in skeleton["slots"].items() if slot["kind"] == RANK_LOCAL})
    if per_rank:
        saved, here = _ranks(skeleton["world"], skeleton["sharded"]), _ranks(layout.world, layout.sharded)
        if saved != here:
            raise ValueError(f"rc.distributed.load_optimizer: {checkpoint_id} was saved on {saved}, and level 0's "
                             f"state holds per-rank tensors ({len(per_rank)}: several param groups, or a rule whose "
                             f"state is not one tensor per parameter); load it on {saved}, not {here}")
        skeleton = _skeleton(checkpoint_id, layout.rank)
    tensors = {name: _allocate(slot, layout) for name, slot in skeleton["slots"].items()}
    dcp.load({"tensors": tensors}, checkpoint_id=checkpoint_id)
    state = _join(skeleton["tree"], {name: _local(value) for name, value in tensors.items()})
    state["shard_layout"] = optimizer._shard_layout()  # (DCP resharded level 0's per-parameter state to this layout)
    optimizer.load_state_dict(state)


def _ranks(world: int, sharded: bool) -> str:
    return f"{world} {'sharded' if sharded else 'unsharded'} rank(s)"


def _skeleton(checkpoint_id, rank: int) -> dict:
    """The skeleton rank ``rank`` saved."""
    import torch.distributed.checkpoint as dcp

    key = f"skeleton-rank{rank}"
    holder: dict[str, Any] = {key: ""}
    dcp.load(holder, checkpoint_id=checkpoint_id)
    return json.loads(holder[key])


class _Layout:
    """This rank, and level 0's parameters as the user gave them (DTensors
    where sharded) beside the shapes of the shards the engine steps."""

    def __init__(self, optimizer) -> None:
        self.sharded = getattr(optimizer, "_sharding", None) is not None
        distributed = torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.world = torch.distributed.get_world_size() if distributed else 1
        self.params = list(optimizer._handles)  # (DTensors where sharded)
        self.local_shapes = [tuple(local.shape) for local in optimizer._params]  # (whole where not sharded)
        self.device = optimizer._params[0].device

    def aligned(self, items) -> bool:
        """Whether ``items`` holds one tensor (or None) per parameter, each shaped as its shard."""
        return (isinstance(items, (list, tuple)) and len(items) == len(self.local_shapes)
                and any(isinstance(item, Tensor) for item in items)
                and all(item is None or (isinstance(item, Tensor) and tuple(item.shape) == shape)
                        for item, shape in zip(items, self.local_shapes)))


def _layout(optimizer) -> _Layout:
    if not hasattr(optimizer, "levels"):
        raise TypeError(f"rc.distributed.save_optimizer: expected an rc.HyperOptimizer, got {type(optimizer).__name__}")
    return _Layout(optimizer)


def _split(state: dict, layout: _Layout) -> tuple[dict, dict[str, Tensor]]:
    """The skeleton of ``state`` and its tensors by slot name."""
    slots: dict[str, dict] = {}
    tensors: dict[str, Tensor] = {}

    def slot(tensor: Tensor, kind: str, param: int | None = None) -> dict:
        name = f"rank{layout.rank}-{len(slots)}" if kind == RANK_LOCAL else f"{kind}{len(slots)}"
        description = {"kind": kind, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        if kind == SHARD:
            handle = layout.params[param]
            description.update(param=param, shape=list(handle.shape))  # (the whole tensor's: DCP reshards)
            if layout.sharded:
                tensor = torch.distributed.tensor.DTensor.from_local(
                    tensor.detach(), handle.device_mesh, handle.placements, shape=handle.shape,
                    stride=handle.stride(), run_check=False)
        slots[name] = description
        tensors[name] = tensor.detach()
        return {"slot": name}

    def encode(value: Any, local: bool) -> Any:
        if isinstance(value, Tensor):
            return slot(value, RANK_LOCAL if local and layout.sharded else SHARED)
        if local and layout.aligned(value):
            return {"list" if isinstance(value, list) else "tuple": [
                None if item is None else slot(item, SHARD, index) for index, item in enumerate(value)]}
        if isinstance(value, dict):
            return {"dict": [[encode(key, False), encode(item, local and key not in _LEVEL_WIDE)]
                             for key, item in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"list" if isinstance(value, list) else "tuple": [encode(item, local) for item in value]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TypeError(f"rc.distributed.save_optimizer: cannot save a {type(value).__name__} in the state dict")

    level_zero, *above = state["levels"]
    levels = {"list": [encode(level_zero, True), *(encode(level, False) for level in above)]}
    tree = {"dict": [[{"value": key}, encode(value, key == "horizon_memory")] for key, value in state.items()
                     if key != "levels"]}
    tree["dict"].append([{"value": "levels"}, levels])
    return {"tree": tree, "slots": slots, "world": layout.world, "sharded": layout.sharded}, tensors


def _allocate(slot: dict, layout: _Layout) -> Tensor:
    """An empty tensor for ``slot`` to load into: a parameter's state as a
    DTensor sharded as the parameter, or whole where the parameters are not
    sharded here (a run sharded over N ranks resumes on one)."""
    dtype = getattr(torch, slot["dtype"])
    if slot["kind"] == SHARD:
        param = layout.params[slot["param"]] if slot["param"] < len(layout.params) else None
        if param is None or list(param.shape) != slot["shape"]:
            found = "no such parameter" if param is None else f"shape {tuple(param.shape)}"
            raise ValueError(f"rc.distributed.load_optimizer: the checkpoint holds state of shape "
                             f"{tuple(slot['shape'])} for parameter {slot['param']}, which has {found} here; build "
                             "the same model")
        if layout.sharded:
            return torch.distributed.tensor.empty(slot["shape"], dtype=dtype, device_mesh=param.device_mesh,
                                                  placements=param.placements)
    return torch.empty(slot["shape"], dtype=dtype, device=layout.device)


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _join(encoded: Any, tensors: dict[str, Tensor]) -> Any:
    """The state dict the skeleton ``encoded`` describes, its slots filled."""
    (kind, value), = encoded.items()
    if kind == "slot":
        return tensors[value]
    if kind == "value":
        return value
    if kind == "dict":
        return {_join(key, tensors): _join(item, tensors) for key, item in value}
    items = [_join(item, tensors) for item in value]
    return items if kind == "list" else tuple(items)
