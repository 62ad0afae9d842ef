"""The K-step meta-gradient side by side: recurse, raw higher, hand-written torch.func.

From the same starting weights of an MLP 64-128-10 on digits (batch 128),
each implementation runs K inner SGD steps with lr = exp(log_lr), takes the
final loss and its gradient with respect to log_lr (second derivatives
included):

- recurse: ``rc.unroll`` over ``rc.model_objective`` with ``rc.SGD(learn="lr")``;
- higher: ``higher.innerloop_ctx`` with torch.optim.SGD and ``override={"lr": ...}``;
- torch.func: a hand-written loop with ``torch.func.functional_call``.

Reported per K: median ms (the three timed in alternation), peak size of the
tensors the autograd graph holds (see benchmarks/unroll.py), and the largest
relative difference of the meta-gradients from the torch.func one.

    python benchmarks/peers_unroll.py [--repeats 5] [--device cuda] [--dtype float64]
"""

from __future__ import annotations

import statistics
import time

import higher
import torch
import torch.nn.functional as F
from torch.func import functional_call
from unroll import SavedBytes, setup, unroll_parser

import recurse as rc

UNROLL_STEPS = (10, 50, 100)
LOG_LR = -2.3


def with_recurse(model, batch_at, steps):
    objective = rc.model_objective(model, F.cross_entropy, batch_at)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = rc.SGD(0.1, learn="lr").to(start[0].device, start[0].dtype)

    def meta_gradient():
        raw = torch.tensor([LOG_LR], device=start[0].device, dtype=start[0].dtype, requires_grad=True)
        result = rc.unroll(objective, start, optimizer, steps=steps, raw=raw)
        return torch.autograd.grad(result.meta_loss, raw)[0]

    return meta_gradient


def with_higher(model, batch_at, steps):
    inner = torch.optim.SGD(model.parameters(), lr=0.1)

    def meta_gradient():
        reference = next(model.parameters())
        log_lr = torch.tensor([LOG_LR], device=reference.device, dtype=reference.dtype, requires_grad=True)
        with higher.innerloop_ctx(model, inner, override={"lr": [log_lr.exp()]},
                                  copy_initial_weights=True) as (functional, differentiable):
            for k in range(steps):
                inputs, targets = batch_at(k)
                differentiable.step(F.cross_entropy(functional(inputs), targets))
            inputs, targets = batch_at(steps)
            meta_loss = F.cross_entropy(functional(inputs), targets)
        return torch.autograd.grad(meta_loss, log_lr)[0]

    return meta_gradient


def with_torch_func(model, batch_at, steps):
    names = [name for name, _ in model.named_parameters()]
    start = [p.detach().clone() for p in model.parameters()]

    def loss_at(params, k):
        inputs, targets = batch_at(k)
        return F.cross_entropy(functional_call(model, dict(zip(names, params)), (inputs,)), targets)

    def meta_gradient():
        log_lr = torch.tensor([LOG_LR], device=start[0].device, dtype=start[0].dtype, requires_grad=True)
        lr, params = log_lr.exp(), [p.clone().requires_grad_() for p in start]
        for k in range(steps):
            grads = torch.autograd.grad(loss_at(params, k), params, create_graph=True)
            params = [p - lr * g for p, g in zip(params, grads)]
        return torch.autograd.grad(loss_at(params, steps), log_lr)[0]

    return meta_gradient


IMPLEMENTATIONS = {"torch.func": with_torch_func, "higher": with_higher, "recurse": with_recurse}


def main(argv=None):
    args = unroll_parser(__doc__, UNROLL_STEPS).parse_args(argv)
    model, batch_at = setup(args.device, args.dtype)
    names = list(IMPLEMENTATIONS)
    print(f"digits MLP 64-128-10, batch 128, K SGD steps, final-loss meta-gradient w.r.t. log lr, {args.device}, "
          f"{args.dtype}, median of {args.repeats}, interleaved\n")
    print("| K | " + " | ".join(f"{name} ms" for name in names) + " | recurse / torch.func | "
          + " | ".join(f"{name} MB" for name in names) + " | max relative meta-gradient difference |")
    print("|---|" + "---|" * (2 * len(names) + 2))
    rows = []
    for steps in args.steps:
        runs = {name: make(model, batch_at, steps) for name, make in IMPLEMENTATIONS.items()}
        gradients, memory = {}, {}
        for name, run in runs.items():
            with SavedBytes() as saved:
                gradients[name] = run()
            memory[name] = saved.peak / 2**20
        reference = gradients["torch.func"]
        difference = max(((g - reference).abs() / reference.abs()).max().item() for g in gradients.values())
        times = {name: [] for name in names}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
        print(f"| {steps} | " + " | ".join(f"{ms[name]:.1f}" for name in names)
              + f" | {ms['recurse'] / ms['torch.func']:.2f}x | " + " | ".join(f"{memory[name]:.1f}" for name in names)
              + f" | {difference:.1e} |", flush=True)
        rows.append((steps, ms, memory, difference))
    return rows


if __name__ == "__main__":
    main()
