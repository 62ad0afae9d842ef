"""rc.HyperOptimizer in a Lightning loop whose configure_optimizers returns
a scheduler (the ``lightning`` extra, installed with the test extras so that
this runs in CI): the same rule as with a plain loop, see test_schedulers.py."""

import warnings

import pytest
import pytorch_lightning as pl
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp

STEPS = 20


class Regression(pl.LightningModule):
    def __init__(self, make_optimizer, scheduled=True):
        super().__init__()
        self.net, self.make_optimizer, self.scheduled = small_mlp(), make_optimizer, scheduled

    def training_step(self, batch, index):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        opt = self.make_optimizer(self.net.parameters())
        if not self.scheduled:
            return opt
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)  # (0 at the last step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def fit(make_optimizer, *, callbacks=(), checkpoints=None, ckpt_path=None, logger=False, scheduled=True,
        batch_size=8):
    """Fit ``Regression`` for STEPS steps (from the checkpoint ``ckpt_path``,
    where given); with ``checkpoints`` (a folder), Lightning keeps one there
    at the end of every epoch."""
    module = Regression(make_optimizer, scheduled)
    inputs, targets = regression_data()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=batch_size)
    saving = [] if checkpoints is None else [pl.callbacks.ModelCheckpoint(
        dirpath=checkpoints, every_n_epochs=1, save_top_k=-1, filename="{epoch}")]
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=logger, enable_checkpointing=bool(saving),
                         log_every_n_steps=1, callbacks=[*callbacks, *saving], enable_progress_bar=False,
                         enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Lightning's advice on workers and loggers)
        trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer.optimizers[0], trainer


def test_at_depth_zero_a_lightning_scheduled_run_is_torch_optim_s():
    ours, _, _ = fit(lambda params: rc.HyperOptimizer(params, rc.Adam(1e-2)))
    theirs, _, _ = fit(lambda params: torch.optim.Adam(params, lr=1e-2))
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_over_a_tower_the_lightning_schedule_scales_the_learned_lr():
    _, opt, _ = fit(lambda params: rc.HyperOptimizer(params, rc.tower(rc.Adam(1e-2), depth=2)))
    learned = opt.learned_hyperparameters()["0.lr"]
    assert opt.step_count == STEPS and opt.nonfinite_steps == 0
    assert learned != 1e-2 and opt.param_groups[0]["lr"] == 0.0 and opt.group_lrs() == [0.0]


def tower(params):
    return rc.HyperOptimizer(params, rc.tower(rc.Adam(1e-2), depth=2))


def test_the_callback_logs_every_learned_value_and_its_hypergradient_each_step(tmp_path):
    from recurse.integrations.lightning import LearnedHyperparameters

    logger = pl.loggers.CSVLogger(tmp_path)
    _, opt, trainer = fit(tower, callbacks=[LearnedHyperparameters()], logger=logger)
    logged = trainer.logged_metrics
    for name, value in opt.learned_hyperparameters().items():
        assert float(logged[f"recurse/{name}"]) == pytest.approx(value, rel=1e-6)
    assert "recurse/hypergradient/0.lr" in logged and "recurse/group0.lr_used" in logged
    with open(logger.log_dir + "/metrics.csv") as handle:
        rows = [line for line in handle.read().splitlines()[1:] if line]
    assert len(rows) == STEPS  # (one row of values per step)


@pytest.mark.parametrize("scheduled", [False, True], ids=["no-scheduler", "cosine-scheduler"])
def test_a_run_resumed_from_a_lightning_checkpoint_ends_where_the_whole_run_ends(tmp_path, scheduled):
    """The checkpoint Lightning kept at the end of epoch 8, resumed with
    trainer.fit(ckpt_path=...) to 20 steps: as the 20-step run, to the bit
    (parameters and every learned value). Full-batch epochs: Lightning
    resumes the epoch loop one batch off (with 4 batches an epoch,
    torch.optim.Adam itself ends 0.011 away), which one batch an epoch makes
    harmless, so what is tested is the tower's own state."""
    whole, whole_opt, _ = fit(tower, checkpoints=tmp_path, scheduled=scheduled, batch_size=32)
    resumed, resumed_opt, _ = fit(tower, ckpt_path=tmp_path / "epoch=7.ckpt", scheduled=scheduled, batch_size=32)
    assert resumed_opt.step_count == whole_opt.step_count == STEPS
    assert resumed_opt.hyperparameters() == whole_opt.hyperparameters()
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), whole.parameters()))
