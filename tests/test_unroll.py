"""The K-step engine: trajectories, meta-gradients against float64 finite
differences, nesting to depth 3, truncation, safety and memory."""

import gc
import math
import warnings

import pytest
import torch

import recurse as rc
from recurse.meta import MetaTrainer
from recurse.problems import QuadraticFamily
from recurse.unroll import model_objective, unroll, unroll_torch

from optimizer_table import regression_data, small_mlp


def mlp_objective(seed=0):
    """A float64 MLP regression with one fixed mini-batch per inner step."""
    model = small_mlp(seed=seed)
    inputs, targets = regression_data()

    def batch_at(k):
        rows = torch.arange(8) + 8 * (k % 4)
        return inputs[rows], targets[rows]

    objective = model_objective(model, torch.nn.functional.mse_loss, batch_at)
    return model, objective, batch_at


def relative_error(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def central_difference(function, raw, index, step):
    plus, minus = raw.clone(), raw.clone()
    plus[index] += step
    minus[index] -= step
    return (function(plus) - function(minus)) / (2 * step)


TRAJECTORY_CASES = {
    "SGD momentum nesterov": (lambda: rc.SGD(0.05, momentum=0.9, nesterov=True),
                              lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "Adam": (lambda: rc.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "RMSprop centered": (lambda: rc.RMSprop(0.01, centered=True), lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True)),
}


def torch_optim_trajectory(make_torch, batch_at, steps=15):
    """The parameters after a plain torch.optim loop over the same batches."""
    reference = small_mlp(seed=0)
    opt = make_torch(reference.parameters())
    for k in range(steps):
        inputs, targets = batch_at(k)
        opt.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs), targets).backward()
        opt.step()
    return list(reference.parameters())


@pytest.mark.parametrize("name", TRAJECTORY_CASES)
def test_unroll_at_fixed_hyperparameters_is_the_torch_optim_trajectory(name):
    make_recurse, make_torch = TRAJECTORY_CASES[name]
    model, objective, batch_at = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    unrolled = unroll(objective, start, make_recurse(), steps=15).params
    for mine, theirs in zip(unrolled, torch_optim_trajectory(make_torch, batch_at)):
        assert torch.equal(mine.detach(), theirs.detach())


def test_unroll_torch_follows_the_torch_optim_trajectory():
    model, objective, batch_at = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    # eps = 0: higher's Adam adds eps outside sqrt(1 - beta2^t), torch.optim inside; otherwise the same math.
    unrolled = unroll_torch(objective, start, torch.optim.Adam(start, lr=0.01, eps=0.0), steps=15).params
    reference = torch_optim_trajectory(lambda params: torch.optim.Adam(params, lr=0.01, eps=0.0), batch_at)
    for mine, theirs in zip(unrolled, reference):
        torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-12, atol=1e-14)


DEPTH_ONE = {
    "SGD lr": lambda: rc.SGD(0.05, learn="lr"),
    "SGD lr+momentum": lambda: rc.SGD(0.05, momentum=0.5),
    "Adam lr": lambda: rc.Adam(0.01, learn="lr"),
}


@pytest.mark.parametrize("meta_loss", ["final", "sum"])
@pytest.mark.parametrize("name", DEPTH_ONE)
def test_depth_one_meta_gradient_matches_finite_differences(name, meta_loss):
    model, objective, _ = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = DEPTH_ONE[name]()

    def meta_loss_at(raw):
        return unroll(objective, start, optimizer, steps=5, raw=raw, meta_loss=meta_loss).meta_loss

    raw = optimizer.raw.clone().requires_grad_()
    (meta_gradient,) = torch.autograd.grad(meta_loss_at(raw), raw)
    for index in range(raw.numel()):
        numeric = central_difference(lambda r: meta_loss_at(r).item(), raw.detach(), index, 1e-5)
        assert relative_error(meta_gradient[index].item(), numeric) < 1e-6, (index, meta_gradient, numeric)


def quadratic_trainer(optimizers, unroll_steps, **options):
    task = QuadraticFamily(dim=6, seed=3).sample()
    theta = torch.zeros(6, dtype=torch.float64)
    return MetaTrainer([theta], lambda params, k: task.loss(params[0]), optimizers, unroll_steps=unroll_steps,
                       **options)


