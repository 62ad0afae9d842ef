"""Running-RMS normalisation: its formula, and that it makes a level's step
size independent of the scale of the gradient it receives."""

import pytest
import torch

import recurse as rc
from recurse.transforms import RunningRMS


@pytest.mark.parametrize("differentiable", [False, True], ids=["host-float-mean", "tensor-mean-in-a-graph"])
def test_running_rms_follows_its_formula(differentiable):
    normalizer = RunningRMS(decay=0.9, eps=1e-12)
    grads_by_step = [[torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=differentiable)],
                     [torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=differentiable)]]
    state = normalizer.init(grads_by_step[0])
    mean_square = 0.0
    for step, grads in enumerate(grads_by_step, start=1):
        out, state = normalizer.apply(grads, state)
        assert out[0].requires_grad == differentiable
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


def test_clip_matches_torch_clip_grad_norm_and_leaves_small_gradients_alone():
    from recurse.transforms import Clip

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 2, generator=generator, dtype=torch.float64), torch.randn(4, generator=generator,
                                                                                       dtype=torch.float64)]
    for max_norm in (0.5, 100.0):
        clipped, _ = Clip(max_norm).apply(grads, {})
        holders = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for holder, grad in zip(holders, grads):
            holder.grad = grad.clone()
        torch.nn.utils.clip_grad_norm_(holders, max_norm)  # its coefficient has + 1e-6 in the denominator
        for mine, holder in zip(clipped, holders):
            torch.testing.assert_close(mine, holder.grad, rtol=1e-6, atol=0)
    assert torch.equal(Clip(100.0).apply(grads, {})[0][0], grads[0])


def test_a_clipped_level_steps_a_tower_with_bounded_updates():
    from recurse.transforms import Clip

    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([x], rc.SGD(1.0, normalize=Clip(0.1)))
    opt.zero_grad()
    (1e6 * x.sum()).backward()
    opt.step()
    assert x.detach().norm().item() == pytest.approx(0.1, rel=1e-12)
