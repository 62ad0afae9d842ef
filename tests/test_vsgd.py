"""rc.VSGD against the paper's noisy quadratic, its slow start, resume, and
the hypergradient of its lr multiplier."""

import copy
import math

import pytest
import torch

import recurse as rc


def closure_of(opt, loss_of):
    """A closure as torch.optim.LBFGS takes: zero the gradients, compute the loss, backward, return it."""
    def closure():
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss
    return closure


def noisy_quadratic(dimension=1000, steps=500, seed=0):
    """The paper's problem: coordinate i's loss on a sample is
    h_i (theta_i - xi_i)^2 / 2 with xi_i ~ N(0, 1) (sigma = 1), curvatures
    log-uniform in [0.1, 10], theta started at 10 (m0 = 100). Yields (step,
    theta after it, the rates the step used)."""
    generator = torch.Generator().manual_seed(seed)
    curvature = torch.exp(torch.empty(dimension, dtype=torch.float64).uniform_(
        math.log(0.1), math.log(10), generator=generator))
    theta = torch.full((dimension,), 10.0, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.VSGD())
    for step in range(1, steps + 1):
        noise = torch.randn(dimension, generator=generator, dtype=torch.float64)
        opt.step(closure_of(opt, lambda: 0.5 * (curvature * (theta - noise) ** 2).sum()))
        yield step, curvature, theta.detach(), rc.VSGD.rates(opt.levels[0].state)[0]


def test_the_first_step_is_newton_s_shortened_by_the_slow_start():
    """With nothing averaged yet, rate = (h / (C h^2)) (g^2 / (C g^2)) = 1 / (C^2 h): C = 2."""
    step, curvature, _, rate = next(noisy_quadratic(dimension=50))
    torch.testing.assert_close(rate * curvature, torch.full_like(rate, 0.25), rtol=1e-6, atol=0)


def test_on_the_noisy_quadratic_the_rate_anneals_like_the_optimal_one():
    """The greedy optimal rate of step t (the one minimising E[theta_t^2]) is
    eta*_t = m / (h (m + sigma^2)) with m = E[theta_{t-1}^2]; under it
    1 / m_t = 1 / m0 + t / sigma^2, so eta*_t h = 1 / (t + sigma^2 / m0) =
    1 / (t + 0.01) here, and E[theta_t^2] = 1 / (0.01 + t). From step 20 on, vSGD's rates stay
    within a constant factor of it (the median over coordinates of
    rate h (t + 0.01) within [0.25, 1]; measured 0.39-0.43 from step 20 to
    2000), and the mean squared distance to the optimum within 3x the
    optimal schedule's (measured 2.1-2.6x): the 1/t annealing the paper
    derives, found with no learning rate."""
    ratios, distances = [], []
    for step, curvature, theta, rate in noisy_quadratic():
        if step >= 20:
            ratios.append((rate * curvature * (step + 0.01)).median().item())
            distances.append((theta ** 2).mean().item() * (1 / 100 + step))
    assert 0.25 <= min(ratios) and max(ratios) <= 1.0, (min(ratios), max(ratios))
    assert max(distances) <= 3.0 and min(distances) >= 1.0, (min(distances), max(distances))


def mlp_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    targets = torch.sin(inputs.sum(1, keepdim=True))
    batches = [(inputs[i::4], targets[i::4]) for i in range(4)]
    return model, batches


def run(model, opt, batches, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        inputs, targets = batches[step % len(batches)]
        loss = opt.step(closure_of(opt, lambda: torch.nn.functional.mse_loss(model(inputs), targets)))
        losses.append(loss.item())
    return losses


def test_it_trains_a_network_with_no_learning_rate_and_resumes_bit_for_bit():
    model, batches = mlp_problem()
    opt = rc.HyperOptimizer(model.parameters(), rc.VSGD())
    losses = run(model, opt, batches, 60)
    assert losses[-1] < 0.5 * losses[0]

    whole_model, _ = mlp_problem()
    whole = rc.HyperOptimizer(whole_model.parameters(), rc.VSGD())
    run(whole_model, whole, batches, 30)
    saved = copy.deepcopy((whole_model.state_dict(), whole.state_dict()))
    run(whole_model, whole, batches, 30, start=30)
    resumed_model, _ = mlp_problem()
    resumed_model.load_state_dict(saved[0])
    resumed = rc.HyperOptimizer(resumed_model.parameters(), rc.VSGD())
    resumed.load_state_dict(saved[1])
    run(resumed_model, resumed, batches, 30, start=30)
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), whole_model.parameters()))


