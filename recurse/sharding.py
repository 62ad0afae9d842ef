"""Level 0's parameters sharded over ranks: FSDP2 (``fully_shard``).

Under ``fully_shard`` each parameter is a DTensor of which every rank holds
one shard (``Shard(0)``, or another dimension's ``Shard``, on a
one-dimensional mesh), and each gradient is the
same shard of the gradient averaged over the ranks' batches. Every built-in
rule that level 0 can run here is elementwise, so each rank steps its own
shard, in place, with the same hyperparameters. A hypergradient of level
0's knobs is a sum over all the model's coordinates,

    dL/d raw = sum over ranks r of sum over coordinates i in shard r of (...)_i,

so each rank sums its shard's share and one all-reduce over the mesh gives
every rank the whole sum: the levels above then step identical values on
every rank with no further communication. The guard's decision (a
non-finite gradient or update on any shard skips the step everywhere) and
the first-step limit's norms are taken over the mesh the same way.

Refused, naming what is wrong: a model sharded in part (DTensors beside
plain tensors), parameters on several meshes, a mesh of more than one
dimension (HSDP), a placement other than ``Shard``, and a level 0 whose
step reads more than its own coordinates (a normaliser of the model's
gradient, a rule that evaluates the loss again, a held-out hypergradient).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from recurse import distributed
from recurse.estimators import TrainingLoss


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # (a torch built without distributed)
        return None
    return DTensor


class Sharding:
    """The mesh level 0's parameters are sharded over, and the collectives
    that make a sum over all coordinates from each rank's share."""

    def __init__(self, mesh) -> None:
        self.mesh = mesh
        self.group = mesh.get_group(0)

    @classmethod
    def of(cls, params: Sequence[Tensor], owner: str) -> Sharding | None:
        """The sharding of ``params``; None where none is a DTensor."""
        dtensor = _dtensor_class()
        sharded = [index for index, param in enumerate(params) if dtensor is not None and isinstance(param, dtensor)]
        if not sharded:
            return None
        plain = sorted(set(range(len(params))) - set(sharded))
        if plain:
            raise ValueError(f"{owner}: parameters {_listed(sharded)} are DTensors (sharded, on "
                             f"{params[sharded[0]].device_mesh}) but parameters {_listed(plain)} are plain tensors; "
                             "shard the whole model (fully_shard on the root module too) or none of it")
        mesh = params[0].device_mesh
        for index, param in enumerate(params):
            if param.device_mesh != mesh:
                raise ValueError(f"{owner}: parameter {index} is sharded on {_named(param.device_mesh)} but parameter "
                                 f"0 on {_named(mesh)}; every parameter must be sharded on one mesh")
        if not dist.is_initialized():
            raise RuntimeError(f"{owner}: the parameters are DTensors on {mesh} but no torch.distributed process "
                               "group is initialised; call torch.distributed.init_process_group first")
        if mesh.ndim != 1:
            raise ValueError(f"{owner}: the parameters are sharded on the {mesh.ndim}-dimensional mesh {mesh} "
                             "(HSDP, or FSDP x TP); towers support a one-dimensional FSDP2 mesh (fully_shard with "
                             "the default mesh), or DDP")
        from torch.distributed.tensor import Shard

        for index, param in enumerate(params):
            if not all(isinstance(placement, Shard) for placement in param.placements):
                raise ValueError(f"{owner}: parameter {index} has placements {param.placements} on {mesh}; towers "
                                 "step parameters sharded as fully_shard shards them (Shard)")
        return cls(mesh)

    @staticmethod
    def check_level_zero(level_zero, hypergradient_loss) -> None:
        """Refuse a level 0 whose step reads beyond its own shard."""
        if level_zero.normalizer is not None:
            raise ValueError(f"rc.HyperOptimizer: level 0 {level_zero!r} normalises the model's gradient, which "
                             "reads every shard; under fully_shard, clip with the model's tools before step() instead")
        if level_zero.needs_loss_graph or level_zero.needs_closure:
            raise ValueError(f"rc.HyperOptimizer: level 0 {level_zero!r} evaluates the loss again in its step, which "
                             "is not supported on sharded (fully_shard) parameters")
        if type(hypergradient_loss) is not TrainingLoss:
            raise ValueError(f"rc.HyperOptimizer: hypergradient_loss={hypergradient_loss!r} differentiates another "
                             "loss through the model, which is not supported on sharded (fully_shard) parameters")

    @staticmethod
    def local(params: Sequence[Tensor]) -> list[Tensor]:
        """Each parameter's shard on this rank: a view that shares the
        parameter's storage, so an in-place step moves the parameter."""
        with torch.no_grad():  # (to_local first: a detach on the DTensor would go through its dispatch, 5x slower)
            return [param.to_local().detach() for param in params]

    @staticmethod
    def local_grads(params: Sequence[Tensor]) -> list[Tensor | None]:
        """Each parameter's gradient shard on this rank (None where it has none)."""
        return [None if param.grad is None else param.grad.to_local() for param in params]

    def total(self, value: Tensor | list[float]) -> Tensor | list[float]:
        """The sum of ``value`` over the ranks (a new tensor, or new floats)."""
        if isinstance(value, list):  # (a host level's floats)
            return distributed.total(torch.tensor(value, dtype=torch.float64), self.group).tolist()
        return distributed.total(value, self.group)

    def all_agree(self, flag: bool) -> bool:
        """True only where ``flag`` is true on every rank."""
        return distributed.all_ranks_agree(flag, group=self.group)


def _named(mesh) -> str:
    return f"{mesh} (ranks {mesh.mesh.tolist()})"


def _listed(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:5]))
    return shown + (f" (and {len(indices) - 5} more)" if len(indices) > 5 else "")
