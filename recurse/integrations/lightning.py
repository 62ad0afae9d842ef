"""PyTorch Lightning with an rc.HyperOptimizer.

Return the optimizer from ``configure_optimizers``, with or without a
scheduler, and keep the rest (``pip install "recurse[lightning]"``)::

    def configure_optimizers(self):
        return rc.HyperOptimizer(self.parameters())

    trainer = pl.Trainer(..., callbacks=[LearnedHyperparameters()])

A scheduler returned beside it scales what the tower learns (see
:mod:`recurse.param_group`). Lightning's checkpoints hold the tower's state
(its ``state_dict``), so ``trainer.fit(..., ckpt_path=...)`` goes on exactly
where the uninterrupted run would.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from recurse.integrations.values import hyper_optimizer, learned_values


class LearnedHyperparameters(pl.Callback):
    """Logs every learned hyperparameter of each rc.HyperOptimizer the
    trainer steps, the lr each param group stepped with, and their last
    hypergradients, to Lightning's loggers after every training step
    (``"recurse/0.lr"``, ``"recurse/group0.lr_used"``,
    ``"recurse/hypergradient/0.lr"``; with several optimizers,
    ``"recurse/opt<i>/..."``)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        optimizers = [hyper_optimizer(optimizer) for optimizer in trainer.optimizers]
        for index, optimizer in enumerate(optimizers):
            if optimizer is None:
                continue
            values = learned_values(optimizer, hypergradients=True)
            if len(optimizers) > 1:
                values = {name.replace("recurse/", f"recurse/opt{index}/", 1): value for name, value in values.items()}
            pl_module.log_dict(values, on_step=True, on_epoch=False)
