"""Learning to learn an MLP on digits, and how far the learned optimizer
transfers (Andrychowicz et al., 2016, section 3.2, on sklearn's digits).

The optimizee: an MLP with one hidden layer of 20 sigmoid units on the 8x8
digits, cross-entropy, mini-batches of 128, 100 steps from a fresh random
initialisation. A coordinatewise LSTM optimizer (rc.LSTMOptimizer) is
meta-trained on it with rc.MetaTrainer (unrolls of 20 steps, meta-loss = sum
of the mini-batch losses, Adam on the LSTM's weights, second derivatives
dropped, as in the paper; several randomly initialised MLPs side by side per
meta-step). It is then run, unchanged, on held-out initialisations of the
same MLP and of three others: 40 hidden units, two hidden layers of 20, and
ReLU instead of sigmoid (where the paper's LSTM failed). Adam, with its
learning rate chosen per architecture by an Optuna grid search on training
initialisations, is the baseline on each.

    python studies/l2l_mlp.py [--quick] [--out DIR] [--meta-steps N]

Writes metrics.csv (one row per architecture, method and held-out MLP),
summary.md, meta_training.csv, lstm.pt (the learned optimizer) and
l2l_mlp.png (mean mini-batch loss vs step per architecture) to DIR
(default results/l2l_mlp/<quick|full>).
"""

from __future__ import annotations

import math
import statistics

import optuna
import torch
from torch import Tensor

import recurse as rc
from recurse.problems import Digits
from recurse.reporting import cached_meta_training, progress, publish, saved_figure, study_folder, study_parser

STEPS, UNROLL, BATCH = 100, 20, 128
LR_GRID = [10.0**(exponent / 4) for exponent in range(-16, 3)]  # 1e-4 .. 3.2
ARCHITECTURES = {  # name: (hidden layer sizes, activation)
    "20 sigmoid (trained on)": ((20,), torch.sigmoid),
    "40 sigmoid": ((40,), torch.sigmoid),
    "2 x 20 sigmoid": ((20, 20), torch.sigmoid),
    "20 ReLU": ((20,), torch.relu),
}


class BatchedMLPs:
    """``count`` independent MLPs on digits, trained side by side.

    Parameters have a leading model dimension; ``losses`` gives one
    mini-batch loss per model, each on its own mini-batch, so the gradient
    of their sum is every model's own gradient (coordinatewise optimizers
    then train each model as if alone)."""

    def __init__(self, data: Digits, hidden: tuple[int, ...], activation, count: int, seed: int) -> None:
        self.data, self.activation, self.count, self.seed = data, activation, count, seed
        sizes = (data.features, *hidden, data.outputs)
        generator = torch.Generator().manual_seed(seed)
        self.initial = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):  # torch.nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(fan_in)
            for shape in ((count, fan_in, fan_out), (count, fan_out)):  # drawn on the CPU: the same on any device
                self.initial.append(((torch.rand(shape, generator=generator) * 2 - 1) * bound).to(data.device))

    def logits(self, params: list[Tensor], inputs: Tensor) -> Tensor:
        """inputs (count, n, features) -> logits (count, n, outputs)."""
        hidden = inputs
        for layer in range(0, len(params), 2):
            hidden = torch.baddbmm(params[layer + 1].unsqueeze(1), hidden, params[layer])
            if layer + 2 < len(params):
                hidden = self.activation(hidden)
        return hidden

    def losses(self, params: list[Tensor], step: int) -> Tensor:
        """Each model's cross-entropy on its own mini-batch number ``step``."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        index = torch.randint(len(self.data.train_targets), (self.count, BATCH), generator=generator)
        logits = self.logits(params, self.data.train_inputs[index])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.data.train_targets[index].flatten(),
                                                 reduction="none")
        return loss.view(self.count, BATCH).mean(1)

    def validation(self, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per model: validation cross-entropy and accuracy."""
        inputs = self.data.valid_inputs.expand(self.count, -1, -1)
        logits = self.logits(params, inputs)
        targets = self.data.valid_targets.expand(self.count, -1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return loss.view(self.count, -1).mean(1), (logits.argmax(-1) == targets).float().mean(1)


def run_adam(models: BatchedMLPs, lr: float) -> tuple[Tensor, list[Tensor]]:
    """torch.optim.Adam on every model: mini-batch losses at steps 0..STEPS and the final parameters."""
    return rc.evaluate_torch(lambda params: torch.optim.Adam(params, lr=lr), models.losses, models.initial,
                             steps=STEPS)


def tune_adam(data: Digits, hidden, activation, grid: list[float], count: int, seed: int) -> float:
    """The grid lr with the lowest mean final mini-batch loss on ``count``
    training initialisations (an Optuna GridSampler study)."""
    models = BatchedMLPs(data, hidden, activation, count=count, seed=10_000 + seed)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"lr": grid}, seed=seed))
    study.optimize(lambda trial: _finite(run_adam(models, trial.suggest_float("lr", 1e-4, 10, log=True))[0][-5:]
                                         .mean().item()), n_trials=len(grid))
    return study.best_params["lr"]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e30


