"""Cost of a tower, side by side with torch.optim, in one run.

MLP 784-128-10, batch 256, random data. For each optimizer family (SGD,
Adam learning all its knobs, Adam learning only lr) it times torch.optim
and recurse stacks of depth 0, 1, 2, 4, 8 (each level the same family) and
prints ms/step, the ratio to torch.optim, and the cost of the levels as a
fraction of a depth-0 step: averaged over all levels, and marginal (from
one measured depth to the next), since the first learned level costs more
than the ones above it. Every recurse row runs with the default non-finite
guard (one read of the new parameters per step), except "depth 0, guard
off", which shows what the guard costs.

Beside them, rows that bound what one learned level can cost here:

- SGD: depth 1 written by hand as a minimal torch.optim optimizer (the same
  arithmetic; no checks, the update in place), and the same with
  recurse's guard (the update out of place, checked in one kernel, copied
  in).
- SGD: torch.optim's step plus the one inner product a level-1
  hypergradient needs, g_t . g_{t-1}, and nothing else: what reading the
  kept gradient (no longer in cache by the next step) costs on its own.
- Adam: torch.optim's Adam plus the three inner products of g_t with
  m_{t-1}, v_{t-1} and g_{t-1}: the fewest reads a level learning lr,
  betas and eps can make, since each of its rows is an inner product of g_t
  with a pointwise function of those three vectors.
- Adam, lr only: depth 1 by hand (torch.optim's foreach Adam in place,
  keeping its direction for the hypergradient).
- AdamW: torch.optim.AdamW at its defaults beside recurse's recommended
  tower, ``rc.HyperOptimizer(params)`` (recurse.defaults).

For these rows the level-cost column is their time over torch.optim's
step, as a percentage of recurse's depth-0 step, so that it reads against
recurse's first level. The Adam families also time depth 1 with
``rc.Adam(compile=True)`` at level 0 (its closed form through
torch.compile; compiled during the warm-up). The run ends by checking that
the hand-written and compiled towers learned the same lr as recurse's
depth 1.

    python benchmarks/overhead.py [--steps 200] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import recurse as rc

DEPTHS = (0, 1, 2, 4, 8)
HAND_WRITTEN = "depth 1 by hand (torch.optim.Optimizer, in place, no guard)"
HAND_GUARDED = "depth 1 by hand, guarded as recurse is (out of place, checked, copied in)"
INNER_PRODUCT_ONLY = "torch.optim + the inner product g_t . g_{t-1} alone (no level 1)"
THREE_PRODUCTS_ONLY = "torch.optim + the inner products of g_t with m_{t-1}, v_{t-1}, g_{t-1} alone (no level 1)"
COMPILED = "recurse depth 1, Adam(compile=True)"
RECOMMENDED = "recurse's recommended tower, rc.HyperOptimizer(params)"
BUILT_ON_TORCH_OPTIM = (HAND_WRITTEN, HAND_GUARDED, INNER_PRODUCT_ONLY, THREE_PRODUCTS_ONLY)


def make_model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)


def tower_of(family, depth, compile=False):
    """``compile``: level 0 (an Adam) computes its closed form through torch.compile."""
    if family == "AdamW":
        return rc.AdamW(1e-3)
    if family == "SGD":
        levels = [rc.SGD(0.05)] + [rc.SGD(1e-3, normalize="rms") for _ in range(depth)]
    elif family == "Adam":
        levels = [rc.Adam(1e-3, compile=compile)] + [rc.Adam(1e-4, normalize="rms") for _ in range(depth)]
    else:  # "Adam, lr only": every level below the top learns only its learning rate
        def learn(level):
            return "lr" if level < depth else ()

        levels = [rc.Adam(1e-3, learn=learn(0), compile=compile)] + [
            rc.Adam(1e-4, learn=learn(level), normalize="rms") for level in range(1, depth + 1)]
    return rc.stack(*levels)


def inner_products(xs, yss):
    """[sum_i <xs_i, ys_i> for ys in yss] over lists of tensors, as Python floats read in one go."""
    dots = torch.stack([torch.dot(x.view(-1), y.view(-1)) for ys in yss for x, y in zip(xs, ys)])
    return dots.view(len(yss), -1).sum(1).tolist()


def inner_product(xs, ys):
    """sum_i <xs_i, ys_i> over two lists of tensors, as a Python float."""
    return inner_products(xs, [ys])[0]


class InnerProductsAlone:
    """A torch.optim optimizer that also takes, before each step, the inner
    products of the new gradient with the vectors it kept after the last
    step (those a level-1 hypergradient reads), and does nothing with them."""

    kept = inner = None

    def step(self):
        grads = [param.grad for param in self.param_groups[0]["params"]]
        if self.kept is not None:
            self.inner = inner_products(grads, self.kept)
        result = super().step()
        self.kept = self.vectors_to_keep(grads)
        return result

    def vectors_to_keep(self, grads):
        raise NotImplementedError


class SGDWithInnerProduct(InnerProductsAlone, torch.optim.SGD):
    """torch.optim.SGD + g_t . g_{t-1}, the one inner product of a level-1
    hypergradient, keeping each step's gradients for the next."""

    def vectors_to_keep(self, grads):
        return [grads]


