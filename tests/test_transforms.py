"""Running-RMS normalisation: its formula, and that it makes a level's step
size independent of the scale of the gradient it receives."""

import pytest
import torch

import recurse as rc
from recurse.transforms import RunningRMS


def test_running_rms_follows_its_formula():
    normalizer = RunningRMS(decay=0.9, eps=1e-12)
    grads_by_step = [[torch.tensor([3.0, 4.0], dtype=torch.float64)], [torch.tensor([1.0, -1.0], dtype=torch.float64)]]
    state = normalizer.init(grads_by_step[0])
    mean_square = 0.0
    for step, grads in enumerate(grads_by_step, start=1):
        out, state = normalizer.apply(grads, state)
        mean_square = 0.9 * mean_square + 0.1 * grads[0].square().mean().item()
        expected = grads[0] / (mean_square / (1 - 0.9**step) + 1e-24) ** 0.5
        assert torch.allclose(out[0], expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_normalised_sgd_takes_the_same_steps_whatever_the_gradient_scale(scale):
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([x], rc.SGD(0.1, normalize="rms"))
    for _ in range(20):
        opt.zero_grad()
        (scale * (x - target).square().sum()).backward()
        opt.step()
    reference = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref_opt = rc.HyperOptimizer([reference], rc.SGD(0.1, normalize="rms"))
    for _ in range(20):
        ref_opt.zero_grad()
        (reference - target).square().sum().backward()
        ref_opt.step()
    assert torch.allclose(x, reference, rtol=1e-9, atol=1e-12)