def test_depth_two_gradient_at_the_outermost_hyperparameter_matches_finite_differences():
    def build():
        return quadratic_trainer([rc.SGD(0.01), rc.SGD(0.002, momentum=0.5), rc.SGD(1e-3)], [4, 3])

    trainer = build()
    raw = trainer.values[2][0].clone().requires_grad_()
    (gradient,) = torch.autograd.grad(trainer.meta_loss_of(raw), raw)
    assert gradient.shape == (2,)  # lr and momentum of the meta-optimizer
    for index in range(2):
        numeric = central_difference(lambda r: build().meta_loss_of(r).item(), raw.detach(), index, 1e-5)
        assert relative_error(gradient[index].item(), numeric) < 1e-5, (index, gradient, numeric)


def test_depth_three_runs_and_its_gradient_matches_finite_differences():
    def build():
        return quadratic_trainer([rc.SGD(0.01), rc.SGD(0.05), rc.SGD(0.1), rc.SGD(1e-4)], [3, 2, 2])

    trainer = build()
    raw = trainer.values[3][0].clone().requires_grad_()
    (gradient,) = torch.autograd.grad(trainer.meta_loss_of(raw), raw)
    # The gradient three levels up is small (~1e-5): a wider step keeps round-off out of the difference.
    numeric = central_difference(lambda r: build().meta_loss_of(r).item(), raw.detach(), 0, 1e-3)
    assert relative_error(gradient[0].item(), numeric) < 1e-5
    trainer = build()
    losses = [trainer.meta_step() for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and trainer.meta_steps == 4
    assert trainer.inner_step > 0 and set(trainer.hyperparameters()) >= {"0.lr", "1.lr", "2.lr", "3.lr"}


def test_meta_training_lowers_the_loss_and_learns_the_lr():
    trainer = quadratic_trainer([rc.SGD(1e-3, learn="lr"), rc.Adam(0.05)], [10])
    first = trainer.meta_step()
    for _ in range(30):
        last = trainer.meta_step()
    assert last < 0.5 * first
    assert trainer.hyperparameters()["0.lr"] > 1.5e-3  # started at 1e-3, far below 1/L (about 0.034)
    # The meta-trained optimizer now runs at its learned values wherever it is used next.
    assert trainer.optimizers[0].current_values()["lr"] == pytest.approx(trainer.hyperparameters()["0.lr"])


def test_first_order_drops_exactly_the_second_derivative_terms():
    task = QuadraticFamily(dim=5, seed=1).sample()
    theta = torch.randn(5, dtype=torch.float64)
    objective = lambda params, k: task.loss(params[0])  # noqa: E731
    optimizer = rc.SGD(0.01, learn="lr")
    raw = optimizer.raw.clone().requires_grad_()
    # One step: theta_1 = theta_0 - lr g_0, so d f(theta_1) / d log lr = -lr grad f(theta_1) . g_0, either way.
    for first_order in (False, True):
        result = unroll(objective, [theta], optimizer, steps=1, raw=raw, first_order=first_order)
        (gradient,) = torch.autograd.grad(result.meta_loss, raw)
        g0 = torch.autograd.functional.jacobian(task.loss, theta)
        theta1 = theta - 0.01 * g0
        expected = -0.01 * torch.dot(torch.autograd.functional.jacobian(task.loss, theta1), g0)
        assert gradient.item() == pytest.approx(expected.item(), rel=1e-10)
    full = torch.autograd.grad(unroll(objective, [theta], optimizer, steps=4, raw=raw).meta_loss, raw)[0]
    first = torch.autograd.grad(unroll(objective, [theta], optimizer, steps=4, raw=raw, first_order=True).meta_loss,
                                raw)[0]
    assert not torch.allclose(full, first)


@pytest.mark.parametrize("meta_loss", ["sum", "mean"])
def test_first_order_sum_and_mean_are_the_totals_of_first_order_final_losses(meta_loss):
    """sum_k f(theta_k): each term's first-order meta-gradient is that of a k-step "final" unroll."""
    task = QuadraticFamily(dim=5, seed=2).sample()
    theta = torch.randn(5, dtype=torch.float64)
    objective = lambda params, k: task.loss(params[0])  # noqa: E731
    optimizer = rc.Adam(0.05, learn="lr")
    raw = optimizer.raw.clone().requires_grad_()

    def meta_gradient(steps, kind):
        result = unroll(objective, [theta], optimizer, steps=steps, raw=raw, first_order=True, meta_loss=kind)
        return torch.autograd.grad(result.meta_loss, raw)[0]

    expected = sum(meta_gradient(steps, "final") for steps in range(1, 5))
    expected = expected / 4 if meta_loss == "mean" else expected
    torch.testing.assert_close(meta_gradient(4, meta_loss), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("meta_loss", ["final", "sum"])
def test_a_meta_objective_enters_the_meta_loss_but_not_the_inner_steps(meta_loss):
    task = QuadraticFamily(dim=5, seed=3).sample()
    objective = lambda params, k: task.loss(params[0])  # noqa: E731
    optimizer = rc.SGD(0.01, learn="lr")
    raw = optimizer.raw.clone().requires_grad_()
    start = [torch.randn(5, dtype=torch.float64)]
    plain = unroll(objective, start, optimizer, steps=4, raw=raw, meta_loss=meta_loss)
    logged = unroll(objective, start, optimizer, steps=4, raw=raw, meta_loss=meta_loss,
                    meta_objective=lambda params, k: task.loss(params[0]).log())
    assert logged.losses == plain.losses  # the same trajectory
    expected = sum(math.log(value) for value in plain.losses[1:]) if meta_loss == "sum" else 0.0
    expected += math.log(task.loss(plain.params[0]).item())
    assert logged.meta_loss.item() == pytest.approx(expected, rel=1e-12)
    (gradient,) = torch.autograd.grad(logged.meta_loss, raw)
    assert torch.isfinite(gradient).all() and gradient.item() != 0


def test_a_window_backpropagates_through_the_last_steps_only():
    model, objective, _ = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = rc.Adam(0.01, learn="lr")
    raw = optimizer.raw.clone().requires_grad_()
    windowed = unroll(objective, start, optimizer, steps=8, raw=raw, window=3)
    (gradient,) = torch.autograd.grad(windowed.meta_loss, raw)
    # The same as running 5 steps without a graph, then 3 steps with one.
    warm = unroll(objective, start, optimizer, steps=5, raw=raw.detach())
    params = [p.detach() for p in warm.params]
    state = {key: [v.detach() for v in value] if isinstance(value, list) else value for key, value in warm.state.items()}
    tail = unroll(objective, params, optimizer, steps=3, raw=raw, state=state, step_offset=5)
    (expected,) = torch.autograd.grad(tail.meta_loss, raw)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=0)
    assert windowed.meta_loss.item() == tail.meta_loss.item()


def _graph_size(tensor):
    """The number of autograd nodes ``tensor`` reaches."""
    seen, frontier = set(), [tensor.grad_fn]
    while frontier:
        node = frontier.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        frontier.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_a_window_of_unroll_torch_is_torch_optim_steps_then_an_unroll_from_where_they_ended():
    """K - W plain torch.optim steps (momentum buffers and all), then a W-step
    unroll from that optimizer's parameters and state: the same meta-loss
    and meta-gradient as one windowed unroll_torch."""
    model, objective, batch_at = mlp_objective()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def optimizer_over(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)

    start = [p.detach().clone() for p in model.parameters()]
    windowed = unroll_torch(objective, start, optimizer_over(start), steps=8, override={"lr": lr}, window=3,
                            meta_loss="sum")
    (gradient,) = torch.autograd.grad(windowed.meta_loss, lr)

    warm = [p.detach().clone().requires_grad_() for p in model.parameters()]
    plain = optimizer_over(warm)
    for k in range(5):
        plain.zero_grad()
        objective(warm, k).backward()
        plain.step()
    tail = unroll_torch(objective, warm, plain, steps=3, override={"lr": lr}, meta_loss="sum", step_offset=5)
    (expected,) = torch.autograd.grad(tail.meta_loss, lr)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=0)
    # A windowed "sum" also counts the loss at the window's first step (a constant there), as rc.unroll does.
    assert windowed.meta_loss.item() == pytest.approx(tail.meta_loss.item() + tail.losses[0], rel=1e-12)
    assert windowed.losses[5:] == pytest.approx(tail.losses, rel=1e-12)
    assert gradient.item() != 0