class AdamWithInnerProducts(InnerProductsAlone, torch.optim.Adam):
    """torch.optim.Adam + the inner products of g_t with m_{t-1}, v_{t-1}
    (torch.optim's state, updated in place) and g_{t-1}: every row of a
    level learning lr, betas and eps is an inner product of g_t with a
    pointwise function of those three vectors, so it reads at least them."""

    def vectors_to_keep(self, grads):
        params = self.param_groups[0]["params"]
        return [[self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params], grads]


class HandWrittenLevel(torch.optim.Optimizer):
    """What the hand-written depth-1 towers below share, as the smallest
    torch.optim.Optimizer (so they pay torch.optim's step and zero_grad
    machinery, as torch.optim does): level 0's learning rate as log_lr,
    the direction of its last update kept (uncopied) for the next
    hypergradient d loss / d log lr = -lr g_t . u_{t-1}, and that
    hypergradient divided by its running RMS (decay 0.99) for level 1."""

    def __init__(self, params, lr):
        super().__init__(params, {})
        self.log_lr, self.previous, self.mean_square, self.hyper_steps = math.log(lr), None, 0.0, 0

    @torch.no_grad()
    def step(self):
        params = self.param_groups[0]["params"]
        grads = [param.grad for param in params]
        if self.previous is not None:
            hypergradient = -math.exp(self.log_lr) * inner_product(grads, self.previous)
            self.hyper_steps += 1
            self.mean_square = 0.99 * self.mean_square + 0.01 * hypergradient**2
            self.step_log_lr(hypergradient / math.sqrt(self.mean_square / (1 - 0.99**self.hyper_steps) + 1e-24))
        self.previous = self.step_model(params, grads, math.exp(self.log_lr))

    def step_log_lr(self, normalised):
        """Level 1: step log_lr on the normalised hypergradient."""
        raise NotImplementedError

    def step_model(self, params, grads, lr):
        """Level 0: step the model; returns the direction to keep."""
        raise NotImplementedError


class HandWrittenDepthOne(HandWrittenLevel):
    """tower_of("SGD", 1) by hand: level 1 steps log lr by SGD; level 0 then
    steps the model in place with the new lr. No checks, no copy of the
    gradient. ``guarded``: as recurse's default guard does, the new
    parameters are computed out of place, checked for NaN/inf in one kernel
    and only then copied in."""

    def __init__(self, params, guarded=False):
        super().__init__(params, lr=0.05)
        device = self.param_groups[0]["params"][0].device
        self.guarded, self.found, self.scale = guarded, torch.zeros((), device=device), torch.ones((), device=device)

    def step_log_lr(self, normalised):
        self.log_lr -= 1e-3 * normalised

    def step_model(self, params, grads, lr):
        if self.guarded:
            proposed = torch._foreach_add(params, grads, alpha=-lr)
            torch._amp_foreach_non_finite_check_and_unscale_(proposed, self.found, self.scale)
            if self.found.item():
                raise FloatingPointError("non-finite step")
            torch._foreach_copy_(params, proposed)
        else:
            torch._foreach_add_(params, grads, alpha=-lr)
        return grads  # (zero_grad sets .grad to None: these stay as they are)


