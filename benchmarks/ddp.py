"""Time per step of a depth-2 tower on a DDP model at 1, 2, ... processes.

    python benchmarks/ddp.py [--procs 1 2] [--steps 200] [--batch 256]

Each process count is launched with ``torchrun`` (gloo on CPU, nccl on GPU);
every rank trains on its 1/N share of the same global batch, so the global
work per step is fixed and the table shows what N processes buy. On a
2-core machine expect no speed-up: the point is that the code path is the
one a cluster runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import recurse as rc


def worker(steps: int, batch: int) -> None:
    """One rank: time ``steps`` tower steps after 20 warm-up steps; rank 0 prints a JSON line."""
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).to(device)
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.01), rc.SGD(0.01, normalize="rms"),
                                                         rc.SGD(0.01, normalize="rms")))
    shard = slice(rank * batch // world, (rank + 1) * batch // world)
    times = []
    for step in range(20 + steps):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[shard]), labels[shard]).backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        if step >= 20:
            times.append(time.perf_counter() - start)
    rc.distributed.check_in_sync(opt)
    if rank == 0:
        times.sort()
        print(json.dumps({"procs": world, "ms": 1e3 * times[len(times) // 2],
                          "lr": opt.hyperparameters()["0.lr"]}))
    del opt, model  # DDP's reducer holds the process group: let it go first
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def launch(procs: int, steps: int, batch: int) -> dict:
    """Run this file under torchrun with ``procs`` processes and return rank 0's JSON line."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               __file__, "--worker", f"--steps={steps}", f"--batch={batch}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.batch)
    rows = [launch(procs, args.steps, args.batch) for procs in args.procs]
    base = rows[0]["ms"]
    print(f"MLP 784-128-10, global batch {args.batch}, depth-2 SGD tower, median of {args.steps} steps\n")
    print("| processes | ms/step | time / first row | learned lr after the run |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['procs']} | {row['ms']:.2f} | {row['ms'] / base:.2f}x | {row['lr']:.6g} |")


if __name__ == "__main__":
    main()
