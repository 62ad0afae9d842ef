"""Your own model and DataLoader: does learning the lr beat searching it, at the same cost?

A small convolutional network on generated 12x12 two-class images (stripes
against checks, with noise), a torch DataLoader, and an ordinary training
loop written once as an objective. rc.compare runs the recommended tower and
an Adam tower against Optuna's grid, random and TPE searches over Adam's lr,
each search spending exactly `trials` times what one tower run spends.

    python examples/own_model_vs_optuna.py [--quick] [--out results/own_model]
"""

import argparse

import optuna
import torch
from torch.utils.data import DataLoader, TensorDataset

import recurse as rc


def images(count, seed):
    """Stripes (label 0) or checks (label 1), random phase, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    rows, columns = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    phase = torch.randint(0, 2, (count, 1, 1), generator=generator)
    stripes = ((rows + phase) % 2).float()
    checks = ((rows + columns + phase) % 2).float()
    pictures = torch.where(labels.view(-1, 1, 1) == 0, stripes, checks)
    return (pictures + 0.8 * torch.randn(count, 12, 12, generator=generator)).unsqueeze(1), labels


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.head = torch.nn.Linear(8 * 16, 2)

    def forward(self, inputs):
        return self.head(self.features(inputs))


def make_objective(steps):
    train, valid = images(512, seed=0), images(256, seed=1)

    def objective(make_optimizer, seed):
        torch.manual_seed(seed)
        model = Net()
        opt = make_optimizer(model.parameters())
        loader = DataLoader(TensorDataset(*train), batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        step = 0
        while step < steps:
            for inputs, labels in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(inputs), labels).backward()
                opt.step()
                step += 1
                if step == steps:
                    break
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(valid[0]), valid[1]).item()

    objective.__name__ = "own CNN"
    return objective


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 steps, 4 trials, one seed (seconds)")
    parser.add_argument("--out", default=None, help="folder for the tables, plots and the Optuna database")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # (one line per trial otherwise)
    steps, trials, seeds = (40, 4, [0]) if args.quick else (200, 16, [0, 1, 2])
    rows = rc.compare(make_objective(steps),
                      towers={"recommended": rc.defaults.tower(), "Adam depth 1": rc.tower(rc.Adam(1e-3), depth=1)},
                      space={"lr": (1e-4, 1.0, "log")}, optimizer=torch.optim.Adam,
                      samplers=("grid", "random", "tpe"), trials=trials, seeds=seeds, out=args.out, quiet=True)
    print("| method | validation loss (mean over seeds) | gradient evaluations |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['loss']:.4f} +- {row['loss_std']:.2g} | {row['gradient_evaluations']:.0f} |")
    return rows


if __name__ == "__main__":
    main()
