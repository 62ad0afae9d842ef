"""What torch.optim's flags and skipped parameters cost, side by side with torch.optim, in one run.

MLP 784-128-10 with a second head (128-10) that a step uses or not,
batch 256, random data. Each row times torch.optim and recurse on the same
model and batches, methods interleaved, and prints ms/step and the ratio to
the torch.optim row of its group:

- amsgrad: torch.optim.Adam(amsgrad=True) against recurse at depth 0 and
  depth 1 (Adam learning its lr, closed form; and learning all its knobs,
  where beta2 takes autograd through the running maximum), with Adam
  without amsgrad for reference;
- skipped parameters: the same depth-1 tower and torch.optim.Adam when the
  second head is used at every step, never (its .grad stays None: a frozen
  layer), and on alternate steps (the head and the trunk then took
  different numbers of steps, so recurse steps them in two batches).

    python benchmarks/drop_in.py [--steps 200] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import torch
from overhead import interleaved_medians, timing_setup

import recurse as rc


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU())
        self.head = torch.nn.Linear(128, 10)
        self.second = torch.nn.Linear(128, 10)

    def forward(self, inputs, both):
        hidden = self.trunk(inputs)
        return self.head(hidden) + self.second(hidden) if both else self.head(hidden)


def depth_one(learn="lr", **options):
    return rc.Adam(1e-3, learn=learn, hyper=rc.SGD(1e-3, normalize="rms"), **options)


GROUPS = {
    "amsgrad": (lambda step: True, {
        "torch.optim Adam(amsgrad=True)": lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
        "torch.optim Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "recurse depth 0, amsgrad": lambda p: rc.HyperOptimizer(p, rc.Adam(1e-3, amsgrad=True)),
        "recurse depth 1 (lr), amsgrad": lambda p: rc.HyperOptimizer(p, depth_one(amsgrad=True)),
        "recurse depth 1 (lr)": lambda p: rc.HyperOptimizer(p, depth_one()),
        "recurse depth 1 (all knobs), amsgrad": lambda p: rc.HyperOptimizer(p, depth_one(learn=None, amsgrad=True)),
        "recurse depth 1 (all knobs)": lambda p: rc.HyperOptimizer(p, depth_one(learn=None)),
    }),
}
for pattern, uses in (("every step", lambda step: True), ("never (frozen)", lambda step: False),
                      ("alternate steps", lambda step: step % 2 == 0)):
    GROUPS[f"second head used {pattern}"] = (uses, {
        "torch.optim Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "recurse depth 1 (lr)": lambda p: rc.HyperOptimizer(p, depth_one()),
    })


def make_runner(make, uses, device, inputs, labels):
    model = TwoHeads().to(device)
    opt = make(model.parameters())
    count = [0]

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs, uses(count[0])), labels).backward()
        opt.step()
        count[0] += 1

    return step


def main(argv=None):
    args, device, inputs, labels = timing_setup(__doc__, argv)
    print(f"MLP 784-128-10 + a second head, batch 256; median of {args.repeats} rounds x {args.steps} steps, "
          "methods interleaved within each group\n")
    print("| group | method | ms/step | ratio to the group's first row |")
    print("|---|---|---|---|")
    rows = []
    for group, (uses, methods) in GROUPS.items():
        runners = {name: make_runner(make, uses, device, inputs, labels) for name, make in methods.items()}
        medians = interleaved_medians(runners, args, device, warm_up=10)
        baseline = medians[next(iter(methods))]
        for name, ms in medians.items():
            print(f"| {group} | {name} | {ms:.3f} | {ms / baseline:.2f} |")
            rows.append((group, name, ms, ms / baseline))
    return rows


if __name__ == "__main__":
    main()