def test_the_hypergradient_of_its_lr_multiplier_matches_central_differences():
    """rc.VSGD(hyper=rc.SGD(...)) learns the multiplier on its own rate; the
    hypergradient the engine reports at step T is d L_T / d log lr, checked
    against float64 central differences of the loss after step T - 1."""
    model, batches = mlp_problem()

    def tower():
        return rc.VSGD(hyper=rc.SGD(0.01))

    opt = rc.HyperOptimizer(model.parameters(), tower())
    run(model, opt, batches, 4)
    snapshot = copy.deepcopy((model.state_dict(), opt.state_dict()))
    run(model, opt, batches, 2, start=4)
    reported = opt.last_hypergradients[0].item()

    def loss_after(shift):
        shifted, _ = mlp_problem()
        shifted.load_state_dict(snapshot[0])
        again = rc.HyperOptimizer(shifted.parameters(), tower())
        again.load_state_dict(copy.deepcopy(snapshot[1]))
        again.levels[0].optimizer.raw = again.levels[0].optimizer.raw + shift
        run(shifted, again, batches, 1, start=4)
        inputs, targets = batches[5 % len(batches)]
        with torch.no_grad():
            return torch.nn.functional.mse_loss(shifted(inputs), targets).item()

    h = 1e-3
    central = (loss_after(-2 * h) - 8 * loss_after(-h) + 8 * loss_after(h) - loss_after(2 * h)) / (12 * h)
    assert reported == pytest.approx(central, rel=1e-6)


def test_a_step_without_the_loss_says_how_to_give_it():
    model, batches = mlp_problem()
    opt = rc.HyperOptimizer(model.parameters(), rc.VSGD())
    inputs, targets = batches[0]
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"evaluates the loss again; call step\(closure\) with a closure as "
                                         r"torch.optim.LBFGS takes"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_on_a_quadratic_the_steps_do_not_depend_on_the_scale_of_the_loss():
    """The noisy quadratic times 1e-6: gradients, curvatures and variances
    scale, rates scale inversely, and the steps are the same (to 1e-8 of the
    parameters: the finite difference is taken at p + gbar, a point that
    rounds differently; no constant is added to a statistic, and with one a
    loss of 1e-6 did not move). Beyond a quadratic the difference is taken
    over d = gbar, a distance that scales with the loss, so the curvature it
    sees does too: the paper's choice."""
    runs = []
    for scale in (1.0, 1e-6):
        generator = torch.Generator().manual_seed(0)
        curvature = torch.linspace(0.1, 10, 20, dtype=torch.float64)
        theta = torch.full((20,), 10.0, dtype=torch.float64, requires_grad=True)
        opt = rc.HyperOptimizer([theta], rc.VSGD())
        for _ in range(50):
            noise = torch.randn(20, generator=generator, dtype=torch.float64)
            opt.step(closure_of(opt, lambda: scale * 0.5 * (curvature * (theta - noise) ** 2).sum()))
        runs.append(theta.detach().clone())
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-8)
    assert runs[0].abs().max() < 1.0  # (from 10: it trained)


def test_a_closure_that_does_not_zero_the_gradients_takes_the_same_steps():
    runs = []
    for zeroes in (True, False):
        model, batches = mlp_problem()
        opt = rc.HyperOptimizer(model.parameters(), rc.VSGD())
        for step in range(10):
            inputs, targets = batches[step % len(batches)]

            def closure():
                if zeroes:
                    opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(inputs), targets)
                loss.backward()
                return loss

            if not zeroes:
                opt.zero_grad()  # (once, before the step: the step's own second call does not zero)
            opt.step(closure)
        runs.append([p.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_param_groups_take_the_step_s_closure_and_vsgd_steps_each_group():
    """(Several param groups run as an rc.PerGroup, which passes the
    closure to a rule that evaluates the loss again and to no other.)"""
    for rule in (rc.SGD(0.05), rc.VSGD()):
        model, batches = mlp_problem()
        first, second = model[0], model[2]
        opt = rc.HyperOptimizer([{"params": first.parameters()}, {"params": second.parameters()}], rule)
        losses = run(model, opt, batches, 30)
        assert losses[-1] < losses[0], rule


def test_where_it_cannot_evaluate_the_loss_again_it_is_refused_when_built():
    theta = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match=r"level 1 \(rc.VSGD.*\) evaluates the loss again at other points"):
        rc.HyperOptimizer(theta, rc.SGD(0.1, hyper=rc.VSGD()))
    with pytest.raises(ValueError, match=r"optimizers\[0\] \(rc.VSGD.*\) evaluates the loss again"):
        rc.MetaTrainer([torch.zeros(3)], lambda p, k: p[0].sum(), [rc.VSGD(), rc.Adam(0.1)], unroll_steps=[5])
    graph = rc.graph.build({"w": theta}, {"v": rc.VSGD()}, {"v": "w"})
    with pytest.raises(ValueError, match=r"node 'v' \(rc.VSGD.*\) evaluates the loss again"):
        rc.graph.GraphOptimizer(graph)
