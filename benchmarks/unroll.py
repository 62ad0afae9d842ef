"""Cost of the K-step engine, side by side with a hand-written unroll, in one run.

One outer step = K inner SGD steps (learnable lr) of an MLP 64-128-10 on
sklearn's digits (batch 128), a final-loss meta-loss, its gradient with
respect to log lr, and (recurse only) the meta-optimizer's step. The
hand-written version is the same math with ``torch.func.functional_call``
and ``torch.autograd.grad(create_graph=True)``; recurse runs
``rc.MetaTrainer`` over ``rc.model_objective`` (higher's monkeypatched
model). Variants: full backpropagation, a truncation window of the last 10
steps, and first order. Memory is the peak size of the tensors autograd
graphs hold for the backward pass (tracked with ``saved_tensors_hooks``),
so it is exact and independent of the allocator.

    python benchmarks/unroll.py [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch.func import functional_call

import recurse as rc
from recurse.problems import Digits

UNROLL_STEPS = (10, 20, 50, 100)
WINDOW = 10


class _Handle:
    """What the autograd graph holds instead of a saved tensor; freed with the graph."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor):
        self.tensor = tensor


class SavedBytes:
    """Peak bytes of tensors that autograd graphs hold for their backward pass
    while active: a tensor counts from the moment it is saved until its
    graph node is freed."""

    def __init__(self):
        self.current = self.peak = 0

    def __enter__(self):
        def pack(tensor):
            size = tensor.numel() * tensor.element_size()
            self.current += size
            self.peak = max(self.peak, self.current)
            handle = _Handle(tensor)
            weakref.finalize(handle, self._release, size)
            return handle

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda handle: handle.tensor)
        self.hooks.__enter__()
        return self

    def _release(self, size):
        self.current -= size

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def setup(device, dtype="float32"):
    task = Digits(device=device, dtype=getattr(torch, dtype))
    model = task.model(128, seed=0)

    def batch_at(k):
        start = (128 * k) % (task.train_inputs.shape[0] - 128)
        return task.train_inputs[start:start + 128], task.train_targets[start:start + 128]

    return model, batch_at


def handwritten(model, batch_at, steps, variant):
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    log_lr = torch.tensor([-2.3], device=params[0].device, dtype=params[0].dtype, requires_grad=True)
    tracked_from = steps - WINDOW if variant == "window" else 0

    def loss_at(params, k):
        inputs, targets = batch_at(k)
        return F.cross_entropy(functional_call(model, dict(zip(names, params)), (inputs,)), targets)

    def outer_step():
        nonlocal params
        current = [p.requires_grad_() for p in params]
        lr = log_lr.exp()
        for k in range(steps):
            if k < tracked_from:
                current = [p.detach().requires_grad_() for p in current]
            grads = torch.autograd.grad(loss_at(current, k), current,
                                        create_graph=k >= tracked_from and variant != "first order")
            step_lr = lr if k >= tracked_from else lr.detach()
            current = [p - step_lr * g for p, g in zip(current, grads)]
        (meta_gradient,) = torch.autograd.grad(loss_at(current, steps), log_lr)
        params = [p.detach() for p in current]
        return meta_gradient

    return outer_step


def with_recurse(model, batch_at, steps, variant):
    objective = rc.model_objective(model, F.cross_entropy, batch_at)
    trainer = rc.MetaTrainer([p.detach().clone() for p in model.parameters()], objective,
                             [rc.SGD(0.1, learn="lr"), rc.SGD(1e-3)], unroll_steps=[steps],
                             window=WINDOW if variant == "window" else None, first_order=variant == "first order")
    return trainer.meta_step


def measure(model, batch_at, steps, variant, repeats):
    """Median ms per outer step and peak graph MB, hand-written vs recurse,
    the two timed in alternation so that machine noise hits both alike."""
    outer_steps = [make(model, batch_at, steps, variant) for make in (handwritten, with_recurse)]
    memory = []
    for outer_step in outer_steps:
        outer_step()  # warm-up
        with SavedBytes() as saved:
            outer_step()
        memory.append(saved.peak / 2**20)
    times = [[], []]
    for _ in range(repeats):
        for index, outer_step in enumerate(outer_steps):
            start = time.perf_counter()
            outer_step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[index].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times], memory


def unroll_parser(doc: str, unroll_steps) -> argparse.ArgumentParser:
    """The command line of the unroll benchmarks: --repeats, --device, --dtype, --steps K ..."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="of the model, the data and log lr")
    parser.add_argument("--steps", type=int, nargs="+", default=list(unroll_steps), help="unroll lengths K")
    return parser


def main(argv=None):
    args = unroll_parser(__doc__, UNROLL_STEPS).parse_args(argv)
    torch.manual_seed(0)
    model, batch_at = setup(args.device, args.dtype)
    print(f"digits MLP 64-128-10, batch 128, SGD inner steps, {args.device}, {args.dtype}, median of {args.repeats}, interleaved; "
          f"memory = peak of tensors held for backward\n")
    print("| K | variant | hand-written ms | recurse ms | time ratio | hand-written MB | recurse MB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for variant in ("full", "window", "first order"):
        for steps in args.steps:
            (hand_ms, mine_ms), (hand_mb, mine_mb) = measure(model, batch_at, steps, variant, args.repeats)
            label = f"window {WINDOW}" if variant == "window" else variant
            print(f"| {steps} | {label} | {hand_ms:.1f} | {mine_ms:.1f} | {mine_ms / hand_ms:.2f}x | "
                  f"{hand_mb:.1f} | {mine_mb:.1f} |", flush=True)
            rows.append((steps, variant, hand_ms, mine_ms, hand_mb, mine_mb))
    return rows


if __name__ == "__main__":
    main()
