"""rc.HyperOptimizer among torch.optim's tools: param_groups show level 0's
values, so loops that log the learning rate and torch.optim.lr_scheduler
work as on torch.optim; torch.amp's GradScaler steps it."""

import copy
import io
import math
import warnings

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step

S = torch.optim.lr_scheduler

SCHEDULES = {
    "step": ("sgd", lambda opt: S.StepLR(opt, 7, gamma=0.5)),
    "cosine": ("sgd", lambda opt: S.CosineAnnealingLR(opt, 30, eta_min=1e-3)),
    "one-cycle-momentum": ("sgd", lambda opt: S.OneCycleLR(opt, max_lr=0.2, total_steps=30)),
    "one-cycle-betas": ("adam", lambda opt: S.OneCycleLR(opt, max_lr=0.02, total_steps=30)),
    "warm-up": ("sgd", lambda opt: S.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 10))),
    "plateau": ("adam", lambda opt: S.ReduceLROnPlateau(opt, patience=1, factor=0.5, threshold=0.2)),
    "sequential": ("sgd", lambda opt: S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=5),
                                                             S.ExponentialLR(opt, 0.9)], milestones=[5])),
}


def make(kind, library, params):
    if library == "torch":
        return (torch.optim.SGD(params, lr=0.1, momentum=0.9) if kind == "sgd"
                else torch.optim.Adam(params, lr=0.01))
    return rc.HyperOptimizer(params, rc.SGD(0.1, momentum=0.9) if kind == "sgd" else rc.Adam(0.01))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_scheduled_depth_zero_run_is_bit_identical_to_torch_optim(name):
    """float64, 30 steps: the same parameters to the bit, and the same
    learning rate read from param_groups after every step (OneCycleLR also
    cycles momentum, or Adam's betas)."""
    kind, schedule = SCHEDULES[name]
    inputs, targets = regression_data()
    runs = []
    for library in ("torch", "recurse"):
        model = small_mlp()
        opt = make(kind, library, model.parameters())
        scheduler, rates = schedule(opt), []
        for _ in range(30):
            loss = train_step(model, opt, inputs, targets)
            scheduler.step(loss) if name == "plateau" else scheduler.step()
            rates.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum"),
                          opt.param_groups[0].get("betas")))
        runs.append(([param.detach().clone() for param in model.parameters()], rates))
    (torch_params, torch_rates), (ours, our_rates) = runs
    assert our_rates == torch_rates
    assert len(set(rate for rate, _, _ in our_rates)) > 1  # the schedule did change the rate
    assert all(torch.equal(a, b) for a, b in zip(torch_params, ours))