class HandWrittenAdamDepthOne(HandWrittenLevel):
    """tower_of("Adam, lr only", 1) by hand: level 0 is torch.optim's
    foreach Adam in place, except that it keeps its direction
    u_t = m_t / (1 - beta1^t) / (sqrt(v_t) / sqrt(1 - beta2^t) + eps) (one
    more list of tensors) for the next hypergradient; level 1 is Adam on
    log lr, in Python floats. No guard."""

    def __init__(self, params):
        super().__init__(params, lr=1e-3)
        params = self.param_groups[0]["params"]
        self.steps, self.hyper_m, self.hyper_v = 0, 0.0, 0.0
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]

    def step_log_lr(self, normalised):
        t = self.hyper_steps
        self.hyper_m += 0.1 * (normalised - self.hyper_m)
        self.hyper_v = 0.999 * self.hyper_v + 0.001 * normalised**2
        self.log_lr -= 1e-4 / (1 - 0.9**t) * self.hyper_m / (math.sqrt(self.hyper_v) / math.sqrt(1 - 0.999**t) + 1e-8)

    def step_model(self, params, grads, lr):
        t = self.steps = self.steps + 1
        torch._foreach_lerp_(self.exp_avgs, grads, 0.1)
        torch._foreach_mul_(self.exp_avg_sqs, 0.999)
        torch._foreach_addcmul_(self.exp_avg_sqs, grads, grads, 0.001)
        denominators = torch._foreach_sqrt(self.exp_avg_sqs)
        torch._foreach_div_(denominators, math.sqrt(1 - 0.999**t))
        torch._foreach_add_(denominators, 1e-8)
        directions = torch._foreach_div(self.exp_avgs, denominators)
        torch._foreach_div_(directions, 1 - 0.9**t)
        torch._foreach_add_(params, directions, alpha=-lr)
        return directions


def make_runner(name, family, depth, device, inputs, labels):
    model = make_model(device)
    if name == HAND_WRITTEN and family != "SGD":
        opt = HandWrittenAdamDepthOne(model.parameters())
    elif name in (HAND_WRITTEN, HAND_GUARDED):
        opt = HandWrittenDepthOne(model.parameters(), guarded=name == HAND_GUARDED)
    elif name == INNER_PRODUCT_ONLY:
        opt = SGDWithInnerProduct(model.parameters(), lr=0.05)
    elif name == THREE_PRODUCTS_ONLY:
        opt = AdamWithInnerProducts(model.parameters(), lr=1e-3)
    elif name == "torch.optim":
        opt = (torch.optim.SGD(model.parameters(), lr=0.05) if family == "SGD"
               else torch.optim.AdamW(model.parameters(), lr=1e-3) if family == "AdamW"
               else torch.optim.Adam(model.parameters(), lr=1e-3))
    elif name == RECOMMENDED:
        opt = rc.HyperOptimizer(model.parameters())
    else:
        guard = "off" if name.endswith("guard off") else "skip"
        opt = rc.HyperOptimizer(model.parameters(), tower_of(family, depth, compile=name == COMPILED), guard=guard)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        opt.step()

    def recurse_lr():
        return opt.hyperparameters()["0.lr"]

    learned_lr = {"recurse depth 1": recurse_lr, COMPILED: recurse_lr, HAND_WRITTEN: lambda: math.exp(opt.log_lr),
                  HAND_GUARDED: lambda: math.exp(opt.log_lr)}.get(name)
    return step, learned_lr


