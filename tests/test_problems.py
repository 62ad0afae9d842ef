"""The offline tasks: shapes, determinism, closed forms."""

import pytest
import torch

import recurse as rc
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
    with pytest.raises(ValueError, match=r"unknown task 'cifar'; expected one of \['char_lm', 'digits', 'digits_cnn'"):
        make_task("cifar")


def test_a_quadratic_batch_holds_the_tasks_sample_would_give_and_sums_their_losses():
    batch = rc.problems.QuadraticFamily(4, seed=7).sample_batch(3)
    family = rc.problems.QuadraticFamily(4, seed=7)
    theta = torch.randn(3, 4, dtype=torch.float64)
    singles = [family.sample() for _ in range(3)]
    for index, task in enumerate(singles):
        assert torch.equal(batch.task(index).weights, task.weights)
        assert batch.losses(theta)[index].item() == pytest.approx(task.loss(theta[index]).item(), rel=1e-14)
    assert batch.loss(theta).item() == pytest.approx(batch.losses(theta).sum().item(), rel=1e-14)
    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        family.sample_batch(0)


def test_a_feature_constant_on_the_training_set_is_centred_not_blown_up():
    from recurse.problems.supervised import standardize

    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    other = torch.tensor([[2.0, 6.0]])
    train_scaled, other_scaled = standardize(train, other)
    assert train_scaled[:, 1].tolist() == [0.0, 0.0]
    assert other_scaled[0, 1].item() == 1.0  # 6 - 5, not (6 - 5) / 1e-6
    task = Digits(seed=0)
    assert task.valid_inputs.abs().max().item() < 100


@pytest.mark.parametrize("name,hidden,batch,steps", [("digits_cnn", 8, 64, 60), ("char_lm", 32, 16, 60)])
def test_the_cnn_and_transformer_tasks_are_seeded_and_train_under_adam(name, hidden, batch, steps):
    """Built twice, the same data and the same initial network; 60 AdamW
    steps lower the validation loss well below its start."""
    options = {"characters": 40_000} if name == "char_lm" else {}
    task, again = rc.problems.make_task(name, **options), rc.problems.make_task(name, **options)
    assert torch.equal(task.train_inputs, again.train_inputs) and torch.equal(task.valid_targets, again.valid_targets)
    model = task.model(hidden, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.model(hidden, seed=3).parameters()))
    start = task.valid_loss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    batches = task.batches(batch, seed=0)
    for _ in range(steps):
        inputs, targets = next(batches)
        opt.zero_grad()
        task.loss(model, inputs, targets).backward()
        opt.step()
    assert task.valid_loss(model) < 0.7 * start
    assert 0.0 <= task.valid_accuracy(model) <= 1.0


def test_the_char_lm_is_causal():
    """A character's prediction does not depend on the characters after it."""
    task = rc.problems.make_task("char_lm", characters=20_000)
    model = task.model(16, seed=0)
    ids = task.train_inputs[:2].clone()
    changed = ids.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 128
    with torch.no_grad():
        assert torch.equal(model(ids)[:, :40], model(changed)[:, :40])
        assert not torch.equal(model(ids)[:, 40:], model(changed)[:, 40:])


@pytest.mark.parametrize("name", ["digits_cnn", "char_lm"])
def test_the_new_tasks_live_on_the_device_they_are_given(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    options = {"characters": 20_000} if name == "char_lm" else {}
    task = rc.problems.make_task(name, device="cuda", **options)
    model = task.model(16)
    assert task.train_inputs.device.type == "cuda" and next(model.parameters()).device.type == "cuda"
    inputs, targets = next(task.batches(8))
    assert task.loss(model, inputs, targets).device.type == "cuda"
