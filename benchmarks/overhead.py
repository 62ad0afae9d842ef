"""Cost of a tower, side by side with torch.optim, in one run.

MLP 784-128-10, batch 256, random data. For each optimizer family (SGD,
Adam learning all its knobs, Adam learning only lr) it times torch.optim and recurse stacks of depth 0, 1, 2, 4, 8 (each
level the same family) and prints ms/step, the ratio to torch.optim, and
the cost of the levels as a fraction of a depth-0 step: averaged over all
levels, and marginal (from one measured depth to the next), since the first
learned level costs more than the ones above it. Every recurse row runs with
the default non-finite guard (one read of the new parameters per step),
except "depth 0, guard off", which shows what the guard costs.

    python benchmarks/overhead.py [--steps 200] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import recurse as rc

DEPTHS = (0, 1, 2, 4, 8)


def make_model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)


def tower_of(family, depth):
    if family == "SGD":
        levels = [rc.SGD(0.05)] + [rc.SGD(1e-3, normalize="rms") for _ in range(depth)]
    elif family == "Adam":
        levels = [rc.Adam(1e-3)] + [rc.Adam(1e-4, normalize="rms") for _ in range(depth)]
    else:  # "Adam, lr only": every level learns only its learning rate
        levels = [rc.Adam(1e-3, learn="lr")] + [rc.Adam(1e-4, learn="lr", normalize="rms") for _ in range(depth)]
    return rc.stack(*levels)


def make_runner(name, family, depth, device, inputs, labels):
    model = make_model(device)
    if name == "torch.optim":
        opt = torch.optim.SGD(model.parameters(), lr=0.05) if family == "SGD" else torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        guard = "off" if name.endswith("guard off") else "skip"
        opt = rc.HyperOptimizer(model.parameters(), tower_of(family, depth), guard=guard)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        opt.step()

    return step


def time_steps(step, steps, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (256,), generator=generator).to(device)

    print(f"recurse {rc.__version__}, torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"MLP 784-128-10, batch 256; median of {args.repeats} rounds x {args.steps} steps, methods interleaved\n")
    print("| family | method | ms/step | ratio to torch.optim | mean cost per level (% of depth-0 step) | "
          "marginal cost per level since the previous depth (%) |")
    print("|---|---|---|---|---|---|")
    for family in ("SGD", "Adam", "Adam, lr only"):
        methods = [("torch.optim", 0), ("recurse depth 0, guard off", 0)] + [(f"recurse depth {d}", d) for d in DEPTHS]
        runners = {name: make_runner(name, family, depth, device, inputs, labels) for name, depth in methods}
        for run in runners.values():
            time_steps(run, 20, device)  # warm-up
        samples = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                samples[name].append(time_steps(run, args.steps, device))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        baseline, depth0 = medians["torch.optim"], medians["recurse depth 0"]
        previous = None
        for name, depth in methods:
            per_level = "" if depth == 0 else f"{100 * (medians[name] - depth0) / depth0 / depth:.1f}"
            marginal = ""
            if previous is not None and depth > previous[1]:
                marginal = f"{100 * (medians[name] - previous[0]) / depth0 / (depth - previous[1]):.1f}"
            if name.startswith("recurse depth") and not name.endswith("guard off"):
                previous = (medians[name], depth)
            print(f"| {family} | {name} | {medians[name]:.3f} | {medians[name] / baseline:.2f} | {per_level} | "
                  f"{marginal} |")


if __name__ == "__main__":
    main()