@pytest.mark.parametrize("meta_loss", ["final", "sum"])
def test_a_window_of_unroll_torch_matches_the_recurse_engine(meta_loss):
    """SGD learning lr and momentum, 8 steps, window 3, float64. The momentum
    buffer depends on the momentum, so a window must cut the state too. In
    rc.unroll's units (log lr, logit momentum): d/d log lr = lr d/d lr and
    d/d logit m = m (1 - m) d/d m."""
    model, objective, _ = mlp_objective()
    optimizer = rc.SGD(0.05, momentum=0.9, learn=("lr", "momentum"))
    raw = optimizer.raw.clone().requires_grad_()
    start = [p.detach().clone() for p in model.parameters()]
    ours = unroll(objective, start, optimizer, steps=8, raw=raw, window=3, meta_loss=meta_loss)
    (by_raw,) = torch.autograd.grad(ours.meta_loss, raw)
    values = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
              for name, value in (("lr", 0.05), ("momentum", 0.9))}
    start = [p.detach().clone() for p in model.parameters()]
    theirs = unroll_torch(objective, start, torch.optim.SGD(start, lr=0.05, momentum=0.9), steps=8,
                          override=values, window=3, meta_loss=meta_loss)
    by_lr, by_momentum = torch.autograd.grad(theirs.meta_loss, [values["lr"], values["momentum"]])
    assert ours.meta_loss.item() == pytest.approx(theirs.meta_loss.item(), rel=1e-12)
    expected = {"lr": 0.05 * by_lr.item(), "momentum": 0.9 * 0.1 * by_momentum.item()}
    assert by_raw.tolist() == pytest.approx([expected[name] for name in optimizer.learnable], rel=1e-10)


