"""What each extra level costs and buys: depth 0..8 on digits.

SGD at lr 0.01 under online towers of depth 0 (plain SGD) to 8 (see
``rc.baselines.comparison.tower_optimizer``), trained for the same number of
steps. Reported per depth: final validation loss and accuracy (mean over
seeds), wall time per step, and peak memory growth of the training run.
Each depth runs in a fresh process so that peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to that depth alone.

    python studies/depth_sweep.py [--quick] [--device cpu|cuda] [--out DIR]

Writes metrics.csv, summary.md and depth_sweep.png to DIR (default
results/depth_sweep/<quick|full>).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

MAX_DEPTH = 8
QUICK_DEPTHS = [0, 1, 2, 4, 8]

from recurse.reporting import cached, progress, publish, saved_figure, study_folder, study_parser


def measure(depth: int, steps: int, seed: int, device: str) -> dict:
    """One run in this (fresh) process: loss, accuracy, seconds per step, peak memory growth in MB."""
    import torch

    from recurse.baselines import train
    from recurse.baselines.comparison import tower_optimizer
    from recurse.problems import Digits

    task = Digits(device=device)
    # Warm up kernels, thread pools and allocator caches so the peak below is the run's own.
    train(task, tower_optimizer("sgd", 1), steps=3, batch_size=128, seed=seed, hidden=128)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = train(task, tower_optimizer("sgd", depth), steps=steps, batch_size=128, seed=seed, hidden=128)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"depth": depth, "seed": seed, "valid_loss": result.final_valid_loss,
            "valid_accuracy": result.valid_accuracy, "ms_per_step": 1000 * result.seconds / steps,
            "peak_memory_growth_mb": (peak - before) / 2**20}


def main(argv=None):
    parser = study_parser(__doc__, "depths 0, 1, 2, 4, 8, 150 steps, one seed (about 30 s)")
    parser.add_argument("--measure", nargs=3, type=int, metavar=("DEPTH", "STEPS", "SEED"),
                        help="internal: measure one run in this process and print it as JSON")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args.device)))
        return None
    out = study_folder(args, "depth_sweep")
    steps, seeds = (150, [0]) if args.quick else (1000, [0, 1, 2])
    depths = QUICK_DEPTHS if args.quick else list(range(MAX_DEPTH + 1))

    rows = []
    for depth in progress(depths, args, "depths"):
        for seed in seeds:  # a fresh process per run: its peak memory is this run's alone
            command = [sys.executable, __file__, "--measure", str(depth), str(steps), str(seed),
                       "--device", args.device]

            def run(command=command):
                printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                return json.loads(printed.strip().splitlines()[-1])

            rows.append(cached(out, f"depth{depth}-seed{seed}-{args.device}", run))

    publish(out, _summary(rows, steps, seeds, args.device), {"metrics": rows})
    _plot(out / "depth_sweep.png", rows)
    return rows


def _depths(rows) -> list[int]:
    return sorted({row["depth"] for row in rows})


def _per_depth(rows, key):
    return [statistics.mean(row[key] for row in rows if row["depth"] == depth) for depth in _depths(rows)]


def _summary(rows, steps, seeds, device) -> str:
    losses, accuracies = _per_depth(rows, "valid_loss"), _per_depth(rows, "valid_accuracy")
    times, memory = _per_depth(rows, "ms_per_step"), _per_depth(rows, "peak_memory_growth_mb")
    lines = [f"digits, MLP 64-128-10, SGD from lr 0.01, batch 128, {steps} steps, seeds {seeds}, {device}", "",
             "| depth | validation loss | accuracy | ms per step | time / depth 0 | peak memory growth, MB |",
             "|---|---|---|---|---|---|"]
    for index, depth in enumerate(_depths(rows)):
        lines.append(f"| {depth} | {losses[index]:.4g} | {accuracies[index]:.3f} | {times[index]:.3f} | "
                     f"{times[index] / times[0]:.2f}x | {memory[index]:.1f} |")
    return "\n".join(lines)


def _plot(path: Path, rows) -> None:
    depths = _depths(rows)
    with saved_figure(path, 1, 3, figsize=(13, 3.8)) as (figure, axes):
        for axis, key, label in zip(axes, ("valid_loss", "ms_per_step", "peak_memory_growth_mb"),
                                    ("final validation loss", "ms per step", "peak memory growth, MB")):
            axis.plot(depths, _per_depth(rows, key), marker="o")
            axis.set(xlabel="tower depth", ylabel=label)
            axis.grid(alpha=0.3)
        axes[0].set_yscale("log")


if __name__ == "__main__":
    main()
