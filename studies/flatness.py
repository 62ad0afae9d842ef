"""Flat or sharp: what each optimizer converges to on the digits MLP, and
whether the flatter solution generalises better here.

The MLP 64-32-10 (tanh, float64) is trained with mini-batches of 128 for the
same number of steps by SGD and Adam at two learning rates each, and by
recurse stacks (SGD and Adam with their learning rate learned by a depth-2
tower). At the end, on the full training set: sharpness (top Hessian eigenvalue, power iteration on
Hessian-vector products), Hessian trace (Hutchinson, 50 probes), training and
validation loss, and their gap.

    python studies/flatness.py [--quick] [--out DIR]

Writes metrics.csv, summary.md and flatness.png to DIR (default
results/flatness/<quick|full>).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch.func import functional_call

import recurse as rc
from recurse import exact
from recurse.baselines.comparison import tower_optimizer
from recurse.problems import Digits
from recurse.reporting import cached, progress, publish, saved_figure, study_folder, study_parser

HIDDEN = 32


def methods():
    return {
        "SGD lr 0.01": lambda: rc.SGD(0.01),
        "SGD lr 0.3": lambda: rc.SGD(0.3),
        "Adam lr 1e-3": lambda: rc.Adam(1e-3),
        "Adam lr 1e-2": lambda: rc.Adam(1e-2),
        "SGD, depth-2 tower from 0.01": lambda: tower_optimizer("sgd", 2),
        "Adam, depth-2 tower from 1e-3": lambda: tower_optimizer("adam", 2),
    }


def measure(task, model) -> dict:
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]

    def train_loss(values):
        return task.criterion(functional_call(model, dict(zip(names, values)), (task.train_inputs,)),
                              task.train_targets)

    with torch.no_grad():
        train_value = train_loss(params).item()
    valid_value = task.valid_loss(model)
    trace, trace_error = exact.hessian_trace(train_loss, params, samples=50)
    return {"sharpness": exact.sharpness(train_loss, params, iterations=300, tolerance=1e-6),
            "hessian_trace": trace, "trace_std_error": trace_error, "train_loss": train_value,
            "valid_loss": valid_value, "gap": valid_value - train_value, "valid_accuracy": task.valid_accuracy(model)}


def main(argv=None):
    parser = study_parser(__doc__, "300 steps, one seed (about 30 s)")
    args = parser.parse_args(argv)
    out = study_folder(args, "flatness")
    steps, seeds = (300, [0]) if args.quick else (3000, [0, 1, 2])
    task = Digits(dtype=torch.float64, device=args.device)
    rows = []
    for name, build in progress(methods().items(), args, "methods"):
        for seed in seeds:
            measured = cached(out, f"{name}-seed{seed}".replace(" ", "_").replace(",", ""),
                              lambda: measure(task, _trained_model(task, build, steps, seed)))
            rows.append({"method": name, "seed": seed, **measured})
    publish(out, _summary(rows, steps, seeds), {"metrics": rows})
    _plot(out / "flatness.png", rows)
    return rows


def _trained_model(task, build, steps, seed):
    """The MLP after ``steps`` mini-batch steps of the optimizer ``build()``."""
    model = task.model(HIDDEN, seed=seed)
    return task.fit(model, rc.HyperOptimizer(model.parameters(), build()), steps=steps, batch_size=128, seed=seed)


def _summary(rows, steps, seeds) -> str:
    lines = [f"digits, MLP 64-{HIDDEN}-10 (tanh), float64, batch 128, {steps} steps, seeds {seeds}; "
             "Hessian measures on the full training set", "",
             "| method | sharpness (top eigenvalue) | Hessian trace | train loss | validation loss | gap | "
             "validation accuracy |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(row["method"] for row in rows):
        group = [row for row in rows if row["method"] == method]

        def mean(key):
            return statistics.mean(row[key] for row in group)

        lines.append(f"| {method} | {mean('sharpness'):.3g} | {mean('hessian_trace'):.3g} | {mean('train_loss'):.3g} "
                     f"| {mean('valid_loss'):.3g} | {mean('gap'):.3g} | {mean('valid_accuracy'):.3f} |")
    sharp = [row["sharpness"] for row in rows]
    gaps = [row["gap"] for row in rows]
    lines += ["", f"Rank correlation (Spearman) of sharpness with the generalisation gap over all runs: "
                  f"{_spearman(sharp, gaps):.2f}"]
    return "\n".join(lines)


def _spearman(a, b) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result

    ra, rb = ranks(a), ranks(b)
    if len(a) < 2:
        return float("nan")
    return statistics.correlation(ra, rb)


def _plot(path: Path, rows) -> None:
    with saved_figure(path, figsize=(7, 4.5)) as (figure, axis):
        for method in dict.fromkeys(row["method"] for row in rows):
            group = [row for row in rows if row["method"] == method]
            axis.scatter([row["sharpness"] for row in group], [row["gap"] for row in group], label=method)
        axis.set(xscale="log", xlabel="sharpness: top Hessian eigenvalue of the training loss",
                 ylabel="validation loss - training loss", title="Flatness vs generalisation gap, digits MLP")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)


if __name__ == "__main__":
    main()