def test_a_window_keeps_the_graph_of_unroll_torch_the_same_size_whatever_the_unroll_length():
    model, objective, _ = mlp_objective()

    def graph_size(steps, window):
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        start = [p.detach().clone() for p in model.parameters()]
        result = unroll_torch(objective, start, torch.optim.SGD(start, lr=0.05, momentum=0.9), steps=steps,
                              override={"lr": lr}, window=window)
        return _graph_size(result.meta_loss)

    sizes = [graph_size(steps, window=3) for steps in (6, 12)]
    assert sizes[0] == sizes[1] > 0
    assert graph_size(12, window=None) > 2 * sizes[1]  # (without a window it grows with the unroll)


def _zero_moment_objective(params, k):
    # The third coordinate's gradient is exactly 0 at every step: Adam's second moment stays 0 there.
    x = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    return ((params[0] * x).sum() - 1.0) ** 2 + 0.1 * params[0][2] ** 2


def test_adam_second_derivatives_stay_finite_where_higher_gives_nan():
    start = torch.zeros(3, dtype=torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    # The second derivative in lr is what a depth-2 nested unroll needs.
    weights = start.clone()
    theirs = unroll_torch(_zero_moment_objective, [weights], torch.optim.Adam([weights], lr=0.1),
                          steps=3, override={"lr": lr}).meta_loss
    (first,) = torch.autograd.grad(theirs, lr, create_graph=True)
    (second,) = torch.autograd.grad(first, lr)
    assert torch.isnan(second), "higher's DifferentiableAdam no longer returns NaN here; update this test"
    raw = torch.log(lr.detach()).reshape(1).requires_grad_()
    mine = unroll(_zero_moment_objective, [start.clone()], rc.Adam(0.1, learn="lr"), steps=3, raw=raw).meta_loss
    (first,) = torch.autograd.grad(mine, raw, create_graph=True)
    (second,) = torch.autograd.grad(first, raw)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    trainer = MetaTrainer([start.clone()], _zero_moment_objective, [rc.Adam(0.1, learn="lr"), rc.SGD(0.01),
                                                                    rc.SGD(1e-3)], unroll_steps=[3, 2])
    for _ in range(3):
        assert torch.isfinite(torch.tensor(trainer.meta_step()))
    assert trainer.nonfinite_steps == 0


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance() wakes deprecated torch.distributed aliases
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_no_graph_or_tensor_survives_an_outer_step():
    trainer = quadratic_trainer([rc.Adam(0.01, learn="lr"), rc.SGD(0.002), rc.SGD(1e-3)], [5, 3])
    for _ in range(3):
        trainer.meta_step()
    baseline = _live_tensors()
    for _ in range(10):
        trainer.meta_step()
        assert all(t.grad_fn is None and not t.requires_grad for values in trainer.values for t in values)
    assert _live_tensors() == baseline


def test_a_diverging_meta_step_is_rolled_back_whole():
    trainer = quadratic_trainer([rc.SGD(1e-3, learn="lr"), rc.SGD(1e6)], [5])
    trainer.meta_step()  # lr * 1e6 hypergradient: log lr jumps, the next unroll overflows
    before = [t.clone() for values in trainer.values for t in values]
    for _ in range(3):
        trainer.meta_step()
    after = [t for values in trainer.values for t in values]
    assert trainer.nonfinite_steps >= 1
    assert all(torch.isfinite(t).all() for t in after)
    if trainer.nonfinite_steps == 3:  # every later step rolled back: nothing moved
        assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unroll_runs_on_cuda():
    task = QuadraticFamily(dim=6, seed=3, device="cuda").sample()
    theta = torch.zeros(6, dtype=torch.float64, device="cuda")
    optimizer = rc.Adam(0.01, learn="lr").to("cuda", torch.float64)
    raw = optimizer.raw.clone().requires_grad_()
    result = unroll(lambda params, k: task.loss(params[0]), [theta], optimizer, steps=5, raw=raw)
    (gradient,) = torch.autograd.grad(result.meta_loss, raw)
    assert gradient.device.type == "cuda" and result.params[0].device.type == "cuda"
    start = [torch.zeros(6, dtype=torch.float64, device="cuda", requires_grad=True)]
    lr = torch.tensor(0.01, dtype=torch.float64, device="cuda", requires_grad=True)
    sgd = torch.optim.SGD(start, lr=0.01, momentum=0.5)
    windowed = unroll_torch(lambda params, k: task.loss(params[0]), start, sgd, steps=5, override={"lr": lr}, window=2)
    (gradient,) = torch.autograd.grad(windowed.meta_loss, lr)
    assert gradient.device.type == "cuda" and torch.isfinite(gradient)
    trainer = MetaTrainer([theta.cpu()], lambda params, k: task.loss(params[0]), [rc.SGD(0.01), rc.SGD(1e-3)],
                          unroll_steps=[4], device="cuda")
    trainer.meta_step()
    assert trainer.params[0].device.type == "cuda" and trainer.optimizers[0].raw.device.type == "cuda"


BAD_OPTIONS = {
    "steps 0": ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    "unknown meta-loss": ({"steps": 3, "meta_loss": "best"}, "meta_loss must be one of"),
    "validation missing": ({"steps": 3, "meta_loss": "validation"}, "needs validation="),
    "window too long": ({"steps": 3, "window": 4}, r"window must be an integer in \[1, steps=3\], got 4"),
}


@pytest.mark.parametrize("engine", ["unroll", "unroll_torch"])
@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_unroll_options_are_named(case, engine):
    options, message = BAD_OPTIONS[case]
    start = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=message):
        if engine == "unroll":
            unroll(lambda params, k: params[0].sum(), start, rc.SGD(0.1), **options)
        else:
            unroll_torch(lambda params, k: params[0].sum(), start, torch.optim.SGD(start, lr=0.1), **options)


