"""The main job: learn a learning rate that starts 100x too small.

Tasks are drawn from the quadratic family of "learning to learn"
(f(theta) = ||W theta - y||^2, 10-d). On every task each method gets the
same start and the same number of steps: SGD at the bad fixed learning rate,
SGD at the hand-tuned 1/L (L = largest Hessian eigenvalue, a rate a user
would have to know in advance), towers of depth 1, 2 and 3 that start from
the bad rate and learn it online (and depth 2 without normalising the
hypergradients, to show what normalisation buys), and Adam fixed vs. Adam under a depth-2
tower.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

import recurse as rc
from recurse.problems import Quadratic, QuadraticFamily
from recurse.reporting import saved_figure


@dataclass
class Method:
    name: str
    build: Callable[[Quadratic], rc.Optimizer]
    tower: str  # (what ``build`` makes, as summary.md and config.json say it; L: the task's smoothness)


HYPER_LRS = (0.05, 0.01)  # (level 1's step, and every level's above it)


def hyper_levels(depth: int, normalize: str | None = "rms") -> list[rc.Optimizer]:
    """SGD levels on the log learning rate, by default each normalising its
    incoming hypergradient by its running RMS (the hypergradient's raw scale
    depends on the task; see recurse.transforms)."""
    return [rc.SGD(HYPER_LRS[min(level, 1)], normalize=normalize) for level in range(depth)]


def hyper_levels_text(depth: int, normalize: str | None = "rms") -> str:
    """:func:`hyper_levels` as code, for the tables."""
    option = "" if normalize is None else f', normalize="{normalize}"'
    return ", ".join(f"rc.SGD({HYPER_LRS[min(level, 1)]}{option})" for level in range(depth))


def default_methods() -> list[Method]:
    def bad_lr(task):
        return 0.01 / task.smoothness()

    levels = {depth: hyper_levels_text(depth) for depth in (1, 2, 3)}
    return [
        Method("SGD fixed lr (100x too small)", lambda task: rc.SGD(bad_lr(task)), "rc.SGD(0.01 / L)"),
        Method("SGD fixed lr 1/L (hand-tuned)", lambda task: rc.SGD(1.0 / task.smoothness()), "rc.SGD(1 / L)"),
        Method("SGD depth 1", lambda task: rc.stack(rc.SGD(bad_lr(task)), *hyper_levels(1)),
               f"rc.stack(rc.SGD(0.01 / L), {levels[1]})"),
        Method("SGD depth 2", lambda task: rc.stack(rc.SGD(bad_lr(task)), *hyper_levels(2)),
               f"rc.stack(rc.SGD(0.01 / L), {levels[2]})"),
        Method("SGD depth 2, no normalisation",
               lambda task: rc.stack(rc.SGD(bad_lr(task)), *hyper_levels(2, normalize=None)),
               f"rc.stack(rc.SGD(0.01 / L), {hyper_levels_text(2, normalize=None)})"),
        Method("SGD depth 3", lambda task: rc.stack(rc.SGD(bad_lr(task)), *hyper_levels(3)),
               f"rc.stack(rc.SGD(0.01 / L), {levels[3]})"),
        Method("Adam fixed lr 1e-3", lambda task: rc.Adam(1e-3), "rc.Adam(1e-3)"),
        Method("Adam depth 2 (lr learned)", lambda task: rc.stack(rc.Adam(1e-3, learn="lr"), *hyper_levels(2)),
               f"rc.stack(rc.Adam(1e-3, learn=\"lr\"), {levels[2]})"),
    ]


@dataclass
class RunResult:
    """One method on one task."""

    name: str
    losses: list[float] = field(default_factory=list)
    learned_lr: list[float] = field(default_factory=list)
    final_loss: float = float("nan")
    seconds: float = 0.0
    nonfinite_steps: int = 0


def run_method(method: Method, task: Quadratic, steps: int) -> RunResult:
    theta = torch.zeros(task.dim, dtype=task.weights.dtype, device=task.weights.device, requires_grad=True)
    opt = rc.HyperOptimizer([theta], method.build(task))
    result = RunResult(method.name)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = task.loss(theta)
        loss.backward()
        opt.step()
        result.losses.append(loss.item())
        result.learned_lr.append(opt.hyperparameters()["0.lr"])
    result.seconds = time.perf_counter() - start
    with torch.no_grad():
        result.final_loss = task.loss(theta).item()
    result.nonfinite_steps = opt.nonfinite_steps
    return result


def markdown_table(results: dict[str, list[RunResult]], towers: dict[str, str] | None = None) -> str:
    """Final loss over the tasks (geometric mean, as the ratio beside it,
    and the range), its ratio to the bad fixed lr's (geometric mean over
    tasks), learned lr on the first task, wall time; then, where
    ``towers`` is given, what each method ran."""
    baseline = [r.final_loss for r in next(iter(results.values()))]
    lines = [
        "| method | final loss: geometric mean over tasks (min - max) | loss / fixed-bad-lr loss (geometric mean) | "
        "level-0 lr, task 0: start -> end | non-finite steps | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        finals = [max(r.final_loss, 1e-300) for r in runs]
        ratio = statistics.geometric_mean([f / b for f, b in zip(finals, baseline)])
        lines.append(
            f"| {name} | {statistics.geometric_mean(finals):.4g} ({min(finals):.3g} - {max(finals):.3g}) | "
            f"{ratio:.3g} | {runs[0].learned_lr[0]:.2e} -> {runs[0].learned_lr[-1]:.2e} | "
            f"{sum(r.nonfinite_steps for r in runs)} | {sum(r.seconds for r in runs):.2f} |"
        )
    if towers:
        lines += ["", "What each method runs (L: the task's smoothness, its largest curvature):", ""]
        lines += [f"- {name}: `{tower}`" for name, tower in towers.items()]
    return "\n".join(lines)


def write_outputs(out: Path, config: dict, results: dict[str, list[RunResult]], towers: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "task", "step", "loss", "lr"])
        for name, runs in results.items():
            for task_index, run in enumerate(runs):
                for step, (loss, lr) in enumerate(zip(run.losses, run.learned_lr), start=1):
                    writer.writerow([name, task_index, step, f"{loss:.6g}", f"{lr:.6g}"])
    (out / "summary.md").write_text(markdown_table(results, towers) + "\n")
    plot(out / "demo.png", results)


def plot(path: Path, results: dict[str, list[RunResult]]) -> None:
    """Loss (geometric mean over tasks) and task 0's level-0 lr against the
    step; one legend below both panels, so that no curve is hidden, and a
    line style and marker per method, so that curves lying on each other
    still show."""
    styles, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "v", "D", "x", "+", "*"]
    with saved_figure(path, 1, 2, figsize=(12, 4.5)) as (figure, (loss_axis, lr_axis)):
        for index, (name, runs) in enumerate(results.items()):
            steps = range(1, len(runs[0].losses) + 1)
            mean_loss = [statistics.geometric_mean([max(r.losses[i], 1e-300) for r in runs])
                         for i in range(len(steps))]
            style = {"linestyle": styles[index % len(styles)], "linewidth": 1.6,
                     "marker": markers[index % len(markers)], "markevery": (index * 3, 25), "markersize": 5}
            loss_axis.plot(steps, mean_loss, label=name, **style)
            lr_axis.plot(steps, runs[0].learned_lr, **style)
        loss_axis.set(xlabel="step (= gradient evaluations)", ylabel="loss f(theta), geometric mean over tasks",
                      yscale="log", title=f"Quadratic family, 10-d: {len(next(iter(results.values())))} tasks")
        lr_axis.set(xlabel="step (= gradient evaluations)", ylabel="level-0 learning rate (task 0)", yscale="log",
                    title="Learning rate learned online (fixed ones flat)")
        for axis in (loss_axis, lr_axis):
            axis.grid(alpha=0.3)
        figure.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8, frameon=False)


def run_demo(*, tasks: int = 10, steps: int = 200, device: str = "cpu", out: Path | None = None,
             quiet: bool = False, seed: int = 0) -> dict[str, list[RunResult]]:
    """Run every default method on ``tasks`` sampled quadratics; write
    config.json, metrics.csv, summary.md and demo.png to ``out`` if given."""
    family = QuadraticFamily(10, seed=seed, device=device)
    sampled = [family.sample() for _ in range(tasks)]
    methods = default_methods()
    results: dict[str, list[RunResult]] = {}
    for method in tqdm(methods, desc="methods", disable=quiet):
        results[method.name] = [run_method(method, task, steps) for task in sampled]
    if out is not None:
        towers = {method.name: method.tower for method in methods}
        config = {"task": "QuadraticFamily(dim=10)", "tasks": tasks, "steps": steps, "device": device,
                  "seed": seed, "methods": towers, "recurse": rc.__version__}
        write_outputs(out, config, results, towers)
    return results
