"""A custom optimizer in a few lines, then used as a level of a tower.

    python examples/custom_optimizer.py
"""

import torch

import recurse as rc


class SignSGD(rc.Optimizer):
    """p <- p - lr * sign(g) (signSGD), with a learnable lr."""

    hyperparameter_specs = (rc.Hyperparameter("lr", rc.constraints.positive),)

    def __init__(self, lr=0.01, **options):
        super().__init__(lr=lr, **options)

    def init(self, params):
        return {}

    def update(self, params, grads, state, hyper, *, closure=None):
        return [p - hyper["lr"] * g.sign() for p, g in zip(params, grads)], state


def main():
    task = rc.problems.QuadraticFamily(10, seed=0).sample()
    theta = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    # SignSGD trains theta; SGD learns SignSGD's lr; a second SignSGD learns that SGD's lr.
    opt = rc.HyperOptimizer([theta], rc.stack(SignSGD(1e-3), rc.SGD(0.05, normalize="rms"), SignSGD(0.01)))
    start = task.loss(theta).item()
    for _ in range(200):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
    print(f"loss {start:.3f} -> {task.loss(theta).item():.3f}; learned: {opt.hyperparameters()}")
    return start, task.loss(theta).item(), opt.hyperparameters()


if __name__ == "__main__":
    main()
