"""recurse under torch.distributed: towers on DDP models, meta-training
data-parallel over tasks. Nothing here replaces PyTorch's own engine.

- Online towers: wrap the model in ``DistributedDataParallel`` and give its
  parameters to ``rc.HyperOptimizer`` unchanged. DDP all-reduces (averages)
  the gradients, every rank computes the same hypergradients from them, so
  every level stays identical on all ranks with no extra communication.
  :func:`check_in_sync` verifies it and fails loudly on drift.
- Meta-training: ``rc.MetaTrainer(..., distributed=True)``: each rank
  unrolls its own share of the tasks with an objective that *sums* over
  them (each task's parameters then see their own, unscaled gradient); the
  meta-gradients are summed over ranks, which is the meta-gradient of the sum
  over all tasks, and the roll-back decision for a non-finite meta-step is
  taken jointly.
- Checkpoints through torch.distributed.checkpoint: :func:`save_optimizer`
  and :func:`load_optimizer` (see :mod:`recurse.dcp`), FSDP2 shards
  included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from recurse.dcp import load_optimizer, save_optimizer

__all__ = ["is_active", "collective_device", "total", "all_ranks_agree", "check_in_sync", "save_optimizer",
           "load_optimizer"]


def is_active() -> bool:
    """True inside an initialised torch.distributed process group.

    >>> rc.distributed.is_active()                     # outside torchrun
    False
    """
    return dist.is_available() and dist.is_initialized()


def collective_device(group=None) -> torch.device:
    """Where ``group``'s collectives take tensors: this rank's GPU under
    nccl, the CPU under gloo or outside torch.distributed (whatever device
    the values live on).

    >>> rc.distributed.collective_device()               # one process: the CPU
    device(type='cpu')
    """
    if is_active() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def total(tensor: Tensor, group=None) -> Tensor:
    """The sum of ``tensor`` over the ranks of ``group`` (all by default): a
    copy on ``tensor``'s device; itself when not distributed.

    >>> rc.distributed.total(torch.tensor([1.0, 2.0]))   # one process: the tensor itself
    tensor([1., 2.])
    """
    if not is_active():
        return tensor
    summed = tensor.detach().to(collective_device(group), copy=True)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
    return summed.to(tensor.device)


def all_ranks_agree(flag: bool, device=None, group=None) -> bool:
    """True only if ``flag`` is true on every rank of ``group`` (all by default).

    >>> rc.distributed.all_ranks_agree(True, "cpu")      # one process: the flag itself
    True
    """
    if not is_active():
        return flag
    value = torch.tensor([1 if flag else 0], device=collective_device(group) if device is None else device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def check_in_sync(optimizer, *, tolerance: float = 0.0) -> None:
    """Raise RuntimeError if the learned values of ``optimizer`` (an
    ``rc.HyperOptimizer`` or ``rc.MetaTrainer``): every level's ``raw``
    vector, hyperparameters or a learned optimizer's weights, differ across
    ranks by more than ``tolerance``, naming the level, the entry and the
    ranks' values.

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3)))
    >>> rc.distributed.check_in_sync(opt)               # passes (and does nothing) in one process
    """
    if not is_active():
        return
    optimizers = [level.optimizer for level in optimizer.levels] if hasattr(optimizer, "levels") \
        else list(optimizer.optimizers)
    labels = [(level, position, name) for level, opt in enumerate(optimizers)
              for position, name in enumerate(opt.raw_labels())]
    mine = torch.cat([opt.raw.detach().reshape(-1).to(torch.float64) for opt in optimizers])
    mine = mine.to(collective_device())
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    stacked = torch.stack(gathered).cpu()
    spread = stacked.max(0).values - stacked.min(0).values
    for index in torch.nonzero(spread > tolerance).flatten().tolist():
        level, position, name = labels[index]
        values = ", ".join(f"rank {rank}: {stacked[rank, index].item()!r}" for rank in range(len(gathered)))
        raise RuntimeError(f"rc.distributed.check_in_sync: level {level}'s learned value {name!r} (raw entry "
                           f"{position}) differs across ranks ({values}); were the gradients all-reduced (DDP) "
                           "before opt.step()?")