def test_bad_objectives_and_trainers_are_named():
    with pytest.raises(ValueError, match=r"scalar tensor, got \(2,\) at inner step 0"):
        unroll(lambda params, k: params[0] * 2, [torch.zeros(2)], rc.SGD(0.1), steps=2)
    with pytest.raises(ValueError, match="unroll_steps needs one count per learned level \\(2\\), got \\[3\\]"):
        MetaTrainer([torch.zeros(2)], lambda p, k: p[0].sum(), [rc.SGD(0.1), rc.SGD(0.1), rc.SGD(0.1)],
                    unroll_steps=[3])
    with pytest.raises(ValueError, match="at least two optimizers"):
        MetaTrainer([torch.zeros(2)], lambda p, k: p[0].sum(), [rc.SGD(0.1)], unroll_steps=[])


def test_a_meta_trainer_resumes_bit_for_bit_from_its_state_dict():
    def build():
        return quadratic_trainer([rc.Adam(0.01, learn="lr"), rc.SGD(0.002, momentum=0.5), rc.Adam(1e-3)], [4, 2])

    uninterrupted = build()
    for _ in range(6):
        uninterrupted.meta_step()
    first = build()
    for _ in range(3):
        first.meta_step()
    saved = first.state_dict()
    resumed = build()
    resumed.load_state_dict(saved)
    for _ in range(3):
        resumed.meta_step()
    for mine, theirs in zip(resumed.values, uninterrupted.values):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert resumed.hyperparameters() == uninterrupted.hyperparameters()
    with pytest.raises(ValueError, match="the checkpoint has 3 levels"):
        quadratic_trainer([rc.SGD(0.01), rc.SGD(0.01)], [3]).load_state_dict(saved)


