"""Divergence survival: runs that blow up end with finite parameters, every
rollback counted, logged, and reported in results."""

import logging

import pytest
import torch

import recurse as rc
from recurse.baselines import Diverged, train
from recurse.problems import LinearRegression, QuadraticFamily


def run_on_quadratic(tower, steps=300, seed=0):
    task = QuadraticFamily(10, seed=seed).sample()
    theta = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], tower)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
        assert torch.isfinite(theta).all(), "the model holds a non-finite value"
    return task, theta, opt


SCENARIOS = {
    "lr 1e3x too large, fixed": lambda L: rc.SGD(1e3 / L),
    "lr 1e3x too large, depth 2": lambda L: rc.stack(rc.SGD(1e3 / L), rc.SGD(0.05, normalize="rms"),
                                                    rc.SGD(0.01, normalize="rms")),
    "oscillating tower (hyper lr 10, no normalisation)": lambda L: rc.stack(rc.SGD(0.5 / L), rc.SGD(10.0),
                                                                             rc.SGD(10.0)),
    "Adam lr 1e3x too large under a tied tower": lambda L: rc.tower(rc.Adam(1.0), 3, tie=True),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_diverging_run_ends_finite_with_every_rollback_counted_and_logged(name, caplog):
    L = QuadraticFamily(10, seed=0).sample().smoothness()
    with caplog.at_level(logging.WARNING, logger="recurse"):
        _, theta, opt = run_on_quadratic(SCENARIOS[name](L))
    assert torch.isfinite(theta).all()
    assert all(torch.isfinite(level.optimizer.raw).all() for level in opt.levels)
    assert opt.step_count + opt.nonfinite_steps == 300
    if opt.nonfinite_steps:  # logged at the 1st, 2nd, 4th, 8th, ... event, each line with the count so far
        logged = [record.getMessage() for record in caplog.records if "non-finite" in record.getMessage()]
        last_power_of_two = 1 << (opt.nonfinite_steps.bit_length() - 1)
        assert logged[0].endswith("(1 non-finite steps so far)")
        assert logged[-1].endswith(f"({last_power_of_two} non-finite steps so far)")
        assert len(logged) == opt.nonfinite_steps.bit_length()


def test_the_scenarios_really_diverge_without_the_guard():
    L = QuadraticFamily(10, seed=0).sample().smoothness()
    task = QuadraticFamily(10, seed=0).sample()
    theta = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], SCENARIOS["lr 1e3x too large, fixed"](L), guard="off")
    for _ in range(300):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
    assert not torch.isfinite(theta).all()


def test_a_run_that_cannot_recover_is_reported_diverged_with_its_rollbacks():
    with pytest.raises(Diverged, match="consecutive steps rolled back as non-finite|validation loss inf") as caught:
        train(LinearRegression(seed=0), rc.SGD(50.0), steps=400)
    result = caught.value.result
    assert 0 < result.gradient_evaluations < 400 and result.seconds > 0


@pytest.mark.parametrize("one_kernel", [True, False], ids=["amp-kernel", "fallback-sums"])
def test_the_finiteness_check_finds_any_nan_or_inf_and_leaves_every_value_as_it_was(one_kernel, monkeypatch):
    from recurse.optim import _ops

    if not one_kernel:
        def missing(*args):
            raise NotImplementedError("no such kernel here")
        monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 4, generator=generator), torch.randn((), generator=generator, dtype=torch.float64),
               torch.empty(0), torch.randn(5, generator=generator)[::2]]
    tensors[1].fill_(3e38)  # large but finite: not divergence
    assert _ops.all_finite(tensors) and _ops.all_finite([])
    reused = _ops.FiniteCheck("cpu")  # as HyperOptimizer keeps one
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in (0, 1, 3):
            corrupted = [t.clone() for t in tensors]
            corrupted[index].view(-1)[-1] = bad
            before = [(t.clone(), t._version) for t in corrupted]
            assert not _ops.all_finite(corrupted), f"missed {bad} in tensor {index}"
            assert not reused(corrupted) and reused(tensors), "a reused check must forget what it found"
            for t, (copy, version) in zip(corrupted, before):
                assert torch.equal(t.nan_to_num(), copy.nan_to_num()) and t._version == version
