"""Parameters as torch.optim takes them: a frozen layer passed with the rest,
a branch used on some steps only (its .grad is None on the others), a layer
unfrozen mid-run. Each is skipped at the steps where it has no gradient, as
torch.optim skips it, with its own step count (recurse.partial)."""

import copy
import io

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data

RULES = {  # rc rule, torch.optim counterpart (each keeps per-parameter state; Adam and Adagrad a step count)
    "sgd-momentum": (lambda **o: rc.SGD(0.05, momentum=0.9, **o), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "adam": (lambda **o: rc.Adam(1e-2, **o), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adamw-amsgrad": (lambda **o: rc.AdamW(1e-2, amsgrad=True, **o),
                      lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True)),
    "rmsprop-centered-momentum": (lambda **o: rc.RMSprop(1e-2, momentum=0.5, centered=True, **o),
                                  lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True)),
    "adagrad-lr-decay": (lambda **o: rc.Adagrad(5e-2, lr_decay=0.1, **o),
                         lambda p: torch.optim.Adagrad(p, lr=5e-2, lr_decay=0.1)),
}


class Branched(torch.nn.Module):
    """trunk -> head, plus a branch (between them in parameters()) that a
    step uses or not."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Linear(4, 6)
        self.branch = torch.nn.Linear(6, 1)
        self.head = torch.nn.Linear(6, 1)
        self.double()

    def forward(self, inputs, use_branch):
        hidden = torch.tanh(self.trunk(inputs))
        return self.head(hidden) + self.branch(hidden) if use_branch else self.head(hidden)


def uses_branch(step):
    return step % 3 != 1  # (skipped at steps 1, 4, 7, ...: the branch falls one step behind each time)


def loss_at(model, step, inputs, targets):
    return torch.nn.functional.mse_loss(model(inputs, uses_branch(step)), targets)


def run(model, opt, steps, start=0, *, before_step=None):
    inputs, targets = regression_data()
    for step in range(start, start + steps):
        if before_step is not None:
            before_step(step)
        opt.zero_grad()
        loss_at(model, step, inputs, targets).backward()
        opt.step()


def assert_trains_as(ours_model, ours, theirs_model, theirs, steps=8):
    """``ours`` and the torch.optim optimizers ``theirs`` train the two
    models (one loss, one backward each step) to the same parameters, to the bit."""
    inputs, targets = regression_data()
    for step in range(steps):
        for model, optimizers in ((ours_model, [ours]), (theirs_model, theirs)):
            for opt in optimizers:
                opt.zero_grad()
            loss_at(model, step, inputs, targets).backward()
            for opt in optimizers:
                opt.step()
    for mine, expected in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(mine, expected)


@pytest.mark.parametrize("name", sorted(RULES))
def test_at_depth_zero_a_branch_used_on_some_steps_trains_as_on_torch_optim_to_the_bit(name):
    make, reference = RULES[name]
    ours_model, theirs_model = Branched(), Branched()
    ours = rc.HyperOptimizer(ours_model.parameters(), make())
    theirs = reference(theirs_model.parameters())
    run(ours_model, ours, 12)
    run(theirs_model, theirs, 12)
    for mine, expected in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(mine, expected)


@pytest.mark.parametrize("name", ["adam", "sgd-momentum"])
def test_a_frozen_layer_passed_whole_is_skipped_and_trains_from_a_fresh_state_once_unfrozen(name):
    """Fine-tuning passes model.parameters() whole with the trunk frozen;
    progressive unfreezing then sets requires_grad_(True) at step 5 on
    the same optimizer: as on torch.optim, to the bit."""
    make, reference = RULES[name]
    runs = []
    for optimizer_of in (lambda p: rc.HyperOptimizer(p, make()), reference):
        model = Branched()
        model.trunk.requires_grad_(False)
        opt = optimizer_of(model.parameters())

        def unfreeze(step, model=model):
            if step == 5:
                model.trunk.requires_grad_(True)

        start = [p.clone() for p in model.trunk.parameters()]
        run(model, opt, 10, before_step=unfreeze)
        assert not all(torch.equal(a, b) for a, b in zip(start, model.trunk.parameters()))
        runs.append([p.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_several_param_groups_with_a_branch_skipped_train_as_on_torch_optim():
    ours_model, theirs_model = Branched(), Branched()

    def groups(model):
        return [{"params": list(model.trunk.parameters()) + list(model.branch.parameters())},
                {"params": model.head.parameters(), "lr": 3e-3}]

    ours = rc.HyperOptimizer(groups(ours_model), rc.Adam(1e-2))
    theirs = torch.optim.Adam(groups(theirs_model), lr=1e-2)
    run(ours_model, ours, 10)
    run(theirs_model, theirs, 10)
    for mine, expected in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.equal(mine, expected)


def tower(name, depth, groups=False):
    make, _ = RULES[name]
    levels = [make()] + [rc.SGD(1e-2, normalize="rms" if depth > 1 else None) for _ in range(depth)]
    return rc.stack(*levels)


def params_of(model, groups):
    if not groups:
        return model.parameters()
    if groups == "per-tensor":  # (each tensor its own learned values)
        return rc.per_tensor(model.parameters())
    return [{"params": list(model.trunk.parameters()) + list(model.branch.parameters())},
            {"params": model.head.parameters()}]


@pytest.mark.parametrize("groups", [False, True, "per-tensor"], ids=["one-group", "two-groups", "per-tensor"])
@pytest.mark.parametrize("last", [6, 7, 8], ids=["branch-skipped-before", "branch-skipped-now", "branch-in-both"])
@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "rmsprop-centered-momentum"])
def test_a_skipped_parameter_contributes_nothing_and_the_hypergradient_is_exact(name, last, groups):
    """As tests/test_hypergradient.py checks every rule: moving level 0's raw
    values before step T-1 and measuring the loss of step T after it gives
    d L_T / d raw, which the engine reports at step T; here the branch is
    skipped at step T-1 (T = 6), at step T (T = 7, no gradient: the loss
    ignores it), or at neither (T = 8), float64, central differences."""
    inputs, targets = regression_data()
    model = Branched()
    opt = rc.HyperOptimizer(params_of(model, groups), tower(name, 1))
    run(model, opt, last - 1)
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, 2, start=last - 1)
    reported = opt.last_hypergradients[0]

    def loss_after_step(index, shift):
        shifted = Branched()
        shifted.load_state_dict(model_state)
        again = rc.HyperOptimizer(params_of(shifted, groups), tower(name, 1))
        again.load_state_dict(copy.deepcopy(opt_state))
        raw = again.levels[0].optimizer.raw.clone()
        raw[index] += shift
        again.levels[0].optimizer.raw = raw
        run(shifted, again, 1, start=last - 1)
        with torch.no_grad():
            return loss_at(shifted, last, inputs, targets).item()

    h = 1e-2
    for index in range(reported.numel()):
        def central(step):
            return (loss_after_step(index, -2 * step) - 8 * loss_after_step(index, -step)
                    + 8 * loss_after_step(index, step) - loss_after_step(index, 2 * step)) / (12 * step)
        finite_difference = (16 * central(h / 2) - central(h)) / 15
        assert reported[index].item() == pytest.approx(finite_difference, rel=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd-momentum"])
def test_a_run_resumed_across_skipped_steps_goes_on_bit_for_bit(name):
    """Saved at step 5 (the branch one step behind the rest and skipped at
    the step before: two cohorts, a partial last update), through
    torch.save and a weights-only load, into a fresh optimizer."""
    whole_model = Branched()
    whole = rc.HyperOptimizer(whole_model.parameters(), tower(name, 2))
    run(whole_model, whole, 12)

    model = Branched()
    opt = rc.HyperOptimizer(model.parameters(), tower(name, 2))
    run(model, opt, 5)
    assert opt.state_dict()["levels"][0]["cohorts"] is not None
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = Branched(seed=1)
    resumed_model.load_state_dict(saved["model"])
    resumed = rc.HyperOptimizer(resumed_model.parameters(), tower(name, 2))
    resumed.load_state_dict(saved["opt"])
    run(resumed_model, resumed, 7, start=5)
    assert resumed.hyperparameters() == whole.hyperparameters()
    for mine, expected in zip(resumed_model.parameters(), whole_model.parameters()):
        assert torch.equal(mine, expected)


def test_a_rule_whose_state_is_not_per_parameter_says_why_it_cannot_skip_one():
    model = Branched()
    opt = rc.HyperOptimizer(model.parameters(), rc.LSTMOptimizer(seed=0))
    inputs, targets = regression_data()
    before = [p.clone() for p in model.parameters()]
    loss_at(model, 1, inputs, targets).backward()
    with pytest.raises(RuntimeError, match=r"parameter 2 \(shape \(1, 6\)\) has no .grad, and rc.LSTMOptimizer.* "
                                           r"steps every parameter at every step"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_decayed_horizon_refuses_a_skipped_parameter_clearly():
    model = Branched()
    opt = rc.HyperOptimizer(model.parameters(), tower("adam", 1), horizon=rc.estimators.Decayed(0.9))
    inputs, targets = regression_data()
    loss_at(model, 1, inputs, targets).backward()
    with pytest.raises(RuntimeError, match=r"horizon=Decayed\(mu=0.9\) follows every parameter at every step"):
        opt.step()


@pytest.mark.parametrize("held_out", [False, True], ids=["training-loss", "held-out-loss"])
def test_a_frozen_layer_passed_whole_learns_exactly_what_leaving_it_out_learns(held_out):
    """The frozen trunk adds nothing to any hypergradient (held-out or
    training loss): the run is bit for bit the one whose optimizer never
    saw it."""
    inputs, targets = regression_data()
    held_in, held_targets = regression_data(seed=2)
    runs = []
    for pass_whole in (True, False):
        model = Branched()
        model.trunk.requires_grad_(False)
        params = model.parameters() if pass_whole else [p for p in model.parameters() if p.requires_grad]
        loss = (rc.estimators.HeldOut(lambda model=model: loss_at(model, 0, held_in, held_targets)) if held_out
                else None)
        opt = rc.HyperOptimizer(params, tower("adam", 2), hypergradient_loss=loss)
        run(model, opt, 6)
        runs.append((opt.hyperparameters(), [p.clone() for p in model.parameters()]))
    (values, params), (values_out, params_out) = runs
    assert values == values_out and values["0.lr"] != 1e-2
    assert all(torch.equal(a, b) for a, b in zip(params, params_out))


def test_a_per_group_whose_indices_are_not_in_order_keeps_each_parameter_s_state_through_skips():
    """rc.PerGroup groups given out of order, the branch (positions 2, 3)
    skipped on some steps: as the two torch.optim optimizers, to the bit."""
    ours_model, theirs_model = Branched(), Branched()
    per_group = rc.PerGroup({"adam": (rc.Adam(1e-2), [4, 2, 0]), "sgd": (rc.SGD(0.05, momentum=0.9), [5, 3, 1])})
    ours = rc.HyperOptimizer(ours_model.parameters(), per_group)
    params = list(theirs_model.parameters())
    adam = torch.optim.Adam([params[i] for i in (0, 2, 4)], lr=1e-2)
    sgd = torch.optim.SGD([params[i] for i in (1, 3, 5)], lr=0.05, momentum=0.9)
    assert_trains_as(ours_model, ours, theirs_model, [adam, sgd])


def test_a_frozen_backbone_holds_no_optimizer_state():
    model = Branched()
    model.trunk.requires_grad_(False)
    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, amsgrad=True))
    run(model, opt, 3)
    cohorts = opt.state_dict()["levels"][0]["cohorts"]
    frozen = [cohort for cohort in cohorts if cohort["positions"] == [0, 1]]
    assert len(frozen) == 1 and frozen[0]["state"] is None and frozen[0]["steps"] == 0


def test_newton_with_a_frozen_parameter_says_it_steps_every_parameter():
    model = Branched()
    model.trunk.requires_grad_(False)
    opt = rc.HyperOptimizer(model.parameters(), rc.Newton(damping=1e-3))
    inputs, targets = regression_data()
    with pytest.raises(RuntimeError, match=r"parameter 0 \(shape \(6, 4\)\) has no .grad, and rc.Newton.* steps "
                                           r"every parameter at every step"):
        opt.step(lambda: loss_at(model, 0, inputs, targets))


def test_a_graph_node_whose_group_has_no_gradient_is_skipped_as_torch_optim_skips_it():
    """Two nodes: Adam on trunk and head, SGD with momentum on the branch,
    which this loss uses on some steps only: as the two torch.optim
    optimizers, to the bit."""
    ours_model, theirs_model = Branched(), Branched()
    graph = rc.graph.build(groups={"main": list(ours_model.trunk.parameters()) + list(ours_model.head.parameters()),
                                   "branch": ours_model.branch.parameters()},
                           optimizers={"adam": rc.Adam(1e-2), "sgd": rc.SGD(0.05, momentum=0.9)},
                           steps={"adam": "main", "sgd": "branch"})
    ours = rc.graph.GraphOptimizer(graph)
    adam = torch.optim.Adam(list(theirs_model.trunk.parameters()) + list(theirs_model.head.parameters()), lr=1e-2)
    sgd = torch.optim.SGD(theirs_model.branch.parameters(), lr=0.05, momentum=0.9)
    assert_trains_as(ours_model, ours, theirs_model, [adam, sgd])


def test_a_graph_group_with_a_frozen_layer_trains_the_rest_as_torch_optim():
    ours_model, theirs_model = Branched(), Branched()
    for model in (ours_model, theirs_model):
        model.trunk.requires_grad_(False)
    graph = rc.graph.build(groups={"all": ours_model.parameters()}, optimizers={"adam": rc.Adam(1e-2)},
                           steps={"adam": "all"})
    assert_trains_as(ours_model, rc.graph.GraphOptimizer(graph), theirs_model,
                     [torch.optim.Adam(theirs_model.parameters(), lr=1e-2)])
