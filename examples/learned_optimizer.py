"""Meta-train an LSTM optimizer on sampled quadratics, save it, load it back
and test it on held-out tasks against Adam.

    python examples/learned_optimizer.py [--meta-steps 300] [--out lstm.pt]

A batch of 32 tasks is trained side by side (rc.problems.QuadraticBatch: the
coordinatewise LSTM steps every task independently). Every 5 meta-steps of
20 inner steps, trainer.new_task starts a fresh batch, while Adam's state on
the LSTM weights carries on. The meta-loss is the sum of per-task log losses.
"""

import argparse

import torch

import recurse as rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-steps", type=int, default=300)
    parser.add_argument("--out", default="lstm.pt", help="where to save the learned optimizer")
    args = parser.parse_args(argv)

    family = rc.problems.QuadraticFamily(10, seed=0)
    start = [torch.zeros(32, 10, dtype=torch.float64)]

    def objectives(tasks):  # inner gradients from the summed loss, meta-loss from per-task log losses
        return (lambda params, k: tasks.loss(params[0])), (lambda params, k: tasks.losses(params[0]).log().sum())

    objective, meta_objective = objectives(family.sample_batch(32))
    trainer = rc.MetaTrainer(start, objective, [rc.LSTMOptimizer(), rc.Adam(3e-3)], unroll_steps=[20], write_back=False,
                             meta_loss="sum", meta_objective=meta_objective, first_order=True)
    for meta_step in range(args.meta_steps):
        if meta_step and meta_step % 5 == 0:
            trainer.new_task(start, *objectives(family.sample_batch(32)))
        trainer.meta_step()
    rc.checkpoint.save(trainer.optimizers[0].state_dict(), args.out)

    held_out = rc.problems.QuadraticFamily(10, seed=1).sample_batch(100)
    contenders = {"LSTM before meta-training": rc.LSTMOptimizer(),
                  "LSTM, meta-trained (loaded back)": rc.LSTMOptimizer.from_state_dict(rc.checkpoint.load(args.out)),
                  "Adam (lr 0.1)": rc.Adam(0.1)}
    results = {}
    for name, optimizer in contenders.items():
        history, _ = rc.evaluate(optimizer, lambda params, k: held_out.losses(params[0]),
                                 [torch.zeros(100, 10, dtype=torch.float64)], steps=100)
        results[name] = history[-1].log10().mean().item()
        print(f"{name}: mean log10 final loss on 100 held-out tasks {results[name]:.3f}")
    return results


if __name__ == "__main__":
    main()
