"""torch's own optimizer test table, run through recurse.

PyTorch's optimizer tests draw their keyword sets from
``torch.testing._internal.common_optimizers.optim_db``. Every CPU set for
SGD, Adam, AdamW, RMSprop and Adagrad goes to ``rc.<Name>(**kwargs)``
unchanged, less the keys that pick a device kernel (``foreach``, ``fused``,
``capturable``, ``differentiable``) and nothing else, so that a keyword torch
adds later fails a row here instead of passing unnoticed. Each row is
bit-equal to torch.optim at depth 0, and trains under a learned depth-1
tower."""

import math

import pytest
import torch
from torch.testing._internal import common_optimizers  # (imports expecttest: in the test extra)

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step

NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")
KERNEL_KEYS = {"foreach", "fused", "capturable", "differentiable"}
STEPS = 25


def _rows():
    rows = []
    for info in common_optimizers.optim_db:
        name = info.optim_cls.__name__
        if name not in NAMES:
            continue
        for inputs in info.optim_inputs_func(device="cpu", dtype=torch.float64):
            kwargs = {key: value for key, value in inputs.kwargs.items() if key not in KERNEL_KEYS}
            rows.append(pytest.param(name, kwargs, id=f"{name}-{inputs.desc}".replace(" ", "_")))
    return rows


ROWS = _rows()


def test_the_table_holds_every_configuration_torch_lists():
    """34 rows in torch 2.13 (7 Adagrad, 5 Adam, 5 AdamW, 8 RMSprop, 9 SGD):
    fewer would mean that reading the table broke."""
    counts = {name: sum(1 for row in ROWS if row.values[0] == name) for name in NAMES}
    assert counts == {"SGD": 9, "Adam": 5, "AdamW": 5, "RMSprop": 8, "Adagrad": 7}


def _sign(kwargs):
    return -1.0 if kwargs.get("maximize", False) else 1.0  # (a maximizing row still descends the loss)


@pytest.mark.parametrize("name, kwargs", ROWS)
def test_at_depth_zero_each_row_is_bit_equal_to_torch_optim(name, kwargs):
    inputs, targets = regression_data()
    ours_model, theirs_model = small_mlp(), small_mlp()
    ours = rc.HyperOptimizer(ours_model.parameters(), getattr(rc, name)(**kwargs))
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), **kwargs)
    for _ in range(STEPS):
        ours_loss = train_step(ours_model, ours, inputs, targets, sign=_sign(kwargs))
        assert ours_loss == train_step(theirs_model, theirs, inputs, targets, sign=_sign(kwargs))
    for mine, reference in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("name, kwargs", ROWS)
def test_under_a_learned_depth_one_tower_each_row_trains_and_learns_its_lr(name, kwargs):
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(),
                            getattr(rc, name)(**kwargs, hyper=rc.SGD(0.05, normalize="rms")))
    start = opt.hyperparameters()["0.lr"]
    losses = [train_step(model, opt, inputs, targets, sign=_sign(kwargs)) for _ in range(STEPS)]
    assert all(math.isfinite(loss) for loss in losses) and opt.nonfinite_steps == 0
    assert opt.hyperparameters()["0.lr"] != start
    assert abs(losses[-1]) < abs(losses[0])  # (the mean squared error fell, whichever sign the row trains on)
