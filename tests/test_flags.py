"""The rules' flags (maximize, amsgrad, nesterov, centered): what a tower
learns with them, and that a checkpoint keeps them."""

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step

RULES = {
    "sgd": lambda **o: rc.SGD(0.05, momentum=0.9, weight_decay=1e-2, **o),
    "adam": lambda **o: rc.Adam(1e-2, weight_decay=1e-2, **o),
    "adamw-amsgrad": lambda **o: rc.AdamW(1e-2, amsgrad=True, **o),
    "rmsprop": lambda **o: rc.RMSprop(1e-2, centered=True, **o),
    "adagrad": lambda **o: rc.Adagrad(5e-2, **o),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_maximizing_tower_on_minus_the_loss_learns_exactly_what_a_minimizing_one_learns_on_the_loss(name):
    """maximize=True ascends -L, which is descending L; the levels above
    then minimise L as well (the engine negates the gradient it gives them),
    so both runs agree to the bit: parameters and every learned value."""
    inputs, targets = regression_data()
    runs = []
    for maximize in (False, True):
        model = small_mlp()
        opt = rc.HyperOptimizer(model.parameters(), rc.stack(RULES[name](maximize=maximize),
                                                             rc.SGD(0.02, normalize="rms")))
        losses = [train_step(model, opt, inputs, targets, sign=-1.0 if maximize else 1.0) for _ in range(8)]
        runs.append(([abs(loss) for loss in losses], opt.hyperparameters(), [p.clone() for p in model.parameters()]))
    (losses, values, params), (losses_max, values_max, params_max) = runs
    assert losses == losses_max and values == values_max
    assert all(torch.equal(a, b) for a, b in zip(params, params_max))
    assert values["0.lr"] != RULES[name]().initial_values["lr"]  # (it learned)


def test_a_checkpoint_keeps_the_flags_and_one_of_another_variant_is_refused_before_anything_loads():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, amsgrad=True, hyper=rc.SGD(0.02, normalize="rms")))
    for _ in range(3):
        train_step(model, opt, inputs, targets)
    saved = opt.state_dict()
    assert saved["levels"][0]["flags"] == {"amsgrad": True, "maximize": False}
    assert "max_exp_avg_sq" in saved["levels"][0]["state"]

    other = rc.HyperOptimizer(small_mlp().parameters(), rc.Adam(1e-2, hyper=rc.SGD(0.02, normalize="rms")))
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"level 0 is Adam with \{'amsgrad': False, 'maximize': False\} here but "
                                         r"\{'amsgrad': True, 'maximize': False\} in the checkpoint"):
        other.load_state_dict(saved)
    assert other.state_dict()["levels"][0]["raw"].equal(before["levels"][0]["raw"])
    assert other.step_count == 0


def test_several_param_groups_keep_each_group_s_flags():
    first, second = small_mlp(), small_mlp(seed=1)
    opt = rc.HyperOptimizer([{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.02}],
                            rc.SGD(0.05, momentum=0.9, nesterov=True, hyper=rc.SGD(0.01, normalize="rms")))
    assert opt.state_dict()["levels"][0]["flags"] == {
        "group0.nesterov": True, "group0.maximize": False, "group1.nesterov": True, "group1.maximize": False}


def test_a_checkpoint_from_before_flags_were_kept_is_refused_where_its_state_is_of_another_variant():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, hyper=rc.SGD(0.02, normalize="rms")))
    train_step(model, opt, inputs, targets)
    saved = opt.state_dict()
    for level in saved["levels"]:
        del level["flags"]
    same = rc.HyperOptimizer(small_mlp().parameters(), rc.Adam(1e-2, hyper=rc.SGD(0.02, normalize="rms")))
    same.load_state_dict(saved)
    assert same.step_count == 1
    amsgrad = rc.HyperOptimizer(small_mlp().parameters(),
                                rc.Adam(1e-2, amsgrad=True, hyper=rc.SGD(0.02, normalize="rms")))
    with pytest.raises(ValueError, match=r"level 0's state in the checkpoint holds .*this Adam \(\{'amsgrad': True"):
        amsgrad.load_state_dict(saved)
    assert amsgrad.step_count == 0
