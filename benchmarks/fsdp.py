"""Time per step of towers on an FSDP2 model (fully_shard), as a ratio to
torch.optim.Adam on the same sharded model, in one run.

    python benchmarks/fsdp.py [--steps 40] [--rounds 5] [--hidden 512]

Launches itself under ``torchrun`` with 2 processes (nccl on two GPUs
where there are two, else gloo on the CPU). Every method trains its own copy of one MLP, sharded over both ranks,
on each rank's half of one global batch; the methods take turns, ``steps``
steps each per round, and each row is the median over rounds of the time
per step. recurse steps each rank's local shards (see recurse.sharding),
torch.optim steps the DTensors themselves; the rows "foreach=False" show
torch.optim's other path on DTensors.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import recurse as rc

METHODS = {
    "torch.optim.Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "torch.optim.Adam, foreach=False": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=False),
    "rc.Adam(1e-3), depth 0": lambda params: rc.HyperOptimizer(params, rc.Adam(1e-3)),
    "recurse default tower (AdamW lr learned, depth 1)": lambda params: rc.HyperOptimizer(params),
    "depth-2 SGD tower": lambda params: rc.HyperOptimizer(params, rc.stack(
        rc.SGD(0.01), rc.SGD(0.01, normalize="rms"), rc.SGD(0.01, normalize="rms"))),
}


def worker(steps: int, rounds: int, hidden: int, batch: int) -> None:
    from torch.distributed.fsdp import fully_shard

    on_gpus = torch.cuda.device_count() >= 2  # (nccl needs a GPU per rank; with fewer, both ranks use the CPU)
    dist.init_process_group("nccl" if on_gpus else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank) if on_gpus else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    share = slice(rank * batch // world, (rank + 1) * batch // world)
    runs = {}
    for name, build in METHODS.items():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                                  torch.nn.Tanh(), torch.nn.Linear(hidden, 10)).to(device)
        for layer in net[::2]:
            fully_shard(layer)
        fully_shard(net)
        runs[name] = (net, build(net.parameters()))

    def train(net, opt, count):
        for _ in range(count):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(inputs[share]), labels[share]).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in METHODS}
    for name, (net, opt) in runs.items():
        train(net, opt, 5)  # (warm-up: FSDP2's lazy init, first-step checks)
    for _ in range(rounds):
        for name, (net, opt) in runs.items():
            dist.barrier()
            start = time.perf_counter()
            train(net, opt, steps)
            times[name].append((time.perf_counter() - start) / steps)
    if rank == 0:
        print(json.dumps({name: 1e3 * statistics.median(values) for name, values in times.items()}))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.steps, args.rounds, args.hidden, args.batch)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--worker", f"--steps={args.steps}", f"--rounds={args.rounds}", f"--hidden={args.hidden}",
               f"--batch={args.batch}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    ms = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    base = ms["torch.optim.Adam"]
    print(f"MLP 784-{args.hidden}-{args.hidden}-10 under fully_shard on 2 processes, global batch {args.batch}, "
          f"median over {args.rounds} rounds of {args.steps} steps\n")
    print("| method | ms/step | time / torch.optim.Adam |")
    print("|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.2f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
