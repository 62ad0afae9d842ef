"""A tower on a DistributedDataParallel model: the same script on 1 or N
processes, CPU (gloo) or GPU (nccl).

    torchrun --nproc_per_node 2 examples/ddp.py [--steps 200]

Each rank trains on its own shard of sklearn's digits; DDP averages the
gradients, so every rank computes the same hypergradients and the learned
learning rates stay identical everywhere (checked at the end).
"""

import argparse

import torch
import torch.distributed as dist

import recurse as rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")

    data = rc.problems.Digits(device=device)
    model = torch.nn.parallel.DistributedDataParallel(data.model(hidden=64, seed=0))
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.01), rc.SGD(0.05, normalize="rms"),
                                                         rc.SGD(0.01, normalize="rms")))
    for step, (inputs, labels) in zip(range(args.steps), data.batches(128, seed=0)):
        shard = slice(rank * len(inputs) // world, (rank + 1) * len(inputs) // world)  # this rank's part
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[shard]), labels[shard]).backward()
        opt.step()

    rc.distributed.check_in_sync(opt)  # raises if any hyperparameter differs across ranks
    if rank == 0:
        print(f"{world} process(es): lr {opt.hyperparameters()['0.lr']:.4f}, "
              f"validation loss {data.valid_loss(model.module):.4f}")
    del opt, model  # DDP's reducer holds the process group: let it go first
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
