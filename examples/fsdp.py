"""A tower on an FSDP2 model (fully_shard): the same script on CPU (gloo)
or GPU (nccl).

    torchrun --nproc_per_node 2 examples/fsdp.py [--steps 200] [--out checkpoint]

Each rank holds one shard of every parameter and trains on its part of each
batch of sklearn's digits. rc.HyperOptimizer steps each rank's shards in
place and sums each hypergradient over the ranks (one all-reduce of a few
numbers a step), so the learned learning rate is the same everywhere
(checked at the end). With --out, the run is saved through
torch.distributed.checkpoint: the model's shards, and the optimizer's state
sharded as the model (rc.distributed.save_optimizer; load_optimizer resumes
it, on these ranks or on another number of them).
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard

import recurse as rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # (fully_shard's mesh and the hypergradient's all-reduce use this rank's GPU)

    data = rc.problems.Digits(device=device)
    model = data.model(hidden=64, seed=0)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = rc.HyperOptimizer(model.parameters())  # the default tower: AdamW learning its lr
    for step, (inputs, labels) in zip(range(args.steps), data.batches(128, seed=0)):
        part = slice(rank * len(inputs) // world, (rank + 1) * len(inputs) // world)  # this rank's part
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[part]), labels[part]).backward()
        opt.step()

    rc.distributed.check_in_sync(opt)  # raises if any hyperparameter differs across ranks
    if args.out is not None:
        dcp.save(model.state_dict(), checkpoint_id=args.out / "model")
        rc.distributed.save_optimizer(opt, args.out / "optimizer")
    valid_loss = data.valid_loss(model)  # (every rank: the forward gathers the shards)
    if rank == 0:
        print(f"{world} process(es), fully_shard: lr {opt.hyperparameters()['0.lr']:.4f}, "
              f"validation loss {valid_loss:.4f}")
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
