"""rc.HyperOptimizer(first_step_limit=): a learned lr whose first step would
move the parameters by more than the limit (a fraction of their norm) starts
lower, by the factor that makes the first step exactly that long."""

import copy
import math

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step


def norm(tensors):
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def first_step(tower, *, model=None, **options):
    """(parameters before, after one step, the optimizer) on the small MLP."""
    inputs, targets = regression_data()
    model = small_mlp() if model is None else model
    before = [p.detach().clone() for p in model.parameters()]
    opt = rc.HyperOptimizer(model.parameters(), tower, **options)
    train_step(model, opt, inputs, targets)
    return before, [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("make", [lambda: rc.stack(rc.Adam(1.0, learn="lr"), rc.SGD(0.01, normalize="rms")),
                                  lambda: rc.stack(rc.SGD(50.0, learn="lr"), rc.SGD(0.01, normalize="rms")),
                                  lambda: rc.defaults.tower(1.0)], ids=["adam", "sgd", "recommended"])
def test_a_first_step_past_the_limit_starts_the_learned_lr_lower_by_the_exact_factor(make):
    before, unlimited, _ = first_step(make(), first_step_limit=None)
    assert norm([a - b for a, b in zip(unlimited, before)]) > 0.5 * norm(before)  # far past the limit
    before, limited, opt = first_step(make(), first_step_limit=0.1)
    factor = 0.1 * norm(before) / norm([a - b for a, b in zip(unlimited, before)])
    assert norm([a - b for a, b in zip(limited, before)]) == pytest.approx(0.1 * norm(before), rel=1e-9)
    start = make().initial_values["lr"]
    assert opt.learned_hyperparameters()["0.lr"] == pytest.approx(start * factor, rel=1e-9)


def test_a_first_step_within_the_limit_changes_nothing():
    inputs, targets = regression_data()
    runs = []
    for limit in (0.1, None):
        model = small_mlp()
        opt = rc.HyperOptimizer(model.parameters(), first_step_limit=limit)  # the recommended tower, from 1e-3
        runs.append(([train_step(model, opt, inputs, targets) for _ in range(20)], opt.hyperparameters()))
    assert runs[0] == runs[1]


def test_a_fixed_lr_is_the_users_even_far_past_the_limit():
    inputs, targets = regression_data()
    ours_model, theirs_model = small_mlp(), small_mlp()
    ours = rc.HyperOptimizer(ours_model.parameters(), rc.Adam(1.0), first_step_limit=0.1)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=1.0)
    for _ in range(3):
        assert train_step(ours_model, ours, inputs, targets) == train_step(theirs_model, theirs, inputs, targets)


def test_parameters_that_are_all_zero_have_no_scale_to_limit_against():
    model = small_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    tower = lambda: rc.stack(rc.SGD(10.0, learn="lr"), rc.SGD(0.01, normalize="rms"))  # noqa: E731
    _, limited, opt = first_step(tower(), model=copy.deepcopy(model), first_step_limit=0.1)
    _, unlimited, _ = first_step(tower(), model=copy.deepcopy(model), first_step_limit=None)
    assert all(torch.equal(a, b) for a, b in zip(limited, unlimited))
    assert opt.learned_hyperparameters()["0.lr"] == pytest.approx(10.0, rel=1e-12)


def test_every_param_groups_learned_lr_starts_lower_by_the_same_factor():
    inputs, targets = regression_data()
    lrs = []
    for limit in (None, 0.1):
        model = small_mlp()
        groups = [{"params": model[0].parameters(), "lr": 2.0}, {"params": model[2].parameters()}]
        opt = rc.HyperOptimizer(groups, rc.stack(rc.Adam(1.0, learn="lr"), rc.SGD(0.01, normalize="rms")),
                                first_step_limit=limit)
        train_step(model, opt, inputs, targets)
        lrs.append(opt.group_lrs())
    (unlimited_a, unlimited_b), (limited_a, limited_b) = lrs
    assert (unlimited_a, unlimited_b) == (2.0, 1.0)  # (level 1 takes its first step at step 2)
    assert limited_a < 0.5 and limited_a / unlimited_a == pytest.approx(limited_b / unlimited_b, rel=1e-12)


def test_after_the_first_step_it_never_acts_again_and_a_resumed_run_does_not_either():
    inputs, targets = regression_data()
    tower = lambda: rc.stack(rc.Adam(1.0, learn="lr"), rc.SGD(0.01, normalize="rms"))  # noqa: E731
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), tower())
    train_step(model, opt, inputs, targets)
    resumed_model = copy.deepcopy(model)
    resumed = rc.HyperOptimizer(resumed_model.parameters(), tower())
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    unlimited_model = copy.deepcopy(model)
    unlimited = rc.HyperOptimizer(unlimited_model.parameters(), tower(), first_step_limit=None)
    unlimited.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        losses = {train_step(m, o, inputs, targets) for m, o in ((model, opt), (resumed_model, resumed),
                                                                 (unlimited_model, unlimited))}
        assert len(losses) == 1


def test_under_a_warm_up_from_0_the_first_step_that_moves_is_limited_at_the_schedules_full_factor():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1.0, learn="lr"), rc.SGD(0.01, normalize="rms")),
                            first_step_limit=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 5))
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, inputs, targets)  # factor 0: nothing moves, nothing to measure
    schedule.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.learned_hyperparameters()["0.lr"] == 1.0
    train_step(model, opt, inputs, targets)  # factor 0.2: limited as if it were 1
    schedule.step()
    step = norm([p.detach() - q for p, q in zip(model.parameters(), before)])
    assert step == pytest.approx(0.2 * 0.1 * norm(before), rel=1e-9)
    assert opt.learned_hyperparameters()["0.lr"] < 0.5


def test_an_lr_learned_in_its_own_units_is_limited_too():
    make = lambda: rc.stack(rc.SGD(50.0, learn="lr", parametrization={"lr": "identity"}),  # noqa: E731
                            rc.SGD(0.01))
    before, limited, opt = first_step(make(), first_step_limit=0.1)
    assert norm([a - b for a, b in zip(limited, before)]) == pytest.approx(0.1 * norm(before), rel=1e-9)
    assert opt.learned_hyperparameters()["0.lr"] < 50.0
