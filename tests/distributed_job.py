"""Runs under torchrun (gloo, CPU) for tests/test_distributed.py.

    torchrun --nproc_per_node 2 tests/distributed_job.py online OUT
    torchrun --nproc_per_node 2 tests/distributed_job.py meta OUT

Each rank trains on its share of one fixed batch (online: a DDP MLP under a
depth-2 tower) or of one fixed set of tasks (meta: MetaTrainer over
quadratics) and saves what it ended with to OUT/rank<r>.pt. The helpers
``online_run`` and ``meta_run`` also give the single-process reference.
"""

import faulthandler
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import recurse as rc

STEPS, META_STEPS, TASKS = 50, 4, 4


def batch():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    return inputs, inputs[:, :1].sin() + 0.1 * torch.randn(64, 1, generator=generator, dtype=torch.float64)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def tower():
    return rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize="rms"), rc.SGD(1e-3, normalize="rms"))


def online_run(rank=0, world=1, rollback=False):
    """A DDP MLP under a depth-2 tower (``rollback``: a tower that diverges,
    under rc.Rollback, which decides on the mean of the ranks' losses)."""
    net = model()
    trained = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = (rc.HyperOptimizer(trained.parameters(), rc.stack(rc.SGD(3.0), rc.SGD(0.01, normalize="rms")),
                             first_step_limit=None) if rollback else rc.HyperOptimizer(trained.parameters(), tower()))
    watch = rc.Rollback(trained, opt, every=5, threshold=2.0, patience=1) if rollback else None
    inputs, targets = batch()
    share = slice(rank * 64 // world, (rank + 1) * 64 // world)
    start = time.perf_counter()
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(trained(inputs[share]), targets[share])
        loss.backward()
        opt.step()
        if watch is not None:
            watch.observe(loss)
    seconds = (time.perf_counter() - start) / STEPS
    rc.distributed.check_in_sync(opt)
    return {"params": [p.detach().clone() for p in net.parameters()], "hyper": opt.hyperparameters(),
            "seconds_per_step": seconds, "events": None if watch is None else watch.events}


def meta_run(rank=0, world=1, learned=False):
    """MetaTrainer over this rank's share of the tasks: learning SGD's lr, or
    (``learned``) the weights of an LSTM optimizer."""
    family = rc.problems.QuadraticFamily(10, seed=0)
    tasks = [family.sample() for _ in range(TASKS)][rank * TASKS // world:(rank + 1) * TASKS // world]
    thetas = torch.zeros(len(tasks), 10, dtype=torch.float64)

    def objective(params, k):  # a sum: each task's parameters get their own, unscaled gradient
        return torch.stack([task.loss(theta) for task, theta in zip(tasks, params[0])]).sum()

    inner = rc.LSTMOptimizer(hidden_size=4) if learned else rc.SGD(0.01, learn="lr")
    trainer = rc.MetaTrainer([thetas], objective, [inner, rc.Adam(0.05)], unroll_steps=[5], distributed=world > 1)
    for _ in range(META_STEPS):
        trainer.meta_step()
    rc.distributed.check_in_sync(trainer)
    return {"raw": trainer.optimizers[0].raw.clone(), "hyper": trainer.hyperparameters()}


def drift_run(rank=0, world=1):
    """Ranks whose learned lr differs: check_in_sync must fail on every rank."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.SGD(0.1, hyper=rc.SGD(0.01)))
    opt.levels[0].optimizer.raw = opt.levels[0].optimizer.raw + rank
    try:
        rc.distributed.check_in_sync(opt)
    except RuntimeError as error:
        return {"error": str(error)}
    return {"error": None}


def main():
    faulthandler.enable(all_threads=True)  # a crash in gloo prints every thread's Python stack
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "drift":
        result = drift_run(rank, world)
    else:
        result = (online_run(rank, world, mode == "rollback") if mode in ("online", "rollback")
                  else meta_run(rank, world, learned=mode == "meta_lstm"))
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
    # The results are on disk. Skip interpreter finalisation: gloo's worker
    # threads can still be torn down there, and once in CI (1 run of ~10 of
    # the drift job; never in 140 local runs) a rank aborted with "terminate
    # called without an active exception" near the end of the job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
