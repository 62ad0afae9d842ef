"""rc.estimators.HeldOut: level 0's hypergradient taken with the gradient of
a held-out loss, d L_held(p_{t+1}) / d raw, checked against float64
central finite differences; every k steps; the training .grad untouched."""

import copy

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step

HELD_INPUTS, HELD_TARGETS = regression_data(seed=5, count=16)


def held_loss(model):
    return torch.nn.functional.mse_loss(model(HELD_INPUTS), HELD_TARGETS)


def tower():
    return rc.stack(rc.Adam(0.02, learn=("lr", "beta1")), rc.SGD(1e-3))


def build(model, every=1):
    return rc.HyperOptimizer(model.parameters(), tower(),
                             hypergradient_loss=rc.estimators.HeldOut(lambda: held_loss(model), every=every))


@pytest.mark.parametrize("horizon", [None, rc.estimators.Decayed(0.0)], ids=["one-step", "decayed-mu-0"])
def test_the_held_out_hypergradient_matches_central_finite_differences(horizon):
    inputs, targets = regression_data()
    model = small_mlp()
    options = {} if horizon is None else {"horizon": horizon}
    opt = rc.HyperOptimizer(model.parameters(), tower(), first_step_limit=None,
                            hypergradient_loss=rc.estimators.HeldOut(lambda: held_loss(model)), **options)
    for _ in range(3):
        train_step(model, opt, inputs, targets)
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train_step(model, opt, inputs, targets)  # the step whose update the next hypergradient differentiates
    train_step(model, opt, inputs, targets)
    reported = opt.last_hypergradients[0]

    def held_after_one_step(index, shift):
        copied = small_mlp()
        copied.load_state_dict(model_state)
        other = rc.HyperOptimizer(copied.parameters(), tower(), first_step_limit=None,
                                  hypergradient_loss=rc.estimators.HeldOut(lambda: held_loss(copied)), **options)
        other.load_state_dict(copy.deepcopy(opt_state))
        level = other.levels[0].optimizer
        raw = level.raw.clone()
        raw[index] += shift
        level.raw = raw
        train_step(copied, other, inputs, targets)
        with torch.no_grad():
            return held_loss(copied).item()

    for index in range(reported.numel()):
        def central(h):
            return (held_after_one_step(index, -2 * h) - 8 * held_after_one_step(index, -h)
                    + 8 * held_after_one_step(index, h) - held_after_one_step(index, 2 * h)) / (12 * h)

        finite_difference = (16 * central(1e-2) - central(2e-2)) / 15
        assert reported[index].item() == pytest.approx(finite_difference, rel=1e-6)
    # ... and it is not the training loss's: the same two steps with the default hypergradient loss
    copied = small_mlp()
    copied.load_state_dict(model_state)
    training = rc.HyperOptimizer(copied.parameters(), tower(), first_step_limit=None, **options)
    training.load_state_dict(copy.deepcopy(opt_state))
    for _ in range(2):
        train_step(copied, training, inputs, targets)
    assert not torch.allclose(training.last_hypergradients[0], reported, rtol=0.1)


def test_every_k_steps_only_and_the_training_gradient_is_untouched():
    inputs, targets = regression_data()
    model = small_mlp()
    calls = []

    def closure():
        calls.append(opt.step_count)
        return held_loss(model)

    opt = rc.HyperOptimizer(model.parameters(), tower(), hypergradient_loss=rc.estimators.HeldOut(closure, every=3))
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        training = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), training))
        assert (opt.last_hypergradients[0] is not None) == (opt.step_count - 1 in (3, 6, 9))
    assert calls == [3, 6, 9]  # (at step 0 there is no update to differentiate yet)


def test_a_run_resumes_exactly_with_the_same_held_out_closure():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = build(model, every=2)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    resumed_model = copy.deepcopy(model)
    resumed = build(resumed_model, every=2)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        assert train_step(model, opt, inputs, targets) == train_step(resumed_model, resumed, inputs, targets)
    assert opt.hyperparameters() == resumed.hyperparameters()


def test_a_bad_held_out_loss_raises_with_nothing_updated():
    inputs, targets = regression_data()
    model = small_mlp()
    answers = iter([held_loss(model).detach()])  # (no graph: needs no grad)
    opt = rc.HyperOptimizer(model.parameters(), tower(),
                            hypergradient_loss=rc.estimators.HeldOut(lambda: next(answers)))
    train_step(model, opt, inputs, targets)
    before = [p.detach().clone() for p in model.parameters()], opt.hyperparameters(), opt.step_count
    with pytest.raises(ValueError, match="needs no grad"):
        train_step(model, opt, inputs, targets)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before[0]))
    assert (opt.hyperparameters(), opt.step_count) == before[1:]
