"""Runs under torchrun (gloo, CPU) for tests/test_fsdp.py.

    torchrun --nproc_per_node 2 tests/fsdp_job.py MODE OUT

Each rank trains its shard of an MLP under ``fully_shard`` (FSDP2) on its
half of one fixed batch, and saves what it ended with (every parameter
gathered with ``full_tensor()``, every hyperparameter) to OUT/rank<r>.pt.
``run`` with no mesh gives the single-process reference on the whole batch.
Modes: sgd (a depth-2 SGD tower), default (rc.HyperOptimizer's default
tower), rollback (an Adam tower that diverges, under rc.Rollback), save and
resume (the default tower checkpointed at step STEPS // 2 and resumed in
fresh processes), and refusals (the bad shardings, each's error).
"""

import faulthandler
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import recurse as rc
from distributed_job import batch  # (the DDP job's batch: tests/ is on the path, as the script's folder)

STEPS = 30


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 1)).double()


def make_optimizer(tower, params):
    if tower == "sgd":
        return rc.HyperOptimizer(params, rc.stack(rc.SGD(0.1), rc.SGD(0.01, normalize="rms"),
                                                  rc.SGD(0.01, normalize="rms")))
    if tower in ("default", "guard"):
        return rc.HyperOptimizer(params)
    if tower == "per_tensor":  # (several groups: level 0's state is per group, saved per rank)
        return rc.HyperOptimizer(rc.per_tensor(params))
    if tower == "tied":
        return rc.HyperOptimizer(params, rc.tower(rc.SGD(0.05), depth=2, tie=True))
    if tower == "limit":  # (the first-step limit lowers SGD's lr 50 by a factor it measures over all shards)
        return rc.HyperOptimizer(params, rc.stack(rc.SGD(50.0), rc.SGD(0.01, normalize="rms")))
    # (rollback: Adam learning its lr from 1.0, which the loss cannot take)
    return rc.HyperOptimizer(params, rc.stack(rc.Adam(1.0, learn="lr"), rc.SGD(0.01, normalize="rms")),
                             first_step_limit=None)


def sharded_model(world):
    net = model()
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in net[::2]:
            fully_shard(layer)
        fully_shard(net)
    return net


def run(mode, rank=0, world=1, out=None):
    """Train STEPS steps of the tower ``mode`` names ("<tower>", or
    "resume:<tower>": load OUT's checkpoint of step STEPS // 2 first and
    train the rest; "save:<tower>": train STEPS // 2 steps and save it).
    Under "guard" one gradient entry is made infinite at step 0 (on rank 1's
    shard: row 8 of the first weight), which the guard must skip everywhere."""
    action, _, tower = mode.rpartition(":")
    net = sharded_model(world)
    opt = make_optimizer(tower, net.parameters())
    rollback = rc.Rollback(net, opt, every=5, threshold=2.0, patience=1) if tower == "rollback" else None
    inputs, targets = batch()
    share = slice(rank * 64 // world, (rank + 1) * 64 // world)
    steps = STEPS
    if action:
        import torch.distributed.checkpoint as dcp

        steps = STEPS // 2
        if action == "resume":
            model_state = net.state_dict()
            dcp.load(model_state, checkpoint_id=out / "model")
            net.load_state_dict(model_state)
            rc.distributed.load_optimizer(opt, out / "optimizer")
    for step in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(inputs[share]), targets[share])
        loss.backward()
        if tower == "guard" and step == 0 and rank == world - 1:
            weight = net[0].weight.grad
            local = weight.to_local() if hasattr(weight, "to_local") else weight[8:]
            local[0, 0] = float("inf")
        opt.step()
        if rollback is not None:
            rollback.observe(loss)
    if action == "save":
        dcp.save(net.state_dict(), checkpoint_id=out / "model")  # (the model's shards, as FSDP2 users save them)
        rc.distributed.save_optimizer(opt, out / "optimizer")  # (level 0's state as DTensors, sharded as the model)
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in net.parameters()]
    rc.distributed.check_in_sync(opt)
    return {"params": [p.detach().clone() for p in params], "hyper": opt.hyperparameters(),
            "raws": [level.optimizer.raw.clone() for level in opt.levels], "nonfinite_steps": opt.nonfinite_steps,
            "rollbacks": None if rollback is None else rollback.rollbacks,
            "events": None if rollback is None else rollback.events}


def refusals(rank, world):
    """The error each bad sharding gets (its message; None where none was raised)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def message(build):
        try:
            build()
        except (ValueError, RuntimeError) as error:
            return str(error)
        return None

    errors = {}
    partly = model()
    fully_shard(partly[0])  # (the rest of the model stays plain tensors)
    errors["mixed"] = message(lambda: rc.HyperOptimizer(partly.parameters()))
    from torch.distributed.device_mesh import DeviceMesh

    two_meshes = model()
    fully_shard(two_meshes[2], mesh=DeviceMesh("cpu", list(reversed(range(world)))))  # (the ranks in reverse)
    fully_shard(two_meshes)
    errors["meshes"] = message(lambda: rc.HyperOptimizer(two_meshes.parameters()))
    hybrid = model()
    fully_shard(hybrid, mesh=init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard")))
    errors["hsdp"] = message(lambda: rc.HyperOptimizer(hybrid.parameters()))
    sharded = model()
    fully_shard(sharded)
    errors["normalised"] = message(lambda: rc.HyperOptimizer(
        sharded.parameters(), rc.SGD(0.1, normalize="rms", hyper=rc.SGD(0.01, normalize="rms"))))
    errors["held_out"] = message(lambda: rc.HyperOptimizer(
        sharded.parameters(), hypergradient_loss=rc.estimators.HeldOut(lambda: sharded(batch()[0]).sum())))
    errors["newton"] = message(lambda: rc.HyperOptimizer(sharded.parameters(), rc.Newton()))
    errors["vsgd"] = message(lambda: rc.HyperOptimizer(sharded.parameters(), rc.VSGD()))
    errors["graph"] = message(lambda: rc.graph.GraphOptimizer(rc.graph.build(
        groups={"w": sharded.parameters()}, optimizers={"adam": rc.Adam(1e-3)}, steps={"adam": "w"})))
    from torch.distributed.tensor import Replicate, distribute_tensor

    replicated = [torch.nn.Parameter(distribute_tensor(torch.zeros(4, dtype=torch.float64), sharded[0].weight.device_mesh,
                                                       [Replicate()]))]
    errors["replicate"] = message(lambda: rc.HyperOptimizer(replicated))
    # (rank 0's state dict, as torch.save of it on rank 0 and a load on every rank would hand it around)
    opt = rc.HyperOptimizer(sharded.parameters())
    inputs, targets = batch()
    torch.nn.functional.mse_loss(sharded(inputs), targets).backward()
    opt.step()
    shared = [opt.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    errors["other_rank"] = message(lambda: opt.load_state_dict(shared[0]))
    dist.destroy_process_group()
    errors["uninitialised"] = message(lambda: rc.HyperOptimizer(sharded.parameters()))
    return errors


def main():
    faulthandler.enable(all_threads=True)
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = refusals(rank, world) if mode == "refusals" else run(mode, rank, world, out)
    torch.save(result, out / f"rank{rank}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # (as tests/distributed_job.py: gloo's threads are not torn down in finalisation)


if __name__ == "__main__":
    main()
