"""A LightningModule whose configure_optimizers returns the recommended tower.

The digits MLP trained by PyTorch Lightning's Trainer, with a cosine
schedule (which scales the learned lr) and recurse's callback logging every
learned value and its hypergradient at each step to Lightning's CSV logger
(the ``lightning`` extra: pip install "recurse[lightning]").

    python examples/lightning_module.py [--steps 300] [--out results/lightning]
"""

import argparse
import csv
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

import recurse as rc
from recurse.integrations.lightning import LearnedHyperparameters


class DigitsClassifier(pl.LightningModule):
    def __init__(self, data, steps):
        super().__init__()
        self.model, self.steps = data.model(hidden=64, seed=0), steps

    def training_step(self, batch, index):
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(self.model(inputs), labels)

    def configure_optimizers(self):
        opt = rc.HyperOptimizer(self.model.parameters())  # the recommended tower: no number to pick
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="results/lightning")
    args = parser.parse_args(argv)
    data = rc.problems.Digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_inputs, data.train_targets),
                                         batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    module = DigitsClassifier(data, args.steps)
    logger = pl.loggers.CSVLogger(args.out)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=logger, log_every_n_steps=1,
                         callbacks=[LearnedHyperparameters()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Lightning's advice on dataloader workers)
        trainer.fit(module, loader)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        learned = [float(row["recurse/0.lr"]) for row in csv.DictReader(handle) if row.get("recurse/0.lr")]
    valid_loss = data.valid_loss(module.model)
    print(f"learned lr: {learned[0]:.3g} after the first step -> {learned[-1]:.3g} after {len(learned)}; "
          f"validation loss {valid_loss:.3f}; logged to {logger.log_dir}/metrics.csv")
    return learned, valid_loss


if __name__ == "__main__":
    main()