def meta_train(data: Digits, args, progress_bar) -> tuple[rc.LSTMOptimizer, list[dict]]:
    """Meta-train the LSTM on the 20-unit sigmoid MLP; fresh MLPs every STEPS inner steps."""
    hidden, activation = ARCHITECTURES["20 sigmoid (trained on)"]

    def models_for(round_: int) -> BatchedMLPs:
        return BatchedMLPs(data, hidden, activation, count=args.models, seed=round_)

    models = models_for(0)
    trainer = rc.MetaTrainer(models.initial, lambda params, k: models.losses(params, k).sum(),
                             [rc.LSTMOptimizer(seed=0), rc.Adam(args.meta_lr)], unroll_steps=[UNROLL],
                             meta_loss="sum", first_order=True, write_back=False)
    log = []
    for meta_step in progress_bar(range(args.meta_steps), "meta-training"):
        if meta_step and meta_step % (STEPS // UNROLL) == 0:
            models = models_for(meta_step // (STEPS // UNROLL))
            trainer.new_task(models.initial, lambda params, k, models=models: models.losses(params, k).sum())
        before = trainer.nonfinite_steps
        meta_loss = trainer.meta_step()
        log.append({"meta_step": meta_step + 1, "meta_loss_per_model": meta_loss / args.models,
                    "rolled_back": trainer.nonfinite_steps - before})
    return trainer.optimizers[0], log


def main(argv=None):
    parser = study_parser(__doc__, "30 meta-steps, 8 held-out MLPs per architecture, a coarser lr grid (under a minute)")
    parser.add_argument("--meta-steps", type=int, default=None, help="meta-steps (5 per round of fresh MLPs)")
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam's lr on the LSTM weights")
    parser.add_argument("--models", type=int, default=None, help="MLPs trained side by side per meta-step")
    args = parser.parse_args(argv)
    args.meta_steps = args.meta_steps or (30 if args.quick else 1000)
    args.models = args.models or (4 if args.quick else 8)
    held_out_count = 8 if args.quick else 100
    out = study_folder(args, "l2l_mlp")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def progress_bar(iterable, description):
        return progress(iterable, args, description)

    data = Digits(seed=0, device=args.device)
    lstm, meta_log = cached_meta_training(out, f"lstm-{args.meta_steps}x{args.models}-lr{args.meta_lr:g}",
                                          lambda: meta_train(data, args, progress_bar))
    rc.checkpoint.save(lstm.state_dict(), out / "lstm.pt")
    rows, curves = [], {}
    for name, (hidden, activation) in progress_bar(ARCHITECTURES.items(), "architectures"):
        models = BatchedMLPs(data, hidden, activation, count=held_out_count, seed=20_000)
        lr = tune_adam(data, hidden, activation, LR_GRID[::2] if args.quick else LR_GRID,
                       count=4 if args.quick else 16, seed=0)
        runs = {f"Adam (lr {lr:.3g})": run_adam(models, lr),
                "LSTM": rc.evaluate(lstm, models.losses, models.initial, steps=STEPS)}
        for method, (losses, params) in runs.items():
            curves[(name, method)] = losses.mean(1)
            valid_loss, accuracy = models.validation(params)
            for model in range(held_out_count):
                rows.append({"architecture": name, "method": method, "model": model,
                             "final_minibatch_loss": losses[-5:, model].mean().item(),
                             "valid_loss": valid_loss[model].item(), "valid_accuracy": accuracy[model].item()})
    publish(out, _summary(rows, args, held_out_count, meta_log), {"metrics": rows, "meta_training": meta_log})
    _plot(out / "l2l_mlp.png", curves)
    return rows, meta_log


def _summary(rows: list[dict], args, held_out_count: int, meta_log: list[dict]) -> str:
    lines = ["| architecture | method | mini-batch loss, last 5 steps (mean +- std) | validation loss | "
             "validation accuracy | models where the LSTM ends lower than Adam |", "|---|---|---|---|---|---|"]
    for name in ARCHITECTURES:
        mine = [row for row in rows if row["architecture"] == name]
        adam = [row for row in mine if row["method"] != "LSTM"]
        lstm = [row for row in mine if row["method"] == "LSTM"]
        for method_rows in (adam, lstm):
            final = [_finite(row["final_minibatch_loss"]) for row in method_rows]
            valid = statistics.fmean(_finite(row["valid_loss"]) for row in method_rows)
            accuracy = statistics.fmean(row["valid_accuracy"] for row in method_rows)
            wins = "" if method_rows is adam else \
                f"{statistics.fmean(a['final_minibatch_loss'] > b['final_minibatch_loss'] for a, b in zip(adam, lstm)):.0%}"
            lines.append(f"| {name} | {method_rows[0]['method']} | {statistics.fmean(final):.4g} +- "
                         f"{statistics.stdev(final):.2g} | {valid:.4g} | {accuracy:.3f} | {wins} |")
    rolled_back = sum(entry["rolled_back"] for entry in meta_log)
    lines.append(f"\n{held_out_count} held-out MLPs per architecture, {STEPS} steps, mini-batches of {BATCH}. LSTM "
                 f"meta-trained for {args.meta_steps} meta-steps of {UNROLL} inner steps on {args.models} MLPs "
                 f"at a time (Adam lr {args.meta_lr:g}, first order); meta-steps rolled back: {rolled_back}.")
    return "\n".join(lines)


def _plot(path, curves: dict) -> None:
    with saved_figure(path, 2, 2, figsize=(11, 8), sharey=True) as (figure, axes):
        for axis, name in zip(axes.flat, ARCHITECTURES):
            for (architecture, method), mean_losses in curves.items():
                if architecture == name:
                    axis.plot(mean_losses.clamp(max=10).numpy(), label=method)
            axis.set_title(name)
            axis.set_xlabel("step")
            axis.set_ylabel("mean mini-batch cross-entropy")
            axis.set_yscale("log")
            axis.legend()


if __name__ == "__main__":
    main()
