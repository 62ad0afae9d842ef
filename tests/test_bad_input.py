"""Misuse fails at once with a message naming the bad value; a step that
cannot be taken leaves the model and every level untouched."""

from pathlib import Path

import pytest
import torch
from bad_input_table import ROWS, markdown

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_every_misuse_in_the_table_gets_its_error(row):
    _, _, call, error, message = row
    with pytest.raises(error, match=message):
        call()


def test_the_docs_table_is_the_tested_table():
    assert (Path(__file__).parent.parent / "docs" / "bad_input.md").read_text() == markdown()


def test_the_same_optimizer_twice_in_a_stack_is_rejected():
    sgd = rc.SGD(0.1)
    with pytest.raises(ValueError, match="same object"):
        rc.stack(sgd, sgd)


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], opt.state_dict()["levels"][0]["raw"].clone()


def unchanged(model, opt, before):
    params, raw = before
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), params)) and torch.equal(
        opt.levels[0].optimizer.raw, raw
    )


def test_step_without_backward_says_so_and_updates_nothing():
    """(A parameter without a gradient is skipped, as torch.optim skips it;
    where none has one, backward was forgotten.)"""
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(0.01)))
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"no parameter has a .grad; call loss.backward\(\) before step\(\)"):
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
