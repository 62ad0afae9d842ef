"""Memory an optimizer holds between steps, in model sizes, beside torch.optim.

One parameter tensor of ``--size`` entries (default 25M: 100 MB in float32)
and a fixed gradient. Each row, in a fresh process: build the optimizer,
take three steps, ``zero_grad(set_to_none=True)``, and report what the
process then holds beyond the parameter itself, in units of the
parameter's size (a "model size"), and as bytes per parameter. On CPU the
measure is the resident set size (large tensors are their own mappings, so
freeing one returns it, with glibc told to map each on its own); on CUDA, ``torch.cuda.memory_allocated``.

torch.optim.Adam holds its two moment buffers (2 model sizes); a recurse
tower holds its rule's state, and for a learned level 0 what its
hypergradient needs at the next step: under the one-step horizon the last
update's record (parameters where the rule reads them, the kept gradient,
the previous state), under ``Decayed(mu)`` one tangent per learned knob.

    python benchmarks/memory.py [--size 25000000] [--device cuda]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

import torch

import recurse as rc

RMS = {"normalize": "rms"}


def rows():
    """name -> (a function params -> optimizer)."""
    def tower(level_zero, depth, **options):
        def build(params):
            levels = [level_zero()] + [rc.SGD(0.01, **RMS) for _ in range(depth)]
            return rc.HyperOptimizer(params, rc.stack(*levels), **options)
        return build

    table = {
        "torch.optim.SGD momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        "torch.optim.Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    }
    rules = {"SGD momentum": lambda: rc.SGD(0.01, momentum=0.9), "Adam": lambda: rc.Adam(1e-3),
             "AdamW": lambda: rc.AdamW(1e-3), "RMSprop": lambda: rc.RMSprop(1e-3),
             "Adagrad": lambda: rc.Adagrad(0.01)}
    for name, rule in rules.items():
        for depth in (0, 1, 2):
            table[f"rc {name} depth {depth}"] = tower(rule, depth)
    table["rc Adam lr only depth 1"] = tower(lambda: rc.Adam(1e-3, learn="lr"), 1)
    table["rc Adam lr only depth 1, Decayed(0.99)"] = tower(lambda: rc.Adam(1e-3, learn="lr"), 1,
                                                            horizon=rc.estimators.Decayed(0.99))
    return table


def held(device: str) -> int:
    """Bytes the process holds now: resident set (CPU) or allocated (CUDA)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def measure(name: str, size: int, device: str) -> dict:
    """One row, in this process: what the optimizer holds after three steps."""
    param = torch.nn.Parameter(torch.zeros(size, device=device))
    gradient = torch.linspace(-1.0, 1.0, size, device=device)
    before = held(device)
    opt = rows()[name]([param])
    for _ in range(3):
        param.grad = gradient.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = held(device)
    model_bytes = param.numel() * param.element_size()
    return {"optimizer": name, "model_sizes": (after - before) / model_bytes,
            "bytes_per_parameter": (after - before) / param.numel()}


def measure_rows(names: list[str], size: int, device: str) -> list[dict]:
    """:func:`measure` of each row, each in a fresh process."""
    results = []
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--size", str(size), "--device", device]
        # (glibc then maps every large block on its own and unmaps it when freed, so RSS is what is held)
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        printed = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
        results.append(json.loads(printed.strip().splitlines()[-1]))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=25_000_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", metavar="ROW", help=argparse.SUPPRESS)  # (a row, in a fresh process)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.size, args.device)))
        return None
    results = measure_rows(list(rows()), args.size, args.device)
    print(f"\nMemory held between steps beyond the parameter ({args.size:,} float32 entries on {args.device}):\n")
    print("| optimizer | model sizes | bytes per parameter |")
    print("|---|---|---|")
    for row in results:
        print(f"| {row['optimizer']} | {row['model_sizes']:.2f} | {row['bytes_per_parameter']:.1f} |")
    return results


if __name__ == "__main__":
    main()
