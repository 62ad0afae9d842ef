"""The offline tasks: shapes, determinism, closed forms."""

import pytest
import torch

from recurse.problems import MNIST1D, Digits, LinearRegression, Rosenbrock, SyntheticRegression, make_task


def test_digits_split_is_seeded_and_disjoint():
    task, again = Digits(seed=3), Digits(seed=3)
    assert task.train_inputs.shape[0] + task.valid_inputs.shape[0] == 1797
    assert task.features == 64 and task.outputs == 10
    assert torch.equal(task.valid_targets, again.valid_targets)
    assert abs(task.train_inputs.mean().item()) < 1e-5  # standardised on the training set


def test_mnist1d_is_generated_offline_and_seeded():
    task = MNIST1D(samples=500, seed=1)
    assert task.features == 40 and task.outputs == 10
    assert task.train_inputs.shape[0] == 400 and task.valid_inputs.shape[0] == 100
    assert torch.equal(task.train_inputs, MNIST1D(samples=500, seed=1).train_inputs)


def test_linear_regression_minimum_is_the_least_squares_fit():
    task = LinearRegression(seed=2)
    weights, bias, train_mse = task.minimum()
    model = task.model()
    with torch.no_grad():
        model.weight.copy_(weights.unsqueeze(0))
        model.bias.fill_(bias)
    fitted = torch.nn.functional.mse_loss(model(task.train_inputs), task.train_targets).item()
    assert fitted == pytest.approx(train_mse, rel=1e-10)
    # The fit is stationary: the gradient of the training loss vanishes there.
    loss = torch.nn.functional.mse_loss(model(task.train_inputs), task.train_targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-10


def test_rosenbrock_minimum_and_gradient():
    problem = Rosenbrock(dim=4)
    point, value = problem.minimum()
    assert value.item() == 0.0
    x = point.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(problem.loss(x), x)
    assert grad.abs().max().item() == 0.0
    assert problem.loss(problem.start()).item() > 1.0
    with pytest.raises(ValueError, match="dim must be >= 2, got 1"):
        Rosenbrock(dim=1)


def test_model_does_not_touch_the_global_rng():
    task = SyntheticRegression()
    before = torch.random.get_rng_state()
    first = task.model(seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first[0].weight, task.model(seed=5)[0].weight)


def test_unknown_task_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'cifar'; expected one of \['digits', 'linear'"):
        make_task("cifar")
