"""Machine precision limits where a minimiser can be located.

Near a minimum f(x* + e) = f(x*) + f''(x*) e^2 / 2 + ..., so a method that
compares function values cannot tell x* from x* + e once f''/2 e^2 falls
below the rounding error of f, about eps |f(x*)|: the minimiser is located
only to about sqrt(eps |f(x*)| / (f''/2)), the square root of the machine
precision eps (2^-24 in float32, 2^-53 in float64), while solving f'(x) = 0
(a gradient method) can reach about eps itself.

For a 1-D quadratic f(x) = (x - x*)^2 + 1 and for linear regression (along a
random unit direction through its exact least-squares fit), this study
minimises in float32 and in float64 (a) by golden-section search on function
values (``scipy.optimize.minimize_scalar``, run until its bracket stops
shrinking) and (b) from the gradient (bisection on f'), and reports
|x_hat - x*| next to sqrt(eps) and eps.

    python studies/precision.py [--quick] [--out DIR]

Writes metrics.csv, summary.md and precision.png to DIR (default
results/precision/<quick|full>).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from scipy.optimize import minimize_scalar

from recurse.problems import LinearRegression
from recurse.reporting import publish, saved_figure, study_folder, study_parser

EPS = {"float32": 2.0**-24, "float64": 2.0**-53}


def quadratic(center: float, dtype: torch.dtype, device: str = "cpu"):
    """x -> f(x) evaluated in ``dtype``, and its derivative, for f = (x - center)^2 + 1."""
    c = torch.tensor(center, dtype=dtype, device=device)

    def value(x: float) -> float:
        t = torch.tensor(x, dtype=dtype, device=device)
        return ((t - c) ** 2 + 1).item()

    def slope(x: float) -> float:
        return (2 * (torch.tensor(x, dtype=dtype, device=device) - c)).item()

    return value, slope, float(c.double())


def regression_line(seed: int, dtype: torch.dtype, device: str = "cpu"):
    """t -> L(w* + t u) evaluated in ``dtype`` (w* the float64 least-squares fit, u a random unit
    direction) and its derivative; the minimiser is t = 0."""
    task = LinearRegression(seed=seed)
    weights, bias, _ = task.minimum()
    point = torch.cat([weights, bias.reshape(1)])
    direction = torch.randn(point.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    direction = direction / direction.norm()
    design = torch.cat([task.train_inputs, torch.ones_like(task.train_targets)], dim=1).to(device, dtype)
    targets = task.train_targets.to(device, dtype)
    point, direction = point.to(device, dtype), direction.to(device, dtype)

    def value(t: float) -> float:
        residual = design @ (point + torch.tensor(t, dtype=dtype, device=device) * direction).unsqueeze(1) - targets
        return residual.square().mean().item()

    def slope(t: float) -> float:
        residual = design @ (point + torch.tensor(t, dtype=dtype, device=device) * direction).unsqueeze(1) - targets
        return (2 * (residual * (design @ direction.unsqueeze(1))).mean()).item()

    return value, slope, 0.0


def by_function_values(value, center: float) -> float:
    """Golden-section search from a bracket around ``center``, to the end of resolution."""
    result = minimize_scalar(value, bracket=(center - 1.0, center + 0.5, center + 1.0), method="golden",
                             options={"xtol": 1e-30, "maxiter": 10_000})
    return float(result.x)


def by_gradient(slope, center: float) -> float:
    """Bisection on f' from [center - 1, center + 1] until the derivative's sign cannot be told apart."""
    low, high = center - 1.0, center + 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if slope(middle) > 0:
            high = middle
        else:
            low = middle
    return 0.5 * (low + high)


def main(argv=None):
    parser = study_parser(__doc__, "5 problems of each kind (a few seconds)")
    args = parser.parse_args(argv)
    out = study_folder(args, "precision")
    count = 5 if args.quick else 50
    rows = []
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).replace("torch.", "")
        for seed in range(count):
            centers = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item() * 2 - 1
            problems = (("1-D quadratic (x - c)^2 + 1", quadratic(centers, dtype, args.device)),
                        ("linear regression, along a line", regression_line(seed, dtype, args.device)))
            for problem, (value, slope, center) in problems:
                for method, locate in (("function values (golden section)", lambda: by_function_values(value, center)),
                                       ("gradient (bisection on f')", lambda: by_gradient(slope, center))):
                    rows.append({"dtype": name, "problem": problem, "method": method, "seed": seed,
                                 "error": abs(locate() - center)})
    publish(out, _summary(rows), {"metrics": rows})
    _plot(out / "precision.png", rows)
    return rows


def _groups(rows):
    return dict.fromkeys((row["problem"], row["method"], row["dtype"]) for row in rows)


def _summary(rows) -> str:
    lines = ["|x_hat - x*| reached (median and max over problems), against the machine precision", "",
             "| problem | method | dtype | median error | max error | sqrt(eps) | eps |", "|---|---|---|---|---|---|---|"]
    for problem, method, dtype in _groups(rows):
        errors = [r["error"] for r in rows if (r["problem"], r["method"], r["dtype"]) == (problem, method, dtype)]
        lines.append(f"| {problem} | {method} | {dtype} | {statistics.median(errors):.2e} | {max(errors):.2e} | "
                     f"{math.sqrt(EPS[dtype]):.1e} | {EPS[dtype]:.1e} |")
    return "\n".join(lines)


def _plot(path: Path, rows) -> None:
    with saved_figure(path, figsize=(8, 4)) as (figure, axis):
        labels, data = [], []
        for problem, method, dtype in _groups(rows):
            labels.append(f"{dtype}\n{method.split(' (')[0]}\n{problem.split(',')[0][:18]}")
            data.append([max(r["error"], 1e-300) for r in rows
                         if (r["problem"], r["method"], r["dtype"]) == (problem, method, dtype)])
        axis.boxplot(data)
        axis.set_xticks(range(1, len(labels) + 1), labels, fontsize=6)
        for dtype, style in (("float32", "--"), ("float64", ":")):
            axis.axhline(math.sqrt(EPS[dtype]), ls=style, color="tab:red", lw=1, label=f"sqrt(eps), {dtype}")
            axis.axhline(EPS[dtype], ls=style, color="tab:gray", lw=1, label=f"eps, {dtype}")
        axis.set(yscale="log", ylabel="|x_hat - x*|", title="Where the minimiser can be located")
        axis.legend(fontsize=7)


if __name__ == "__main__":
    main()
