"""rc.HyperOptimizer in a Lightning loop whose configure_optimizers returns
a scheduler (the ``lightning`` extra, installed with the test extras so that
this runs in CI): the same rule as with a plain loop, see test_schedulers.py."""

import warnings

import pytorch_lightning as pl
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp

STEPS = 20


class Regression(pl.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        self.net, self.make_optimizer = small_mlp(), make_optimizer

    def training_step(self, batch, index):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        opt = self.make_optimizer(self.net.parameters())
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)  # (0 at the last step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def fit(make_optimizer):
    module = Regression(make_optimizer)
    inputs, targets = regression_data()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=8)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Lightning's advice on workers and loggers)
        trainer.fit(module, data)
    return module, trainer.optimizers[0]


def test_at_depth_zero_a_lightning_scheduled_run_is_torch_optim_s():
    ours, _ = fit(lambda params: rc.HyperOptimizer(params, rc.Adam(1e-2)))
    theirs, _ = fit(lambda params: torch.optim.Adam(params, lr=1e-2))
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_over_a_tower_the_lightning_schedule_scales_the_learned_lr():
    _, opt = fit(lambda params: rc.HyperOptimizer(params, rc.tower(rc.Adam(1e-2), depth=2)))
    learned = opt.learned_hyperparameters()["0.lr"]
    assert opt.step_count == STEPS and opt.nonfinite_steps == 0
    assert learned != 1e-2 and opt.param_groups[0]["lr"] == 0.0 and opt.group_lrs() == [0.0]