def test_evaluate_follows_torch_optim_on_every_task_of_a_batch():
    tasks = QuadraticFamily(dim=4, seed=5).sample_batch(3)
    history, final = rc.evaluate(rc.Adam(0.05), lambda params, k: tasks.losses(params[0]),
                          [torch.zeros(3, 4, dtype=torch.float64)], steps=30)
    assert history.shape == (31, 3)
    theta = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([theta], lr=0.05)
    for step in range(30):
        torch.testing.assert_close(history[step], tasks.losses(theta).detach(), rtol=1e-12, atol=0)
        reference.zero_grad()
        tasks.loss(theta).backward()
        reference.step()
    torch.testing.assert_close(history[30], tasks.losses(theta).detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(final[0], theta.detach(), rtol=1e-12, atol=0)


def test_evaluate_torch_runs_the_same_steps_as_evaluate_with_the_recurse_optimizer():
    tasks = QuadraticFamily(dim=4, seed=6).sample_batch(3)
    start = [torch.zeros(3, 4, dtype=torch.float64)]
    ours, ours_final = rc.evaluate(rc.Adam(0.05), lambda params, k: tasks.losses(params[0]), start, steps=20)
    theirs, theirs_final = rc.evaluate_torch(lambda params: torch.optim.Adam(params, lr=0.05),
                                             lambda params, k: tasks.losses(params[0]), start, steps=20)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=0)
    torch.testing.assert_close(theirs_final[0], ours_final[0], rtol=1e-12, atol=0)
    assert torch.equal(start[0], torch.zeros(3, 4, dtype=torch.float64))  # the start is not stepped in place


def test_parameters_mixing_dtypes_unroll_as_the_widest_would():
    """float64 and float32 parameters in one unroll: the meta-gradient is the
    all-float64 one to float32 precision; MetaTrainer and evaluate keep each
    parameter's dtype; a fixed value must fit every dtype present."""
    generator = torch.Generator().manual_seed(0)
    wide, narrow = torch.randn(5, generator=generator, dtype=torch.float64), torch.randn(3, generator=generator,
                                                                                          dtype=torch.float64)

    def objective(params, k):
        return (params[0] ** 2).sum() + ((params[1].double() - 1) ** 2).sum()

    gradients_of = []
    for second in (narrow, narrow.float()):
        optimizer = rc.SGD(0.1)
        raw = optimizer.raw.clone().requires_grad_()
        unroll(objective, [wide, second], optimizer, steps=5, raw=raw).meta_loss.backward()
        gradients_of.append(raw.grad.item())
    assert gradients_of[1] == pytest.approx(gradients_of[0], rel=1e-6)
    trainer = MetaTrainer([wide, narrow.float()], objective, [rc.SGD(0.1), rc.SGD(1e-2)], unroll_steps=[5])
    losses = [trainer.meta_step() for _ in range(3)]
    assert losses[-1] < losses[0] and [p.dtype for p in trainer.params] == [torch.float64, torch.float32]
    history, final = rc.evaluate(rc.SGD(0.1), objective, [wide, narrow.float()], steps=3)
    assert history[-1] < history[0] and [p.dtype for p in final] == [torch.float64, torch.float32]
    with pytest.raises(ValueError, match=r"rc.SGD: lr = 100000.0 is beyond the largest torch.float16"):
        unroll(objective, [wide, narrow.half()], rc.SGD(1e5, learn=()), steps=2)


NORMALISED = {
    "SGD momentum, running RMS": lambda: rc.SGD(0.05, momentum=0.5, normalize="rms"),
    "Adam, clipped": lambda: rc.Adam(0.01, normalize=rc.transforms.Clip(0.5)),
}


