"""One exact step: Newton against closed forms, CG against exact, Taylor
steps, sharpness and trace against dense eigenvalues, errors."""

import math

import pytest
import torch

import recurse as rc
from recurse import exact
from recurse.problems import Cubic, LinearRegression, QuadraticFamily, Rosenbrock, XCosPiX


def random_spd_quadratic(dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    matrix = basis @ basis.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    vector = torch.randn(dim, generator=generator, dtype=torch.float64)
    return matrix, vector, lambda params: 0.5 * params[0] @ matrix @ params[0] - vector @ params[0]


def test_newton_on_a_random_spd_quadratic_lands_on_the_closed_form():
    matrix, vector, loss_fn = random_spd_quadratic()
    theta = torch.randn(8, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.Newton())
    opt.step(lambda: loss_fn([theta]))
    solution = torch.linalg.solve(matrix, vector)
    assert ((theta - solution).norm() / solution.norm()).item() < 1e-10


def test_newton_on_linear_regression_lands_on_least_squares():
    task = LinearRegression(seed=3)
    model = task.model()
    opt = rc.HyperOptimizer(model.parameters(), rc.Newton())
    opt.step(lambda: task.loss(model, task.train_inputs, task.train_targets))
    weights, bias, _ = task.minimum()
    assert ((model.weight[0] - weights).norm() / weights.norm()).item() < 1e-10
    assert abs(model.bias.item() - bias.item()) < 1e-10


def test_hvp_conjugate_gradient_matches_the_exact_newton_step():
    task = QuadraticFamily(10, seed=2).sample()
    start = [torch.randn(10, dtype=torch.float64)]
    for damping in (0.0, 0.5):
        exact_step = exact.newton_direction(lambda p: task.loss(p[0]), start, damping=damping)[0]
        cg_step = exact.newton_direction(lambda p: task.loss(p[0]), start, damping=damping, method="cg")[0]
        torch.testing.assert_close(cg_step, exact_step, rtol=1e-9, atol=1e-12)


def test_newton_on_an_mlp_with_cg_and_damping_descends():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    inputs, targets = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    loss = lambda: torch.nn.functional.mse_loss(model(inputs), targets)  # noqa: E731
    # At this start the Hessian's smallest eigenvalue is -1.29: damping 2 makes the system positive definite.
    opt = rc.HyperOptimizer(model.parameters(), rc.Newton(damping=2.0, method="cg"))
    before = loss().item()
    for _ in range(5):
        opt.step(loss)
    assert loss().item() < before


def test_a_learned_damping_gets_a_hypergradient():
    task = QuadraticFamily(6, seed=0).sample()
    theta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.Newton(0.5, damping=1.0, hyper=rc.SGD(0.01)))
    for _ in range(3):
        opt.step(lambda: task.loss(theta))
    assert opt.hyperparameters()["0.damping"] != 1.0 and opt.hyperparameters()["0.lr"] != 0.5


def test_taylor_order_two_is_the_newton_step_and_order_one_a_gradient_step():
    problem = Rosenbrock(3)
    x = problem.start()
    newton = x + exact.newton_direction(lambda p: problem.loss(p[0]), [x])[0]
    torch.testing.assert_close(exact.taylor_step(problem.loss, x, 2), newton, rtol=1e-12, atol=1e-12)
    gradient = exact.gradient(lambda p: problem.loss(p[0]), [x])
    torch.testing.assert_close(exact.taylor_step(problem.loss, x, 1, lr=1e-3), x - 1e-3 * gradient)


def test_taylor_order_three_is_halley_type_in_one_dimension():
    # f(x) = exp(x) - 2x: minimum at log 2. The order-3 model's stationary point solves
    # f' + f'' d + f''' d^2 / 2 = 0 (the root nearest the Newton step).
    loss = lambda x: (torch.exp(x) - 2 * x).sum()  # noqa: E731
    x = torch.tensor([1.0], dtype=torch.float64)
    a = math.exp(1.0)
    first, second, third = a - 2, a, a
    expected = (-second + math.sqrt(second**2 - 2 * third * first)) / third
    stepped = exact.taylor_step(loss, x, 3)
    assert stepped.item() == pytest.approx(1.0 + expected, rel=1e-12)
    errors = [abs(exact.taylor_step(loss, x, k).item() - math.log(2)) for k in (2, 3, 4)]
    assert errors[0] > errors[1] > errors[2]  # each extra order lands closer