def test_a_learned_lr_s_param_group_entry_is_a_schedule_that_scales_it():
    """group["lr"] of a learned lr is the schedule (it starts at the lr the
    tower starts from, and moves only when written); the lr a step uses is
    the learned one times group["lr"] / start, and learning goes on."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, momentum=0.5, hyper=rc.SGD(1e-2, normalize="rms")))
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    group = opt.param_groups[0]
    learned = opt.hyperparameters()["0.lr"]
    assert group["lr"] == 0.05 != learned and opt.group_lrs() == [learned]
    assert group["momentum"] == opt.hyperparameters()["0.momentum"]
    assert "lr" in group and group.get("lr") == group["lr"] and group.get("betas") is None

    raw = opt.levels[0].optimizer.raw.clone()
    group["lr"] = group["lr"]  # a scheduler writing back what it read: nothing moves
    assert torch.equal(opt.levels[0].optimizer.raw, raw) and opt.group_lrs() == [learned]

    group["lr"] = 0.025  # half the start: the learned lr is kept, and steps at half its value
    assert opt.hyperparameters()["0.lr"] == learned and opt.group_lrs() == [learned * 0.5]
    train_step(model, opt, inputs, targets)
    assert opt.hyperparameters()["0.lr"] != learned  # learning goes on
    assert opt.group_lrs() == [opt.hyperparameters()["0.lr"] * 0.5]


def test_a_written_learned_knob_other_than_lr_is_validated_then_left_to_the_tower_with_one_warning():
    model = torch.nn.Linear(3, 1)
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, momentum=0.9, hyper=rc.SGD(1e-3)))
    before = opt.hyperparameters()
    with pytest.warns(UserWarning, match=r"param group 0's momentum is learned by the tower"):
        opt.param_groups[0]["momentum"] = 0.8
    assert opt.hyperparameters() == before and opt.param_groups[0]["momentum"] == before["0.momentum"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.param_groups[0]["momentum"] = 0.7  # (warned once per group and knob)


@pytest.mark.parametrize("key,value,message", [
    ("lr", -1.0, r"rc.SGD: lr must be a finite number >= 0, got -1.0"),
    ("lr", float("nan"), r"rc.SGD: lr must be a finite number >= 0, got nan"),
    ("momentum", 1.5, r"rc.SGD: momentum must be a number in the open interval \(0, 1\)"),
    ("dampening", 0.5, r"rc.SGD: dampening cannot be switched on after construction \(it is 0.0\), got 0.5"),
    ("momentum", 0.0, r"rc.SGD: momentum cannot be switched off after construction \(it is 0.9\), got 0.0"),
    ("lr", 1e39, r"rc.SGD: lr = 1e\+39 is beyond the largest torch.float32"),
])
def test_a_bad_value_written_to_a_param_group_is_refused_and_nothing_changes(key, value, message):
    model = torch.nn.Linear(3, 1)
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, momentum=0.9, hyper=rc.SGD(1e-3)))
    before = (opt.hyperparameters(), opt.levels[0].optimizer.raw.clone())
    with pytest.raises(ValueError, match=message):
        opt.param_groups[0][key] = value
    assert opt.hyperparameters() == before[0] and torch.equal(opt.levels[0].optimizer.raw, before[1])


def test_adam_betas_are_set_together_or_not_at_all():
    model = torch.nn.Linear(3, 1)
    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(0.01))
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and opt.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match=r"rc.Adam: beta2 must be a number in the open interval \(0, 1\), got 1.0"):
        group["betas"] = (0.8, 1.0)
    assert group["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match=r"'betas' must be a pair \(beta1, beta2\), got 0.8"):
        group["betas"] = 0.8
    group["betas"] = (0.8, 0.99)
    assert (group["beta1"], group["beta2"]) == (0.8, 0.99)


def test_each_group_holds_its_own_values_and_plain_keys_stay_plain():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = rc.HyperOptimizer([{"params": model[0].parameters()}, {"params": model[1].parameters(), "momentum": 0.5}],
                            rc.SGD(0.1, momentum=0.9))
    opt.param_groups[1]["lr"] = 0.3
    assert [group["lr"] for group in opt.param_groups] == [0.1, 0.3]
    assert [group["momentum"] for group in opt.param_groups] == [0.9, 0.5]
    opt.param_groups[0].setdefault("initial_lr", opt.param_groups[0]["lr"])
    opt.param_groups[0].update({"note": "warm-up"})
    assert opt.param_groups[0]["initial_lr"] == 0.1 and opt.param_groups[0]["note"] == "warm-up"
    with pytest.raises(KeyError):
        opt.param_groups[0]["nesterov_momentum"]


def test_a_value_a_scheduler_set_is_in_the_checkpoint_and_a_switched_knob_is_refused():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, momentum=0.9))
    scheduler = S.StepLR(opt, 2, gamma=0.5)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_model = small_mlp()
    resumed = rc.HyperOptimizer(resumed_model.parameters(), rc.SGD(0.1, momentum=0.9))
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.025
    for _ in range(3):
        assert train_step(model, opt, inputs, targets) == train_step(resumed_model, resumed, inputs, targets)
    other = rc.HyperOptimizer(small_mlp().parameters(),
                              rc.SGD(0.1, momentum=0.9, weight_decay=1e-4))
    with pytest.raises(ValueError, match=r"level 0 has \['weight_decay'\] on here but not in the checkpoint"):
        other.load_state_dict(saved["opt"])
    assert math.isclose(other.param_groups[0]["lr"], 0.1)


def test_grad_scaler_steps_the_tower_on_unscaled_gradients():
    """GradScaler multiplies the loss by 2^16 and divides the gradients back
    (exact for a power of two) before calling step(): the tower must learn
    exactly what it learns without the scaler. A step whose scaled
    gradients overflow is skipped by the scaler, not taken."""
    inputs, targets = regression_data()
    runs = []
    for scaled in (False, True):
        model = small_mlp()
        opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, hyper=rc.SGD(1e-3, normalize="rms")))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=scaled)
        for _ in range(10):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append((opt.hyperparameters(), [param.detach().clone() for param in model.parameters()]))
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, hyper=rc.SGD(1e-3)))
    before = [param.detach().clone() for param in model.parameters()]
    scaler.scale(torch.nn.functional.mse_loss(model(inputs), targets) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.step_count == 0 and scaler.get_scale() == 2.0**15
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_copy_of_an_optimizer_with_a_scheduler_steps_itself_not_the_original():
    """A scheduler wraps opt.step around a weak reference to opt; a deep copy
    must not carry that wrapper (it would step the original)."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3)))
    S.StepLR(opt, 2)
    train_step(model, opt, inputs, targets)
    twin = copy.deepcopy({"model": model, "opt": opt})
    before = [param.detach().clone() for param in model.parameters()]
    train_step(twin["model"], twin["opt"], inputs, targets)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert twin["opt"].step_count == 2 and opt.step_count == 1
