"""rc.Rprop: torch.optim.Rprop's numbers, the same rule on host floats
(a tower's top level), and its own step sizes from the gradient's signs."""

import copy

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step

SETTINGS = [{}, {"lr": 0.05, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "etas-and-step-sizes"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_depth_zero_is_bit_identical_to_torch_optim_rprop(settings, dtype):
    inputs, targets = (t.to(dtype) for t in regression_data())
    ours_model, theirs_model = small_mlp(dtype=dtype), small_mlp(dtype=dtype)
    ours = rc.HyperOptimizer(ours_model.parameters(), rc.Rprop(**settings))
    theirs = torch.optim.Rprop(theirs_model.parameters(), **settings)
    for _ in range(60):
        assert train_step(ours_model, ours, inputs, targets) == train_step(theirs_model, theirs, inputs, targets)
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(p, q)


def test_host_floats_follow_the_tensor_rule_exactly():
    rule = rc.Rprop(0.01)
    generator = torch.Generator().manual_seed(0)
    # a gradient sequence with sign flips, zeros and repeats, on three coordinates
    grads = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    grads[5] = 0.0
    grads[10:20, 0] = grads[10:20, 0].abs()
    tensor_params, tensor_state = [torch.zeros(3, dtype=torch.float64)], None
    host_params, host_state = [0.0, 0.0, 0.0], None
    tensor_state, host_state = rule.init(tensor_params), rule.init(host_params)
    for grad in grads:
        tensor_params, tensor_state = rule.step(tensor_params, [grad], tensor_state)
        host_params, host_state = rule.step(host_params, grad.tolist(), host_state)
        assert tensor_params[0].tolist() == host_params
        assert tensor_state["step_size"][0].tolist() == host_state["step_size"]


def test_step_size_grows_by_eta_plus_while_the_sign_holds_and_halves_when_it_flips():
    rule = rc.Rprop(0.01)
    params, state = [0.0], rule.init([0.0])
    for _ in range(5):
        params, state = rule.step(params, [2.0], state)
    assert state["step_size"][0] == pytest.approx(0.01 * 1.2**4)  # the first step compares with nothing
    assert params[0] == pytest.approx(-sum(0.01 * 1.2**k for k in range(5)))
    before = params[0]
    params, state = rule.step(params, [-3.0], state)  # a flip: smaller step, and this one is skipped
    assert state["step_size"][0] == pytest.approx(0.01 * 1.2**4 * 0.5) and params[0] == before
    params, state = rule.step(params, [-3.0], state)  # after a skipped step the sign is compared with 0
    assert state["step_size"][0] == pytest.approx(0.01 * 1.2**4 * 0.5) and params[0] > before


def test_as_the_top_of_a_tower_it_learns_level_zero_lr_and_resumes_exactly():
    inputs, targets = regression_data()

    def build(model):
        return rc.HyperOptimizer(model.parameters(), rc.stack(rc.AdamW(1e-4, learn="lr"), rc.Rprop()))

    model = small_mlp()
    opt = build(model)
    for _ in range(30):
        train_step(model, opt, inputs, targets)
    assert opt.hyperparameters()["0.lr"] > 1e-3  # from 1e-4, on a full-batch problem where larger steps help
    resumed_model = copy.deepcopy(model)
    resumed = build(resumed_model)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        assert train_step(model, opt, inputs, targets) == train_step(resumed_model, resumed, inputs, targets)
    assert opt.hyperparameters() == resumed.hyperparameters()
