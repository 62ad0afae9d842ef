"""How the online engine's cost scales with depth and with model size.

(a) Depth: an MLP of about 1e5 parameters trained by SGD towers of depth
0 .. 16 (every level SGD on RMS-normalised hypergradients); ms/step per
depth and the least-squares slope of ms/step against depth, as a fraction
of a depth-0 step (the extra cost of one more level).
(b) Size: MLPs of 1e3 .. 1e7 parameters (256 inputs, one tanh hidden layer
sized to the target, 10 outputs, batch 64) at depth 0, 1 and 2: the cost of
the first learned level and of the second, as fractions of a depth-0 step.

    python benchmarks/scaling.py [--steps 30] [--device cuda] [--sizes 1e3 1e5 1e7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import recurse as rc

DEPTHS = (0, 1, 2, 4, 8, 12, 16)
SIZES = (1e3, 1e4, 1e5, 1e6, 1e7)


def mlp(parameters: float, device) -> torch.nn.Module:
    hidden = max(1, round(parameters / (256 + 1 + 10 + 1)))
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10)).to(device)


def ms_per_step(parameters: float, depth: int, steps: int, device) -> float:
    """Median ms of ``steps`` tower steps after 5 warm-up steps."""
    net = mlp(parameters, device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 256, generator=generator).to(device)
    labels = torch.randint(0, 10, (64,), generator=generator).to(device)
    opt = rc.HyperOptimizer(net.parameters(),
                            rc.stack(rc.SGD(0.01), *(rc.SGD(1e-3, normalize="rms") for _ in range(depth))))
    times = []
    for index in range(5 + steps):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), labels).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 5:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=list(SIZES))
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    times = [ms_per_step(1e5, depth, args.steps, device) for depth in DEPTHS]
    print(f"(a) depth, MLP of ~1e5 parameters, {args.steps} steps on {device}\n")
    print("| depth | ms/step | / depth 0 |")
    print("|---|---|---|")
    for depth, value in zip(DEPTHS, times):
        print(f"| {depth} | {value:.2f} | {value / times[0]:.2f}x |")
    print(f"\nslope: {slope(list(DEPTHS), times):.3f} ms per level = "
          f"{slope(list(DEPTHS), times) / times[0]:.1%} of a depth-0 step\n")

    print(f"(b) size, depths 0-2, {args.steps} steps on {device}\n")
    print("| parameters | depth 0 ms | depth 1 ms | depth 2 ms | first level, % of depth 0 | second level, % of depth 0 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        zero, one, two = (ms_per_step(size, depth, args.steps, device) for depth in (0, 1, 2))
        print(f"| {size:.0e} | {zero:.2f} | {one:.2f} | {two:.2f} | {100 * (one - zero) / zero:.0f} | "
              f"{100 * (two - one) / zero:.0f} |", flush=True)


if __name__ == "__main__":
    main()