@pytest.mark.parametrize("name", NORMALISED)
def test_an_unroll_normalises_each_inner_gradient_as_the_online_engine_does(name):
    model, objective, batch_at = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    result = unroll(objective, start, NORMALISED[name](), steps=12)
    online = small_mlp(seed=0)
    opt = rc.HyperOptimizer(online.parameters(), NORMALISED[name]())
    for k in range(12):
        inputs, targets = batch_at(k)
        opt.zero_grad()
        torch.nn.functional.mse_loss(online(inputs), targets).backward()
        opt.step()
    for mine, theirs in zip(result.params, online.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    assert set(result.state) == {"optimizer", "normalizer"}
    _, evaluated = rc.evaluate(NORMALISED[name](), objective, start, steps=12)  # (it used to skip the normaliser)
    for mine, theirs in zip(evaluated, online.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NORMALISED)
def test_a_normalised_unroll_meta_gradient_matches_finite_differences_and_continues_from_its_state(name):
    model, objective, _ = mlp_objective()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = NORMALISED[name]()

    def meta_loss_at(raw):
        return unroll(objective, start, optimizer, steps=5, raw=raw, meta_loss="sum").meta_loss

    raw = optimizer.raw.clone().requires_grad_()
    (meta_gradient,) = torch.autograd.grad(meta_loss_at(raw), raw)
    largest = meta_gradient.abs().max().item()
    assert largest > 0
    for index in range(raw.numel()):
        numeric = central_difference(lambda r: meta_loss_at(r).item(), raw.detach(), index, 1e-5)
        # (entries 1e5-1e7 times smaller than the largest, Adam's eps and weight decay here, are below
        # the difference's round-off, about 1e-16 * meta-loss / step = 1e-11)
        scale = max(abs(meta_gradient[index].item()), 1e-3 * largest)
        assert abs(meta_gradient[index].item() - numeric) < 1e-6 * scale, (index, meta_gradient, numeric)
    whole = unroll(objective, start, optimizer, steps=9)
    first = unroll(objective, start, optimizer, steps=4)
    rest = unroll(objective, first.params, optimizer, steps=5, state=first.state, step_offset=4)
    for mine, theirs in zip(rest.params, whole.params):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"state= must be the \{'optimizer': \.\.\., 'normalizer': \.\.\.\}"):
        unroll(objective, start, optimizer, steps=2, state=first.state["optimizer"])


def test_a_meta_trainer_learns_through_a_normalised_level_zero():
    trainer = quadratic_trainer([rc.SGD(1e-3, learn="lr", normalize="rms"), rc.Adam(0.05)], [10])
    first = trainer.meta_step()
    losses = [trainer.meta_step() for _ in range(15)]
    assert losses[-1] < first and trainer.hyperparameters()["0.lr"] != 1e-3


def test_the_readme_s_unrolled_snippet_trains_the_user_s_model_and_learns_its_lrs():
    """The README's MetaTrainer snippet, run as written on the digits MLP
    (5 of its 20 meta-steps): the model's own parameters are trained (its
    validation loss well below the untrained one) and every learned lr moved."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "rc.MetaTrainer(" in block]
    assert "range(20)" in snippet
    task = rc.problems.Digits()
    model = task.model(64, seed=0)
    stream = task.batches(128, seed=0)
    batches = [next(stream) for _ in range(50)]
    untrained = task.valid_loss(model)
    namespace = {"rc": rc, "torch": torch, "model": model, "batch_at": lambda k: batches[k % len(batches)]}
    exec(snippet.replace("range(20)", "range(5)"), namespace)
    trained = task.valid_loss(model)
    assert trained < 0.1 * untrained, (untrained, trained)
    values = namespace["trainer"].hyperparameters()
    assert values["0.lr"] > 2e-3 and values["1.lr"] != 0.1


def test_write_back_false_leaves_the_given_tensors_as_starting_points():
    start = [torch.zeros(3)]
    kept = rc.MetaTrainer(start, lambda p, k: (p[0] - 1).square().sum(), [rc.SGD(0.1), rc.Adam(0.01)],
                          unroll_steps=[5], write_back=False)
    kept.meta_step()
    assert torch.equal(start[0], torch.zeros(3)) and not torch.equal(kept.params[0], start[0])
    given = [torch.zeros(3)]
    written = rc.MetaTrainer(given, lambda p, k: (p[0] - 1).square().sum(), [rc.SGD(0.1), rc.Adam(0.01)],
                             unroll_steps=[5])
    written.meta_step()
    assert torch.equal(given[0], written.params[0]) and not torch.equal(given[0], torch.zeros(3))
