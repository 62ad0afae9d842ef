"""Can derivatives at one point replace many first-order steps?

(a) One Newton step on linear regression and on quadratics reaches the
    closed-form optimum: ||w - w*|| / ||w*|| in float64 and float32.
(b) Loss after ONE step using derivatives of order k = 1..4 at the start, vs
    the number of gradient-descent and Adam steps (learning rate: the best of a
    small grid) needed to reach the same loss; cost of the order-k step in
    gradient-evaluation equivalents (backward passes: sum_{j<k} n^j for the
    derivative tensors of an n-dimensional problem). Problems: Rosenbrock
    (2-D), the two 1-D landscapes, and (orders 1-2 only: 650 parameters)
    logistic regression on digits, whose Hessian is singular (softmax is
    invariant to a shift of all scores), so its order-2 step is damped Newton
    (damping 1e-4).
(c) Where one-step methods fail: Newton from x = 1 on x^3 walks into the
    saddle at 0; on x cos(pi x) the minimum reached depends on the start
    (basins per method, plotted).

    python studies/one_exact_step.py [--quick] [--out DIR]

Writes closed_form.csv, one_step.csv, basins.csv, summary.md, basins.png to
DIR (default results/one_exact_step/<quick|full>).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import recurse as rc
from recurse import exact
from recurse.problems import Cubic, Digits, LinearRegression, QuadraticFamily, Rosenbrock, XCosPiX
from recurse.reporting import progress, publish, saved_figure, study_folder, study_parser

LEARNING_RATES = [10.0 ** e for e in range(-5, 1)]
DAMPING = 1e-4


def closed_form_rows(tasks: int, device: str = "cpu") -> list[dict]:
    rows = []
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).replace("torch.", "")
        for seed in range(tasks):
            # drawn in float64, then cast: the same data in both precisions
            task = LinearRegression(seed=seed, device=device)
            for name_ in ("train_inputs", "train_targets", "valid_inputs", "valid_targets"):
                setattr(task, name_, getattr(task, name_).to(dtype))
            model = task.model()
            opt = rc.HyperOptimizer(model.parameters(), rc.Newton())
            opt.step(lambda: task.loss(model, task.train_inputs, task.train_targets))
            weights, bias, _ = LinearRegression(seed=seed).minimum()  # the reference, solved in float64
            found = torch.cat([model.weight[0].double(), model.bias.double()]).detach().cpu()
            target = torch.cat([weights, bias.reshape(1)])
            rows.append({"problem": "linear regression (20 features)", "dtype": name, "seed": seed,
                         "relative_error": ((found - target).norm() / target.norm()).item()})
            quadratic = QuadraticFamily(10, seed=seed, dtype=torch.float64).sample()
            solution, _ = quadratic.minimum()
            theta = torch.zeros(10, dtype=dtype, device=device, requires_grad=True)
            weights32, targets32 = quadratic.weights.to(device, dtype), quadratic.targets.to(device, dtype)
            opt = rc.HyperOptimizer([theta], rc.Newton())
            opt.step(lambda: (weights32 @ theta - targets32).square().sum())
            rows.append({"problem": "quadratic family (10-d)", "dtype": name, "seed": seed,
                         "relative_error": ((theta.detach().double().cpu() - solution).norm()
                                            / solution.norm()).item()})
    return rows


def logistic_regression(device: str):
    task = Digits(dtype=torch.float64, device=device)
    inputs, targets = task.train_inputs, task.train_targets

    def loss(x):
        weights, bias = x[:640].view(64, 10), x[640:]
        return torch.nn.functional.cross_entropy(inputs @ weights + bias, targets)

    return loss, torch.zeros(650, dtype=torch.float64, device=device)


def problems(quick: bool, device: str = "cpu"):
    rosenbrock = Rosenbrock(2)
    yield "Rosenbrock (2-D)", rosenbrock.loss, rosenbrock.start(device=device), 4
    yield "x cos(pi x), from 0.5", XCosPiX().loss, torch.tensor([0.5], dtype=torch.float64, device=device), 4
    yield "exp(x) - 2x, from 1", lambda x: (torch.exp(x) - 2 * x).sum(), torch.tensor([1.0], dtype=torch.float64,
                                                                                   device=device), 4
    if not quick:
        loss, start = logistic_regression(device)
        yield "logistic regression, digits (650-d)", loss, start, 2


def first_order_steps_to_reach(loss_fn, start, target, make_optimizer, max_steps):
    """Fewest steps (best lr of the grid) for the optimizer to reach ``target``; None if never."""
    best = None
    for lr in LEARNING_RATES:
        x = start.clone().requires_grad_()
        opt = make_optimizer([x], lr)
        for step in range(1, max_steps + 1):
            opt.zero_grad()
            loss = loss_fn(x)
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                if loss_fn(x).item() <= target:
                    best = step if best is None else min(best, step)
                    break
    return best


def one_step_rows(quick: bool, args=None, device: str = "cpu") -> list[dict]:
    rows = []
    max_steps = 1000 if quick else 20000
    for name, loss_fn, start, max_order in progress(list(problems(quick, device)), args, "one-step problems"):
        start_loss = loss_fn(start).item()
        dimension = start.numel()
        for order in range(1, max_order + 1):
            if order == 1:  # a linear model has no minimiser: one gradient step at the best lr of the grid
                candidates = [exact.taylor_step(loss_fn, start, 1, lr=lr) for lr in LEARNING_RATES]
                stepped = min(candidates, key=lambda x: loss_fn(x).item())
            else:
                try:
                    stepped = exact.taylor_step(loss_fn, start, order)
                except ValueError:  # a singular Hessian (softmax's is): a damped Newton step instead
                    stepped = start + exact.newton_direction(lambda p: loss_fn(p[0]), [start], damping=DAMPING)[0] \
                        if order == 2 else None
            loss = loss_fn(stepped).item() if stepped is not None else math.nan
            reached = loss if math.isfinite(loss) else math.inf
            useful = reached < start_loss
            rows.append({
                "problem": name, "order": order, "start_loss": start_loss, "loss_after_one_step": loss,
                "cost_gradient_evaluations": sum(dimension**j for j in range(order)),
                "gd_steps_to_match": first_order_steps_to_reach(
                    loss_fn, start, reached, lambda p, lr: torch.optim.SGD(p, lr=lr), max_steps) if useful else None,
                "adam_steps_to_match": first_order_steps_to_reach(
                    loss_fn, start, reached, lambda p, lr: torch.optim.Adam(p, lr=lr), max_steps) if useful else None,
            })
    return rows


def basin_rows(points: int, args=None, device: str = "cpu") -> list[dict]:
    landscape = XCosPiX()
    (local_x, _), (global_x, _) = landscape.minima()
    rows = []
    for index in progress(range(points), args, "basin starts"):
        start = landscape.low + (landscape.high - landscape.low) * (index + 0.5) / points
        for method in ("gradient descent", "Newton", "Taylor order 3"):
            x = torch.tensor([start], dtype=torch.float64, device=device)
            outcome = "diverged"
            try:
                for _ in range(200):
                    if method == "gradient descent":
                        x = exact.taylor_step(landscape.loss, x, 1, lr=0.05)
                    else:
                        x = exact.taylor_step(landscape.loss, x, 2 if method == "Newton" else 3)
                    if not torch.isfinite(x).all() or abs(x.item()) > 1e6:
                        break
            except ValueError:
                outcome = "singular"
            value = x.item()
            if math.isfinite(value):
                curvature = exact.hessian(lambda p: landscape.loss(p[0]), [x])[0, 0].item()
                if abs(value - local_x) < 1e-6:
                    outcome = "local minimum"
                elif abs(value - global_x) < 1e-6:
                    outcome = "global minimum"
                elif curvature < 0 and abs(exact.gradient(lambda p: landscape.loss(p[0]), [x]).item()) < 1e-8:
                    outcome = "maximum"
                elif outcome != "singular":
                    outcome = "elsewhere"
            rows.append({"start": start, "method": method, "end": value, "outcome": outcome})
    return rows


def saddle_trajectory(steps: int = 12, device: str = "cpu") -> list[float]:
    x, trajectory = torch.tensor([1.0], dtype=torch.float64, device=device), []
    for _ in range(steps):
        x = x + exact.newton_direction(lambda p: Cubic().loss(p[0]), [x])[0]
        trajectory.append(x.item())
    return trajectory


def main(argv=None):
    parser = study_parser(__doc__, "3 tasks, no digits, 60 basin starts (about 30 s)")
    args = parser.parse_args(argv)
    out = study_folder(args, "one_exact_step")
    closed = closed_form_rows(3 if args.quick else 20, args.device)
    one_step = one_step_rows(args.quick, args, args.device)
    basins = basin_rows(60 if args.quick else 300, args, args.device)
    saddle = saddle_trajectory(device=args.device)
    publish(out, _summary(closed, one_step, basins, saddle),
            {"closed_form": closed, "one_step": one_step, "basins": basins})
    _plot_basins(out / "basins.png", basins)
    return closed, one_step, basins


def _summary(closed, one_step, basins, saddle) -> str:
    lines = ["(a) One Newton step vs the closed form, ||w - w*|| / ||w*|| (max over tasks)", "",
             "| problem | float64 | float32 |", "|---|---|---|"]
    for problem in dict.fromkeys(row["problem"] for row in closed):
        worst = {dtype: max(r["relative_error"] for r in closed if r["problem"] == problem and r["dtype"] == dtype)
                 for dtype in ("float64", "float32")}
        lines.append(f"| {problem} | {worst['float64']:.2e} | {worst['float32']:.2e} |")
    lines += ["", "(b) One step of order k vs first-order steps (best lr of 1e-5..1) to reach the same loss", "",
              "| problem | order k | loss: start -> after one step | cost (gradient evaluations) | "
              "GD steps to match | Adam steps to match |", "|---|---|---|---|---|---|"]
    for row in one_step:
        def steps(value):
            return "never" if value is None and row["loss_after_one_step"] < row["start_loss"] else (
                "-" if value is None else str(value))
        lines.append(f"| {row['problem']} | {row['order']} | {row['start_loss']:.4g} -> "
                     f"{row['loss_after_one_step']:.4g} | {row['cost_gradient_evaluations']} | "
                     f"{steps(row['gd_steps_to_match'])} | {steps(row['adam_steps_to_match'])} |")
    lines += ["", "(c) Newton on x^3 from x = 1: " + ", ".join(f"{x:.3g}" for x in saddle[:8]) +
              " ... (halves each step, into the saddle at 0)", "",
              "Basins on x cos(pi x), [-1, 2]: share of starts ending at each outcome", "",
              "| method | local minimum (-0.274) | global minimum (1.090) | maximum | elsewhere/diverged/singular |",
              "|---|---|---|---|---|"]
    for method in dict.fromkeys(row["method"] for row in basins):
        outcomes = [row["outcome"] for row in basins if row["method"] == method]
        share = {key: outcomes.count(key) / len(outcomes) for key in set(outcomes)}
        other = max(0.0, 1 - share.get("local minimum", 0) - share.get("global minimum", 0) - share.get("maximum", 0))
        lines.append(f"| {method} | {share.get('local minimum', 0):.0%} | {share.get('global minimum', 0):.0%} | "
                     f"{share.get('maximum', 0):.0%} | {other:.0%} |")
    return "\n".join(lines)



def _plot_basins(path: Path, basins) -> None:
    colours = {"local minimum": "tab:orange", "global minimum": "tab:green", "maximum": "tab:red",
               "elsewhere": "tab:gray", "diverged": "black", "singular": "tab:purple"}
    methods = list(dict.fromkeys(row["method"] for row in basins))
    with saved_figure(path, figsize=(8, 3.5)) as (figure, axis):
        xs = torch.linspace(-1, 2, 400, dtype=torch.float64)
        axis.plot(xs, xs * torch.cos(torch.pi * xs), color="tab:blue", lw=1, label="f(x) = x cos(pi x)")
        for level, method in enumerate(methods):
            for outcome, colour in colours.items():
                starts = [row["start"] for row in basins if row["method"] == method and row["outcome"] == outcome]
                if starts:
                    axis.scatter(starts, [-1.6 - 0.25 * level] * len(starts), s=8, color=colour,
                                 label=outcome if level == 0 else None)
            axis.text(2.05, -1.6 - 0.25 * level, method, va="center", fontsize=8)
        axis.set(xlabel="starting point x0", ylabel="f(x)", title="Where each method ends, by starting point")
        axis.legend(fontsize=7, loc="upper left", ncol=2)


if __name__ == "__main__":
    main()
