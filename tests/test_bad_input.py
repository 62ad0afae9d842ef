"""Misuse fails at once with a message naming the bad value; a step that
cannot be taken leaves the model and every level untouched."""

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: rc.SGD(-0.1), ValueError, r"lr must be a finite number > 0, got -0.1"),
        (lambda: rc.SGD(0.0), ValueError, r"lr must be a finite number > 0, got 0.0"),
        (lambda: rc.Adam(float("nan")), ValueError, r"lr must be .* got nan"),
        (lambda: rc.Adam(1e-3, betas=(0.9, 1.0)), ValueError, r"beta2 must be a number in the open interval \(0, 1\), got 1.0"),
        (lambda: rc.Adam(1e-3, betas=(-0.1, 0.99)), ValueError, r"beta1 must be .* or exactly 0 \(off\), got -0.1"),
        (lambda: rc.Adam(1e-3, betas=0.9), ValueError, r"betas must be a pair"),
        (lambda: rc.SGD(0.1, momentum=1.5), ValueError, r"momentum must be .*got 1.5"),
        (lambda: rc.RMSprop(1e-2, eps=0.0), ValueError, r"eps must be a finite number > 0, got 0.0"),
        (lambda: rc.SGD("0.1"), TypeError, r"lr must be a real number, got str"),
        (lambda: rc.SGD(0.1, nesterov=True), ValueError, r"nesterov=True needs momentum > 0"),
        (lambda: rc.SGD(0.1, hyper=torch.optim.SGD), TypeError, r"hyper= must be an rc.Optimizer"),
        (lambda: rc.SGD(0.1, learn=("momentum",)), ValueError, r"cannot learn 'momentum': it is 0"),
        (lambda: rc.SGD(0.1, learn=("gamma",)), ValueError, r"unknown hyperparameter 'gamma'"),
        (lambda: rc.SGD(0.1, normalize="batch"), ValueError, r"normalize must be None, 'rms'"),
        (lambda: rc.Adagrad(0.1, initial_accumulator_value=-1.0), ValueError, r"initial_accumulator_value must be >= 0"),
        (lambda: rc.tower(rc.SGD(0.1), depth=-1), ValueError, r"depth must be an integer >= 0, got -1"),
        (lambda: rc.tower(rc.SGD(0.1), depth=2.5), ValueError, r"depth must be an integer >= 0, got 2.5"),
        (lambda: rc.stack(rc.SGD(0.1), "sgd"), TypeError, r"argument 1 must be an rc.Optimizer"),
    ],
    ids=[
        "negative-lr", "zero-lr", "nan-lr", "beta2-at-1", "negative-beta1", "betas-not-a-pair", "momentum-above-1",
        "zero-eps", "lr-as-string", "nesterov-without-momentum", "hyper-not-an-optimizer", "learn-an-off-knob",
        "learn-unknown-name", "unknown-normalizer", "negative-accumulator", "negative-depth", "fractional-depth",
        "stack-non-optimizer",
    ],
)
def test_bad_optimizer_configuration_is_rejected(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_the_same_optimizer_twice_in_a_stack_is_rejected():
    sgd = rc.SGD(0.1)
    with pytest.raises(ValueError, match="same object"):
        rc.stack(sgd, sgd)


@pytest.mark.parametrize(
    "params, optimizer, error, message",
    [
        (lambda: [], lambda: rc.SGD(0.1), ValueError, "empty parameter list"),
        (lambda: small_mlp().parameters(), lambda: torch.optim.SGD, TypeError, "must be an rc.Optimizer"),
        (lambda: [torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True)],
         lambda: rc.SGD(0.1), ValueError, "parameter 1 is torch.float64 on cpu but parameter 0 is torch.float32"),
        (lambda: [torch.zeros(3)], lambda: rc.SGD(0.1), ValueError, r"parameter 0 \(shape \(3,\)\) does not require grad"),
        (lambda: [torch.zeros(3, dtype=torch.long)], lambda: rc.SGD(0.1), TypeError, "expected floating point"),
        (lambda: torch.zeros(3, requires_grad=True), lambda: rc.SGD(0.1), TypeError, "single tensor"),
        (lambda: [{"params": [torch.zeros(3, requires_grad=True)], "lr": 0.1}], lambda: rc.SGD(0.1), ValueError,
         r"param group 0 sets \['lr'\]"),
        (lambda: small_mlp().parameters(), lambda: rc.SGD(0.1, learn=(), hyper=rc.SGD(0.1)), ValueError,
         "nothing to learn"),
    ],
    ids=["empty", "torch-optimizer", "mixed-dtypes", "no-requires-grad", "integer-param", "single-tensor",
         "group-options", "hyper-with-nothing-to-learn"],
)
def test_bad_hyperoptimizer_construction_is_rejected(params, optimizer, error, message):
    with pytest.raises(error, match=message):
        rc.HyperOptimizer(params(), optimizer())


def test_bad_guard_mode_is_rejected():
    with pytest.raises(ValueError, match="guard must be one of"):
        rc.HyperOptimizer(small_mlp().parameters(), rc.SGD(0.1), guard="ignore")


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], opt.state_dict()["levels"][0]["raw"].clone()


def unchanged(model, opt, before):
    params, raw = before
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), params)) and torch.equal(
        opt.levels[0].optimizer.raw, raw
    )


def test_step_without_backward_names_the_parameter_and_updates_nothing():
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(0.01)))
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"parameter 0 \(shape \(6, 4\)\) has no .grad"):
        opt.step()
    assert unchanged(model, opt, before)


def test_closure_returning_none_is_rejected():
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1))
    with pytest.raises(ValueError, match="closure returned None"):
        opt.step(lambda: None)


def poison_gradients(model, opt, inputs, targets):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    next(model.parameters()).grad[0, 0] = float("nan")


def test_non_finite_gradient_is_skipped_and_counted_by_default():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-2), rc.SGD(1e-3)))
    for _ in range(3):
        train_step(model, opt, inputs, targets)
    before = snapshot(model, opt)
    poison_gradients(model, opt, inputs, targets)
    opt.step()
    assert unchanged(model, opt, before)
    assert opt.nonfinite_steps == 1 and opt.step_count == 3
    train_step(model, opt, inputs, targets)
    assert opt.step_count == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradient_raises_in_raise_mode_and_updates_nothing():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(0.01)), guard="raise")
    train_step(model, opt, inputs, targets)
    before = snapshot(model, opt)
    poison_gradients(model, opt, inputs, targets)
    with pytest.raises(FloatingPointError, match="non-finite gradient at step 2"):
        opt.step()
    assert unchanged(model, opt, before)


def test_an_update_that_overflows_is_rolled_back_and_the_model_stays_finite():
    x = torch.tensor([1e300], dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([x], rc.SGD(1e300, hyper=rc.SGD(0.1)))
    for _ in range(3):
        opt.zero_grad()
        (1e10 * x).sum().backward()  # finite gradient, but x - 1e300 * 1e10 overflows
        opt.step()
    assert opt.nonfinite_steps == 3 and opt.step_count == 0
    assert x.item() == 1e300