def small_model_loss():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    inputs, targets = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]

    def loss_fn(params):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, dict(zip(names, params)), (inputs,)),
                                            targets)

    return loss_fn, [p.detach() for p in model.parameters()]


def test_sharpness_is_the_top_eigenvalue_of_the_dense_hessian():
    loss_fn, params = small_model_loss()
    eigenvalues = torch.linalg.eigvalsh(exact.hessian(loss_fn, params))
    assert exact.sharpness(loss_fn, params, iterations=5000, tolerance=1e-14) == pytest.approx(
        eigenvalues[-1].item(), rel=1e-6)
    # A concave loss: the top eigenvalue is negative, and the shift finds it (not the largest in magnitude).
    matrix = -torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    concave = lambda p: 0.5 * p[0] @ matrix @ p[0]  # noqa: E731
    assert exact.sharpness(concave, [torch.ones(3, dtype=torch.float64)]) == pytest.approx(-1.0, rel=1e-6)


def test_hutchinson_trace_estimates_the_trace():
    loss_fn, params = small_model_loss()
    trace = torch.trace(exact.hessian(loss_fn, params)).item()
    estimate, error = exact.hessian_trace(loss_fn, params, samples=2000)
    assert abs(estimate - trace) < 4 * error


def test_newton_is_attracted_to_the_saddle_of_x_cubed_and_refuses_to_step_at_a_maximum():
    x = torch.tensor([1.0], dtype=torch.float64)
    for _ in range(30):
        x = x + exact.newton_direction(lambda p: Cubic().loss(p[0]), [x])[0]
    assert abs(x.item()) < 1e-8  # halves every step: towards the saddle at 0
    with pytest.raises(ValueError, match="not positive definite .*smallest eigenvalue -6 with damping 0"):
        exact.newton_direction(lambda p: Cubic().loss(p[0]), [torch.tensor([-1.0], dtype=torch.float64)])


def test_the_local_minimum_of_x_cos_pi_x_is_found_from_nearby_starts():
    landscape = XCosPiX()
    (local_x, _), (global_x, _) = landscape.minima()
    for start, expected in ((-0.2, local_x), (1.0, global_x)):
        x = torch.tensor([start], dtype=torch.float64)
        for _ in range(20):
            x = exact.taylor_step(landscape.loss, x, 2)
        assert x.item() == pytest.approx(expected, abs=1e-12)


BAD = {
    "non-scalar loss": (lambda: exact.hessian(lambda p: p[0] * 2, [torch.ones(2)]), ValueError,
                        r"the loss must be a scalar tensor, got \(2,\)"),
    "order 0": (lambda: exact.taylor_step(lambda x: x.sum(), torch.ones(1), 0), ValueError,
                "order must be an integer >= 1, got 0"),
    "singular hessian without damping": (
        lambda: exact.newton_direction(lambda p: (p[0][0] - 1) ** 2, [torch.zeros(2, dtype=torch.float64)]),
        ValueError, r"not positive definite \(smallest eigenvalue 0 with damping 0\)"),
    "singular hessian in a Taylor step": (
        lambda: exact.taylor_step(lambda x: (x[0] - 1) ** 2, torch.zeros(2, dtype=torch.float64), 2), ValueError,
        "the Hessian is singular at x"),
    "Newton without a closure": (lambda: _newton_step_without_closure(), ValueError, "needs the loss"),
    "unknown method": (lambda: rc.Newton(method="lbfgs"), ValueError, "method must be 'exact' or 'cg'"),
}


def _newton_step_without_closure():
    theta = torch.zeros(2, requires_grad=True)
    theta.grad = torch.ones(2)
    rc.HyperOptimizer([theta], rc.Newton()).step()


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_named(case):
    call, error, message = BAD[case]
    with pytest.raises(error, match=message):
        call()


def test_singular_hessian_with_damping_steps():
    direction = exact.newton_direction(lambda p: (p[0][0] - 1) ** 2, [torch.zeros(2, dtype=torch.float64)],
                                       damping=1e-3)
    assert torch.isfinite(direction[0]).all() and direction[0][1].item() == 0.0
