"""Meta-training with unrolls ("learning to learn" style) on the quadratic family.

rc.MetaTrainer learns Adam's learning rate from 20-step unrolls on sampled
10-d quadratics (a fresh task every few meta-steps, parameters restarting
from zero, via trainer.new_task), then the learned rate is evaluated on held-out tasks against
Adam at its starting rate.

    python examples/meta_training.py [--tasks 20]
"""

import argparse

import torch

import recurse as rc


def final_loss(task, lr, steps=100):
    theta = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
    return task.loss(theta).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20, help="training tasks (5 meta-steps each)")
    args = parser.parse_args(argv)

    training = rc.problems.QuadraticFamily(10, seed=0)
    start = [torch.zeros(10, dtype=torch.float64)]
    task = training.sample()
    trainer = rc.MetaTrainer(start, lambda p, k: task.loss(p[0]),
                             [rc.Adam(1e-3, learn="lr"), rc.Adam(0.1)],  # the outer Adam steps log lr
                             unroll_steps=[20], meta_loss="sum", write_back=False)  # (start: each task's start)
    for task_number in range(args.tasks):
        if task_number:
            task = training.sample()
            trainer.new_task(start, lambda p, k, task=task: task.loss(p[0]))  # the meta-state carries on
        for _ in range(5):
            trainer.meta_step()
    learned = trainer.optimizers[0].current_values()["lr"]

    held_out = rc.problems.QuadraticFamily(10, seed=1)
    tasks = [held_out.sample() for _ in range(20)]
    before = sum(final_loss(task, 1e-3) for task in tasks) / len(tasks)
    after = sum(final_loss(task, learned) for task in tasks) / len(tasks)
    print(f"learned lr {learned:.4f} (from 1e-3); held-out mean final loss {before:.3f} -> {after:.3f}")
    return learned, before, after


if __name__ == "__main__":
    main()
