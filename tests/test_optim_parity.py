"""At fixed hyperparameters every built-in matches torch.optim."""

import pytest
import torch

import recurse as rc
from optimizer_table import CASE_IDS, CASES, regression_data, small_mlp, train_step


def random_problem(seed: int):
    """A random least-squares-plus-quartic problem on tensors of mixed shapes."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (), (2, 2, 2)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    targets = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]

    def loss(params):
        return sum(((p - t) ** 2).sum() + 0.1 * ((p - t) ** 4).sum() for p, t in zip(params, targets))

    return start, loss


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_step_matches_torch_optim_for_200_steps(case, seed):
    start, loss = random_problem(seed)
    reference_params = [p.clone().requires_grad_() for p in start]
    reference = case.reference(reference_params)
    optimizer = case.make()
    params = [p.clone() for p in start]
    state = optimizer.init(params)
    for _ in range(200):
        reference.zero_grad()
        (case.sign * loss(reference_params)).backward()
        reference.step()
        leaves = [p.requires_grad_() for p in params]
        grads = torch.autograd.grad(case.sign * loss(leaves), leaves)
        params, state = optimizer.step([p.detach() for p in leaves], grads, state)
    for initial, ours, theirs in zip(start, params, reference_params):
        change_ours, change_theirs = ours - initial, theirs.detach() - initial
        scale = change_theirs.abs().max().clamp_min(1e-300)
        assert (change_ours - change_theirs).abs().max() / scale < 1e-6


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("set_to_none", [True, False], ids=["grads-set-to-none", "grads-zeroed-in-place"])
def test_depth_zero_hyperoptimizer_is_bit_identical_to_torch_optim(case, set_to_none):
    # Zeroing .grad in place (zero_grad(set_to_none=False)) must not reach
    # any state the optimizer kept, as it does not in torch.optim.
    inputs, targets = regression_data()
    ours_model, theirs_model = small_mlp(), small_mlp()
    ours = rc.HyperOptimizer(ours_model.parameters(), case.make())
    theirs = case.reference(list(theirs_model.parameters()))
    for _ in range(50):
        ours_loss = train_step(ours_model, ours, inputs, targets, set_to_none=set_to_none, sign=case.sign)
        assert ours_loss == train_step(theirs_model, theirs, inputs, targets, set_to_none=set_to_none, sign=case.sign)
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(p, q)