def time_steps(step, steps, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def interleaved_medians(runners, args, device, *, warm_up):
    """{name: median ms/step} of each step function in ``runners`` over
    ``args.repeats`` rounds of ``args.steps`` steps, the methods taking turns
    within each round, after ``warm_up`` steps of each."""
    for run in runners.values():
        time_steps(run, warm_up, device)
    samples = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            samples[name].append(time_steps(run, args.steps, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def timing_setup(description, argv):
    """The options every timing benchmark here takes (--steps, --repeats,
    --device), and one random batch of 256 MNIST-sized inputs with labels
    on that device; prints the versions and the thread count."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (256,), generator=generator).to(device)
    print(f"recurse {rc.__version__}, torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    return args, device, inputs, labels


def main(argv=None):
    args, device, inputs, labels = timing_setup(__doc__, argv)
    print(f"MLP 784-128-10, batch 256; median of {args.repeats} rounds x {args.steps} steps, methods interleaved\n")
    print("| family | method | ms/step | ratio to torch.optim | mean cost per level (% of depth-0 step) | "
          "marginal cost per level since the previous depth (%) |")
    print("|---|---|---|---|---|---|")
    checks = []
    for family in ("SGD", "Adam", "Adam, lr only", "AdamW"):
        methods = [("torch.optim", 0), ("recurse depth 0, guard off", 0)] + [(f"recurse depth {d}", d) for d in DEPTHS]
        if family == "AdamW":  # (the recommended tower against what users run untuned)
            methods = methods[:3] + [(RECOMMENDED, 2)]
        elif family == "SGD":
            methods[3:3] = [(INNER_PRODUCT_ONLY, 0), (HAND_WRITTEN, 1), (HAND_GUARDED, 1)]
        else:
            methods.insert(4, (COMPILED, 1))
            if family == "Adam":
                methods.insert(3, (THREE_PRODUCTS_ONLY, 0))
            if family == "Adam, lr only":
                methods.insert(3, (HAND_WRITTEN, 1))
        built = {name: make_runner(name, family, depth, device, inputs, labels) for name, depth in methods}
        medians = interleaved_medians({name: run for name, (run, _) in built.items()}, args, device, warm_up=20)
        baseline, depth0 = medians["torch.optim"], medians["recurse depth 0"]
        previous = None
        for name, depth in methods:
            recurse_tower = name.startswith("recurse depth") and name != COMPILED
            if name in BUILT_ON_TORCH_OPTIM:  # (what its level costs over torch.optim's step)
                per_level = f"{100 * (medians[name] - baseline) / depth0:.1f}"
            elif depth == 0 or not name.startswith("recurse depth"):
                per_level = ""
            else:
                per_level = f"{100 * (medians[name] - depth0) / depth0 / depth:.1f}"
            marginal = ""
            if recurse_tower and previous is not None and depth > previous[1]:
                marginal = f"{100 * (medians[name] - previous[0]) / depth0 / (depth - previous[1]):.1f}"
            if recurse_tower and not name.endswith("guard off"):
                previous = (medians[name], depth)
            print(f"| {family} | {name} | {medians[name]:.3f} | {medians[name] / baseline:.2f} | {per_level} | "
                  f"{marginal} |")
        # Each pair took the same steps on the same batch: they must have learned the same lr.
        others = {"SGD": (HAND_WRITTEN, HAND_GUARDED), "Adam": (COMPILED,), "Adam, lr only": (HAND_WRITTEN, COMPILED),
                  "AdamW": ()}
        for other in others[family]:
            ours, theirs = built["recurse depth 1"][1](), built[other][1]()
            checks.append(f"{family}: learned lr after {20 + args.repeats * args.steps} steps, recurse depth 1 "
                          f"{ours:.6g}, {other} {theirs:.6g}: relative difference {abs(ours - theirs) / theirs:.1e}")
    print("\n" + "\n".join(checks))


if __name__ == "__main__":
    main()
