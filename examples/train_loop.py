"""A plain PyTorch training loop whose learning rate is learned online.

SGD starts at lr 0.01 on an MLP for sklearn's digits; a depth-2 tower learns
the rate while the loop stays the usual zero_grad / backward / step.

    python examples/train_loop.py [--steps 500]
"""

import argparse

import torch

import recurse as rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)

    data = rc.problems.Digits()
    model = data.model(hidden=64, seed=0)
    tower = rc.stack(rc.SGD(0.01), rc.SGD(0.05, normalize="rms"), rc.SGD(0.01, normalize="rms"))
    opt = rc.HyperOptimizer(model.parameters(), tower, record_history=True)

    for step, (inputs, labels) in zip(range(1, args.steps + 1), data.batches(128)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:4d}  train loss {loss.item():.4f}  lr {opt.hyperparameters()['0.lr']:.4f}")
    print(f"validation loss {data.valid_loss(model):.4f}, accuracy {data.valid_accuracy(model):.3f}")
    return opt.history()["0.lr"], data.valid_loss(model)


if __name__ == "__main__":
    main()
