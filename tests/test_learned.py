"""rc.LSTMOptimizer against torch.nn.LSTM, its meta-gradients against float64
finite differences, tying, and the meta-training machinery it needs (sampled
tasks, penalties, the non-finite guard)."""

import copy
import math

import pytest
import torch

import recurse as rc
from recurse.transforms import L2Penalty, log_sign


def float64_params(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def central_difference(function, step=1e-4):
    """Fourth-order central difference of a scalar function of one float at 0."""
    return (function(-2 * step) - 8 * function(-step) + 8 * function(step) - function(2 * step)) / (12 * step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_params_of_any_shape_get_steps_of_their_shape_and_one_state_row_per_coordinate(dtype):
    lstm = rc.LSTMOptimizer(hidden_size=5, layers=3)
    lstm.to("cpu", dtype)
    params = [p.to(dtype) for p in float64_params((3, 4), (), (0,), (2, 1, 2))]
    state = lstm.init(params)
    assert [h.shape for h in state["hidden"]] == [(12 + 1 + 0 + 4, 5)] * 3
    new_params, new_state = lstm.step(params, [2 * p for p in params], state)
    assert [p.shape for p in new_params] == [p.shape for p in params]
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in new_params)
    assert all(h.shape == (17, 5) for h in new_state["hidden"] + new_state["cell"])
    assert any(not torch.equal(h, torch.zeros_like(h)) for h in new_state["hidden"])


@pytest.mark.parametrize("preprocess", ["log_sign", "scale"])
def test_one_step_equals_torch_lstm_and_a_linear_head_with_the_same_weights(preprocess):
    lstm = rc.LSTMOptimizer(hidden_size=6, layers=2, preprocess=preprocess, input_scale=0.5, output_scale=0.1)
    params = float64_params((4, 3), (5,))
    grads = float64_params((4, 3), (5,), seed=1)
    grads[0][0, 0] = 0.0  # the small-gradient branch of log_sign
    state = lstm.init(params)
    state = lstm.step(params, grads, state)[1]  # a non-zero hidden state
    new_params, new_state = lstm.step(params, grads, state)

    weights = lstm.unpack(lstm.raw)
    reference = torch.nn.LSTM(2 if preprocess == "log_sign" else 1, 6, num_layers=2, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(2):
            w_ih, w_hh, bias = weights[3 * layer: 3 * layer + 3]
            getattr(reference, f"weight_ih_l{layer}").copy_(w_ih)
            getattr(reference, f"weight_hh_l{layer}").copy_(w_hh)
            getattr(reference, f"bias_ih_l{layer}").copy_(bias)
            getattr(reference, f"bias_hh_l{layer}").zero_()
    gradient = torch.cat([g.reshape(-1) for g in grads])
    inputs = log_sign(gradient, 10.0) if preprocess == "log_sign" else 0.5 * gradient.unsqueeze(1)
    hidden = (torch.stack(state["hidden"]), torch.stack(state["cell"]))
    with torch.no_grad():
        output, (h, c) = reference(inputs.unsqueeze(0), hidden)
    expected_step = 0.1 * (output[0] @ weights[-2] + weights[-1])
    step = torch.cat([(new - old).reshape(-1) for new, old in zip(new_params, params)])
    torch.testing.assert_close(step, expected_step, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.stack(new_state["hidden"]), h, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.stack(new_state["cell"]), c, rtol=1e-12, atol=1e-14)


def test_log_sign_follows_its_formula_and_has_finite_derivatives_at_zero():
    gradient = torch.tensor([3.0, -1e-2, 1e-6, 0.0, -2e-4], dtype=torch.float64, requires_grad=True)
    features = log_sign(gradient, p=10.0)
    expected = torch.tensor([[math.log(3.0) / 10, 1.0], [math.log(1e-2) / 10, -1.0], [-1.0, 1e-6 * math.exp(10)],
                             [-1.0, 0.0], [math.log(2e-4) / 10, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(features.detach(), expected, rtol=1e-12, atol=0)
    (derivative,) = torch.autograd.grad(features.sum(), gradient)
    assert torch.isfinite(derivative).all()
    assert derivative[3].item() == pytest.approx(math.exp(10))


def quadratic_objective(task):
    return lambda params, step: task.loss(params[0])


def test_unrolled_meta_gradient_of_the_lstm_matches_finite_differences():
    """Directional derivative of the summed loss of a 6-step unroll along a
    random direction in weight space (float64)."""
    task = rc.problems.QuadraticFamily(5, seed=3).sample()
    lstm = rc.LSTMOptimizer(hidden_size=4, layers=2)
    start = [torch.zeros(5, dtype=torch.float64)]

    def meta_loss(raw):
        return rc.unroll(quadratic_objective(task), start, lstm, steps=6, raw=raw, meta_loss="sum").meta_loss

    raw = lstm.raw.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(meta_loss(raw), raw)
    direction = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        finite_difference = central_difference(lambda shift: meta_loss(lstm.raw + shift * direction).item())
    assert (gradient @ direction).item() == pytest.approx(finite_difference, rel=1e-6)


def test_online_hypergradient_of_the_lstm_weights_matches_finite_differences():
    """The LSTM as level 0 of an online tower: the hypergradient reported at
    step T is d L_T / d weights at step T-1, checked along a random direction."""
    task = rc.problems.QuadraticFamily(5, seed=4).sample()

    def tower():
        return rc.LSTMOptimizer(hidden_size=4, layers=1, hyper=rc.SGD(1e-3))

    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], tower())
    for _ in range(3):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
    snapshot = (theta.detach().clone(), copy.deepcopy(opt.state_dict()))
    opt.zero_grad()
    task.loss(theta).backward()
    opt.step()
    opt.zero_grad()
    task.loss(theta).backward()
    opt.step()
    reported = opt.last_hypergradients[0]
    direction = torch.randn(reported.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss_after_one_step(shift):
        point = snapshot[0].clone().requires_grad_()
        again = rc.HyperOptimizer([point], tower())
        again.load_state_dict(copy.deepcopy(snapshot[1]))
        again.levels[0].optimizer.raw = again.levels[0].optimizer.raw + shift * direction
        again.zero_grad()
        task.loss(point).backward()
        again.step()
        return task.loss(point).item()

    assert (reported @ direction).item() == pytest.approx(central_difference(loss_after_one_step), rel=1e-6)


def test_the_lstm_steps_another_optimizers_hyperparameters_and_is_stepped_by_one():
    model = torch.nn.Linear(3, 1).double()
    inputs, targets = float64_params((16, 3), (16, 1))
    for tower in (rc.SGD(0.05, hyper=rc.LSTMOptimizer(hidden_size=4, output_scale=0.01)),
                  rc.stack(rc.LSTMOptimizer(hidden_size=4), rc.Adam(1e-3))):
        opt = rc.HyperOptimizer(model.parameters(), tower)
        start = copy.deepcopy(opt.hyperparameters())
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            opt.step()
        assert opt.hyperparameters().keys() == start.keys()
        assert opt.hyperparameters() != start
        assert opt.nonfinite_steps == 0


def test_a_tied_lstm_uses_one_weight_vector_for_the_model_and_for_itself():
    theta = torch.ones(4, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.tower(rc.LSTMOptimizer(hidden_size=4, output_scale=0.01), depth=2, tie=True))
    lstm = opt.levels[0].optimizer  # (the engine's own copy of the description)
    assert len(opt.levels) == 1 and opt.depth == 2

    def one_step(raw):
        point = theta.detach().clone().requires_grad_()
        again = rc.HyperOptimizer([point], rc.tower(rc.LSTMOptimizer(hidden_size=4, output_scale=0.01), depth=2,
                                                    tie=True))
        again.load_state_dict(copy.deepcopy(opt.state_dict()))
        tied = again.levels[0].optimizer
        tied.raw = raw
        again.zero_grad()
        point.square().sum().backward()
        again.step()
        return point.detach(), tied.raw

    for _ in range(3):
        opt.zero_grad()
        theta.square().sum().backward()
        opt.step()
    model_a, weights_a = one_step(lstm.raw.clone())
    model_b, weights_b = one_step(lstm.raw * 1.01)
    # one vector: changing it changes both the model's step and the LSTM's step of itself
    model_steps = (model_a - theta.detach(), model_b - theta.detach())
    weight_steps = (weights_a - lstm.raw, weights_b - lstm.raw * 1.01)
    for step_a, step_b in (model_steps, weight_steps):
        assert (step_a - step_b).abs().max() > 1e-3 * step_a.abs().max() > 0


def sampled_trainer(**options):
    family = rc.problems.QuadraticFamily(5, seed=0)
    task = family.sample()
    trainer = rc.MetaTrainer([torch.zeros(5, dtype=torch.float64)], quadratic_objective(task),
                             [rc.LSTMOptimizer(hidden_size=4), rc.Adam(1e-2)], unroll_steps=[5],
                             meta_loss="sum", **options)
    return trainer, family


def test_new_task_restarts_the_model_and_hidden_states_but_keeps_the_meta_state():
    trainer, family = sampled_trainer()
    for _ in range(3):
        trainer.meta_step()
    meta_state = trainer.states[-1]
    weights = trainer.values[1][0]
    task = family.sample()
    trainer.new_task([torch.zeros(5, dtype=torch.float64)], quadratic_objective(task))
    assert trainer.states[0] is None and trainer.inner_step == 0
    assert trainer.states[-1] is meta_state and trainer.values[1][0] is weights
    expected = rc.unroll(quadratic_objective(task), [torch.zeros(5, dtype=torch.float64)], trainer.optimizers[0],
                         steps=5, raw=weights, meta_loss="sum").meta_loss.item()
    assert trainer.meta_step() == pytest.approx(expected, rel=1e-12)  # the new task, from fresh hidden states
    assert trainer.meta_steps == 4


def test_an_injected_nan_is_rolled_back_the_meta_lr_shrinks_and_training_continues():
    family = rc.problems.QuadraticFamily(5, seed=0)
    task = family.sample()
    poison = {"at": 7}

    def objective(params, step):
        loss = task.loss(params[0])
        return loss * float("nan") if step == poison["at"] else loss

    trainer = rc.MetaTrainer([torch.zeros(5, dtype=torch.float64)], objective,
                             [rc.LSTMOptimizer(hidden_size=4), rc.Adam(1e-2)], unroll_steps=[5], meta_loss="sum")
    trainer.meta_step()
    before = copy.deepcopy(trainer.state_dict())
    trainer.meta_step()  # inner steps 5..9 include the poisoned one
    assert trainer.nonfinite_steps == 1
    assert trainer.optimizers[-1].initial_values["lr"] == pytest.approx(5e-3)
    for saved, now in zip(before["values"], trainer.values):
        assert all(torch.equal(a, b) for a, b in zip(saved, now))
    assert torch.equal(trainer.optimizers[0].raw, before["values"][1][0])
    poison["at"] = -1
    trainer.meta_step()
    assert math.isfinite(trainer.last_meta_loss) and trainer.nonfinite_steps == 1


@pytest.mark.parametrize("around", ["zero", "start"])
def test_weight_and_drift_penalties_add_their_formula_to_the_meta_gradient(around):
    trainer, _ = sampled_trainer()
    trainer.meta_step()  # so that "start" and the current weights differ
    saved = copy.deepcopy(trainer.state_dict())
    raw = trainer.values[1][0]

    def meta_gradient(penalties):
        trainer.load_state_dict(copy.deepcopy(saved))
        trainer.penalties = penalties
        leaf = raw.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(trainer.meta_loss_of(leaf), leaf)
        return gradient

    difference = meta_gradient([L2Penalty(0.3, around=around)]) - meta_gradient([])
    center = trainer.start_raw if around == "start" else torch.zeros_like(raw)
    assert not torch.equal(raw, trainer.start_raw)
    torch.testing.assert_close(difference, 2 * 0.3 * (raw - center), rtol=1e-10, atol=1e-12)


def test_the_update_size_penalty_matches_finite_differences():
    task = rc.problems.QuadraticFamily(5, seed=5).sample()
    lstm = rc.LSTMOptimizer(hidden_size=4, layers=1)
    start = [torch.zeros(5, dtype=torch.float64)]

    def penalised(raw, weight):
        return rc.unroll(quadratic_objective(task), start, lstm, steps=4, raw=raw, update_penalty=weight,
                         meta_loss="final").meta_loss

    raw = lstm.raw.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(penalised(raw, 2.0) - penalised(raw, 0.0), raw)
    direction = torch.randn(raw.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def update_sizes(shift):
        """2 * sum_k ||theta_{k+1} - theta_k||^2, the penalty's formula, at weights + shift * direction."""
        params, state, total = start, lstm.init(start), 0.0
        with torch.enable_grad():
            for _ in range(4):
                point = params[0].detach().requires_grad_()
                (grad,) = torch.autograd.grad(task.loss(point), point)
                new, state = lstm.update([point.detach()], [grad], state, {"weights": lstm.raw + shift * direction})
                total += (new[0] - point.detach()).square().sum().item()
                params = new
        return 2.0 * total

    assert (gradient @ direction).item() == pytest.approx(central_difference(update_sizes), rel=1e-6)


def test_a_meta_trainer_with_an_lstm_resumes_bit_for_bit():
    trainer, family = sampled_trainer(penalties=[L2Penalty(1e-3, around="start")])
    trainer.meta_step()
    saved = copy.deepcopy(trainer.state_dict())
    expected = [trainer.meta_step() for _ in range(3)]
    resumed, _ = sampled_trainer(penalties=[L2Penalty(1e-3, around="start")])
    resumed.load_state_dict(saved)
    assert [resumed.meta_step() for _ in range(3)] == expected
    assert torch.equal(resumed.values[1][0], trainer.values[1][0])


def test_a_meta_trainer_rejects_penalties_that_are_not_callable():
    with pytest.raises(TypeError, match=r"penalties\[0\] must be callable"):
        sampled_trainer(penalties=[0.1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meta_training_and_evaluating_an_lstm_on_cuda_matches_the_cpu():
    results = {}
    for device in ("cpu", "cuda"):
        tasks = rc.problems.QuadraticFamily(5, seed=0, device=device).sample_batch(4)
        start = [torch.zeros(4, 5, dtype=torch.float64, device=device)]
        trainer = rc.MetaTrainer(start, lambda params, k: tasks.loss(params[0]),
                                 [rc.LSTMOptimizer(hidden_size=4), rc.Adam(1e-2)], unroll_steps=[5], meta_loss="sum")
        for _ in range(3):
            trainer.meta_step()
        history, _ = rc.evaluate(trainer.optimizers[0], lambda params, k: tasks.losses(params[0]), start, steps=10)
        assert history.device.type == device
        results[device] = history.cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-9, atol=1e-12)
