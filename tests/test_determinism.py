"""The same seed gives bit-identical results on CPU: online engine, unrolled
engine, and rc.compare with its seeded Optuna samplers."""

import optuna
import torch

import recurse as rc
from recurse.baselines.comparison import compare
from recurse.problems import Digits, LinearRegression

optuna.logging.set_verbosity(optuna.logging.WARNING)


def online_run():
    task = Digits()
    model = task.model(16, seed=3)
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-3), rc.SGD(0.05, normalize="rms"),
                                                         rc.SGD(0.01, normalize="rms")))
    batches = task.batches(64, seed=3)
    for _ in range(30):
        inputs, targets = next(batches)
        opt.zero_grad()
        task.loss(model, inputs, targets).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt.hyperparameters()


def unrolled_run():
    task = Digits()
    model = task.model(16, seed=3)
    objective = rc.model_objective(model, task.criterion, task.batch_at(64, seed=3))
    trainer = rc.MetaTrainer(list(model.parameters()), objective, [rc.Adam(1e-3, learn="lr"), rc.SGD(1e-2),
                                                                   rc.Adam(1e-3)], unroll_steps=[5, 2])
    losses = [trainer.meta_step() for _ in range(3)]
    return trainer.params, losses


def test_the_online_engine_is_deterministic():
    (params_a, hyper_a), (params_b, hyper_b) = online_run(), online_run()
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b)) and hyper_a == hyper_b


def test_the_unrolled_engine_is_deterministic():
    (params_a, losses_a), (params_b, losses_b) = unrolled_run(), unrolled_run()
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b)) and losses_a == losses_b


def test_compare_is_deterministic_given_its_seeds(tmp_path):
    options = dict(methods=["depth1", "unroll5", "grid", "random", "tpe"], budget=200, steps=20, batch_size=64,
                   seeds=[4], quiet=True)
    first = compare(LinearRegression(seed=1), out=tmp_path / "a", **options)
    second = compare(LinearRegression(seed=1), out=tmp_path / "b", **options)
    for a, b in zip(first, second):
        assert a.method == b.method
        assert a.result.curve == b.result.curve and a.search_curve == b.search_curve
        assert a.result.hyperparameters == b.result.hyperparameters
