"""Online towers side by side with "Gradient Descent: The Ultimate Optimizer"
(the ``gradient-descent-the-ultimate-optimizer`` package, gdtuo), in one run.

The same MLP (784-128-10 tanh, batch 256, random data, fixed seed) is
trained by towers of depth 0, 1, 3, 7 (gdtuo's "height" 1, 2, 4, 8: it
counts every optimizer; SGD/SGD/...; Adam/SGD/..., Adam learning lr, beta1
and beta2 as gdtuo's does) with recurse's HyperOptimizer
and with gdtuo, each configuration in a fresh process; recurse both with
its default non-finite guard and with ``guard="off"`` (gdtuo has no guard).
Reported: ms/step (median after 20 warm-up steps), peak memory (CPU:
resident memory of the process; CUDA: tensors allocated on the device),
memory growth between step 200 and the last step, and the training loss at
the end. Two checks that both compute the same thing: the hypergradient from
the same state (d loss_2 / d lr, SGD/SGD, float64: the "hypergradient
agreement" line), and the final losses of the SGD stacks, where recurse
learns lr in its own units as gdtuo does, so the two follow one trajectory
(the "final-loss agreement" line). Adam stacks keep recurse's own
parametrisation (log lr, logit betas), so their trajectories differ.

    pip install -e ".[bench]"      # gdtuo
    python benchmarks/peers_online.py [--steps 2000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

import recurse as rc

DEPTHS = (0, 1, 3, 7)
# gdtuo calls loss.backward(create_graph=True), which torch warns about on every step
warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
FAMILIES = ("SGD", "Adam")


def data(device):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 784, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)
    return inputs.to(device), labels.to(device)


def model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).to(device)


def recurse_stack(family: str, depth: int) -> rc.Optimizer:
    """The bottom optimizer and ``depth`` SGD levels above it, each learning
    the knobs below. SGD stacks learn lr in its own units, as gdtuo does
    (``parametrization={"lr": "identity"}``), so the two take the same
    steps; Adam stacks keep recurse's log lr and logit betas (gdtuo's Adam
    also maps its betas and places eps differently)."""
    if family == "SGD":
        same_as_gdtuo = {"parametrization": {"lr": "identity"}}
        return rc.stack(rc.SGD(0.01, **same_as_gdtuo), *(rc.SGD(1e-4, **same_as_gdtuo) for _ in range(depth)))
    learned = ("lr", "beta1", "beta2") if depth > 0 else ()  # (depth 0: nothing above learns them)
    return rc.stack(rc.Adam(1e-3, learn=learned), *(rc.SGD(1e-4) for _ in range(depth)))


def gdtuo_stack(family: str, depth: int):
    from gradient_descent_the_ultimate_optimizer import gdtuo

    optimizer = gdtuo.NoOpOptimizer()
    for _ in range(depth):
        optimizer = gdtuo.SGD(alpha=1e-4, optimizer=optimizer)
    return gdtuo.SGD(alpha=0.01, optimizer=optimizer) if family == "SGD" else gdtuo.Adam(alpha=1e-3, optimizer=optimizer)


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure(implementation: str, family: str, depth: int, steps: int, device: str) -> dict:
    """Run one configuration in this process; returns its figures."""
    device = torch.device(device)
    inputs, labels = data(device)
    net = model(device)
    if implementation.startswith("recurse"):
        guard = "off" if implementation == "recurse-guard-off" else "skip"
        opt = rc.HyperOptimizer(net.parameters(), recurse_stack(family, depth), guard=guard)

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(inputs), labels)
            loss.backward()
            opt.step()
            return loss
    else:
        from gradient_descent_the_ultimate_optimizer import gdtuo

        wrapped = gdtuo.ModuleWrapper(net, optimizer=gdtuo_stack(family, depth))
        wrapped.initialize()

        def step():
            wrapped.begin()
            wrapped.zero_grad()
            loss = torch.nn.functional.cross_entropy(wrapped.forward(inputs), labels)
            loss.backward(create_graph=True)
            wrapped.step()
            return loss.detach()

    def memory_mb() -> float:  # CUDA: tensors allocated on the device; CPU: resident memory of the process
        return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else resident_mb()

    times, memory_at_200 = [], None
    for index in range(steps):
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if index == 199:
            memory_at_200 = memory_mb()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" \
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": 1e3 * statistics.median(times[20:]), "peak_mb": peak,
            "growth_mb": memory_mb() - (memory_at_200 or memory_mb()), "loss": loss.item()}


def hypergradient_agreement() -> float:
    """Relative difference of d loss_2 / d lr (SGD/SGD, float64, same state) between the two."""
    from gradient_descent_the_ultimate_optimizer import gdtuo

    torch.set_default_dtype(torch.float64)
    try:
        inputs, labels = data("cpu")
        ours = model("cpu")
        opt = rc.HyperOptimizer(ours.parameters(), rc.SGD(0.01, hyper=rc.SGD(1e-4)))
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ours(inputs), labels).backward()
            opt.step()
        theirs_optimizer = gdtuo.SGD(alpha=0.01, optimizer=gdtuo.SGD(alpha=1e-4))
        theirs = gdtuo.ModuleWrapper(model("cpu"), optimizer=theirs_optimizer)
        theirs.initialize()
        for _ in range(2):
            theirs.begin()
            theirs.zero_grad()
            torch.nn.functional.cross_entropy(theirs.forward(inputs), labels).backward(create_graph=True)
            hypergradient = None if theirs_optimizer.parameters["alpha"].grad is None \
                else theirs_optimizer.parameters["alpha"].grad.item()
            theirs.step()
        ours_value = opt.hypergradients()["0.lr"]
        return abs(ours_value - hypergradient) / abs(hypergradient)
    finally:
        torch.set_default_dtype(torch.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=3, metavar=("IMPLEMENTATION", "FAMILY", "HEIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        implementation, family, depth = args.one
        print(json.dumps(measure(implementation, family, int(depth), args.steps, args.device)))
        return
    print(f"hypergradient agreement (d loss_2 / d lr, SGD/SGD, float64): relative difference "
          f"{hypergradient_agreement():.2e}\n")
    print(f"MLP 784-128-10 tanh, batch 256, {args.steps} steps on {args.device}, each configuration in a fresh process\n")
    print("| tower | depth | gdtuo ms/step | recurse ms/step | time ratio (recurse / gdtuo) | "
          "recurse, guard off: ms/step (ratio) | gdtuo peak MB | "
          "recurse peak MB | gdtuo growth MB | recurse growth MB | gdtuo final loss | recurse final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = {"recurse": [], "recurse-guard-off": []}
    sgd_loss_differences = []
    for family in FAMILIES:
        for depth in DEPTHS:
            figures = {}
            for implementation in ("gdtuo", "recurse", "recurse-guard-off"):
                command = [sys.executable, __file__, "--steps", str(args.steps), "--device", args.device,
                           "--one", implementation, family, str(depth)]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                figures[implementation] = json.loads(output.strip().splitlines()[-1])
            theirs, ours, unguarded = figures["gdtuo"], figures["recurse"], figures["recurse-guard-off"]
            for name in ratios:
                ratios[name].append(figures[name]["ms"] / theirs["ms"])
            if family == "SGD":
                sgd_loss_differences.append(abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"]))
            stack = "/".join([family] + ["SGD"] * depth)
            print(f"| {stack} | {depth} | {theirs['ms']:.2f} | {ours['ms']:.2f} | {ours['ms'] / theirs['ms']:.2f}x | "
                  f"{unguarded['ms']:.2f} ({unguarded['ms'] / theirs['ms']:.2f}x) | "
                  f"{theirs['peak_mb']:.0f} | {ours['peak_mb']:.0f} | {theirs['growth_mb']:+.1f} | "
                  f"{ours['growth_mb']:+.1f} | {theirs['loss']:.4f} | {ours['loss']:.4f} |", flush=True)
    print(f"\nfinal-loss agreement, SGD stacks (same parametrisation as gdtuo): largest relative difference "
          f"{max(sgd_loss_differences):.1e}")
    print(f"geometric mean of the time ratios (recurse / gdtuo): {statistics.geometric_mean(ratios['recurse']):.2f}x "
          f"with the guard, {statistics.geometric_mean(ratios['recurse-guard-off']):.2f}x with guard=\"off\"")


if __name__ == "__main__":
    main()
