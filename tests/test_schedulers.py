"""Every scheduler in torch.optim.lr_scheduler over rc.HyperOptimizer, with
two param groups of their own base lrs: at depth 0 exactly torch.optim; over
a learned depth-2 tower the schedule scales what the tower learns (see
recurse.param_group), a constant schedule changes nothing, an lr of 0 takes
no step, and a run resumed from the optimizer's and the scheduler's state
dicts goes on bit for bit."""

import io
import warnings

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp

S = torch.optim.lr_scheduler
STEPS = 24
BASE_LRS = (1e-2, 3e-3)  # (group 0 takes the optimizer's lr, group 1 its own)

SCHEDULERS = {
    "LambdaLR": lambda opt: S.LambdaLR(opt, [lambda t: 0.9**t, lambda t: 1 / (1 + t)]),
    "MultiplicativeLR": lambda opt: S.MultiplicativeLR(opt, lambda t: 0.95),
    "StepLR": lambda opt: S.StepLR(opt, 5, gamma=0.5),
    "MultiStepLR": lambda opt: S.MultiStepLR(opt, [4, 12], gamma=0.3),
    "ConstantLR": lambda opt: S.ConstantLR(opt, factor=0.5, total_iters=8),
    "LinearLR": lambda opt: S.LinearLR(opt, start_factor=0.1, total_iters=8),
    "ExponentialLR": lambda opt: S.ExponentialLR(opt, 0.9),
    "PolynomialLR": lambda opt: S.PolynomialLR(opt, total_iters=16, power=2.0),  # (reaches 0 at step 16)
    "CosineAnnealingLR": lambda opt: S.CosineAnnealingLR(opt, T_max=STEPS - 4),  # (0 at step 20)
    "CosineAnnealingWarmRestarts": lambda opt: S.CosineAnnealingWarmRestarts(opt, T_0=7),
    "CyclicLR": lambda opt: S.CyclicLR(opt, base_lr=1e-3, max_lr=1e-2, step_size_up=4),  # (cycles betas too)
    "OneCycleLR": lambda opt: S.OneCycleLR(opt, max_lr=2e-2, total_steps=STEPS + 1),  # (cycles betas too)
    "SequentialLR": lambda opt: S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=5),
                                                     S.CosineAnnealingLR(opt, STEPS)], milestones=[5]),
    "ChainedScheduler": lambda opt: S.ChainedScheduler([S.ExponentialLR(opt, 0.95), S.StepLR(opt, 6, 0.5)]),
    "ReduceLROnPlateau": lambda opt: S.ReduceLROnPlateau(opt, patience=1, factor=0.5, threshold=0.2),
}


def groups(model):
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": BASE_LRS[1]}]


def make(library, model, depth=0):
    if library == "torch":
        return torch.optim.Adam(groups(model), lr=BASE_LRS[0])
    return rc.HyperOptimizer(groups(model), rc.tower(rc.Adam(BASE_LRS[0]), depth=depth))


class Run:
    """A model, its optimizer and a scheduler, stepped on one batch."""

    def __init__(self, name, library, depth=0, scheduler=True):
        self.name, self.model = name, small_mlp()
        self.opt = make(library, self.model, depth)
        with warnings.catch_warnings():  # (over a tower that learns the betas, a cycling scheduler is warned once)
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler = SCHEDULERS[name](self.opt) if scheduler else None
        self.inputs, self.targets = regression_data()

    def step(self):
        self.opt.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(self.inputs), self.targets)
        loss.backward()
        self.opt.step()
        if self.scheduler is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step(loss.item()) if self.name == "ReduceLROnPlateau" else self.scheduler.step()
        return loss.item()

    def schedule(self):
        return [(group["lr"], group["betas"]) for group in self.opt.param_groups]

    def params(self):
        return [param.detach().clone() for param in self.model.parameters()]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_at_depth_zero_every_scheduler_runs_exactly_as_on_torch_optim(name):
    """Per-group base lrs and (LambdaLR) per-group lambdas: the same
    parameters, lrs and betas as torch.optim.Adam after every step."""
    ours, theirs = Run(name, "recurse"), Run(name, "torch")
    seen = []
    for _ in range(STEPS):
        assert ours.step() == theirs.step()
        assert ours.schedule() == theirs.schedule()
        seen.append(tuple(ours.schedule()))
    assert all(torch.equal(a, b) for a, b in zip(ours.params(), theirs.params()))
    assert len(set(seen)) > 1  # (the schedule did move)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_over_a_depth_two_tower_the_schedule_scales_what_is_learned(name):
    """The schedule runs on the tower as on torch.optim (the same
    param_groups lrs step by step), the learned lrs are never reset to it,
    and each group steps with learned lr x group lr / its base lr."""
    tower, reference = Run(name, "recurse", depth=2), Run(name, "torch")
    for _ in range(STEPS):
        tower.step()
        reference.step()
        lrs = [lr for lr, _ in tower.schedule()]
        assert lrs == [lr for lr, _ in reference.schedule()]
        learned = [tower.opt.hyperparameters()[f"0.group{index}.lr"] for index in range(2)]
        assert tower.opt.group_lrs() == [value * (lr / base) for value, lr, base in zip(learned, lrs, BASE_LRS)]
    assert tower.opt.nonfinite_steps == 0
    assert all(value != base for value, base in zip(learned, BASE_LRS))  # (learned, not overwritten)
    assert all(torch.isfinite(param).all() for param in tower.params())


def test_a_constant_schedule_changes_nothing_to_the_bit():
    runs = [Run("LambdaLR", "recurse", depth=2, scheduler=False), Run("LambdaLR", "recurse", depth=2)]
    runs[1].scheduler = S.LambdaLR(runs[1].opt, lambda t: 1.0)
    for _ in range(STEPS):
        assert runs[0].step() == runs[1].step()
    assert runs[0].opt.hyperparameters() == runs[1].opt.hyperparameters()
    assert all(torch.equal(a, b) for a, b in zip(runs[0].params(), runs[1].params()))


@pytest.mark.parametrize("depth", [0, 2])
def test_a_scheduled_lr_of_zero_takes_no_step(depth):
    run = Run("PolynomialLR", "recurse", depth=depth)
    run.scheduler = S.PolynomialLR(run.opt, total_iters=4)
    zero_steps = 0
    for _ in range(8):
        at_zero = all(lr == 0.0 for lr, _ in run.schedule())
        before = run.params()
        run.step()
        if at_zero:
            zero_steps += 1
            assert all(torch.equal(a, b) for a, b in zip(before, run.params()))
            assert run.opt.group_lrs() == [0.0, 0.0]
    assert zero_steps == 4 and run.opt.nonfinite_steps == 0


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize("value", [-1.0, float("inf")])
def test_a_bad_scheduled_lr_is_refused_naming_it_and_nothing_changes(depth, value):
    run = Run("LambdaLR", "recurse", depth=depth, scheduler=False)
    run.step()
    scheduler = S.LambdaLR(run.opt, lambda t: value if t == 2 else 1.0)
    run.step()
    scheduler.step()
    before = (run.opt.group_lrs(), run.schedule(), run.opt.hyperparameters())
    with pytest.raises(ValueError, match=rf"rc.Adam: lr must be a finite number >= 0, got {value * BASE_LRS[0]!r}"):
        scheduler.step()
    assert (run.opt.group_lrs(), run.schedule(), run.opt.hyperparameters()) == before


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_run_resumed_from_both_state_dicts_goes_on_bit_for_bit(name):
    whole, first = Run(name, "recurse", depth=2), Run(name, "recurse", depth=2)
    for _ in range(STEPS // 2):
        whole.step()
        first.step()
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "opt": first.opt.state_dict(),
                "scheduler": first.scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = Run(name, "recurse", depth=2)
    resumed.model.load_state_dict(saved["model"])
    resumed.opt.load_state_dict(saved["opt"])
    resumed.scheduler.load_state_dict(saved["scheduler"])
    for _ in range(STEPS - STEPS // 2):
        assert whole.step() == resumed.step()
        assert whole.schedule() == resumed.schedule() and whole.opt.group_lrs() == resumed.opt.group_lrs()
    assert whole.opt.hyperparameters() == resumed.opt.hyperparameters()
    assert all(torch.equal(a, b) for a, b in zip(whole.params(), resumed.params()))


@pytest.mark.parametrize("name", ["CyclicLR", "OneCycleLR"])
def test_a_scheduler_cycling_learned_betas_is_warned_once_and_leaves_them_to_the_tower(name):
    """Both cycle Adam's beta1 with the lr. Over a tower that learns beta1,
    the cycled value is not used: the learned one is (one warning per group)."""
    run = Run(name, "recurse", depth=2, scheduler=False)
    with pytest.warns(UserWarning, match=r"param group 0's beta1 is learned by the tower") as caught:
        run.scheduler = SCHEDULERS[name](run.opt)
        for _ in range(6):
            run.step()
    assert sum("param group 0's beta1" in str(warning.message) for warning in caught) == 1
    learned = run.opt.hyperparameters()["0.group0.beta1"]
    assert run.opt.param_groups[0]["betas"][0] == learned
    assert run.opt.levels[0].optimizer.groups["group0"][0].initial_values["beta1"] == 0.9  # (the start, untouched)


# --- several groups, and what the review of the schedule rule found ------------------------------------------------


def two_groups(model):
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 3e-3}]


def train(model, opt, steps=4):
    inputs, targets = regression_data()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()


def test_a_copy_or_pickle_of_several_groups_reads_and_learns_its_own_values():
    import copy
    import pickle

    model = small_mlp()
    opt = rc.HyperOptimizer(two_groups(model), rc.tower(rc.Adam(1e-2), depth=1))
    train(model, opt)
    for twin in (copy.deepcopy({"model": model, "opt": opt}), pickle.loads(pickle.dumps({"model": model, "opt": opt}))):
        assert twin["opt"].group_lrs() == opt.group_lrs()
        train(twin["model"], twin["opt"])
        assert twin["opt"].group_lrs() != opt.group_lrs()
        assert twin["opt"].group_lrs() == [twin["opt"].param_groups[i]["lr"] and
                                           twin["opt"].learned_hyperparameters()[f"0.group{i}.lr"] for i in range(2)]


def test_a_group_may_switch_a_knob_off_as_in_torch_optim():
    """No weight decay on one group (as Trainer groups biases) is torch.optim.AdamW's
    run at depth 0; under a tower, a group with momentum 0 does not learn
    momentum, and a group at lr 0 is frozen."""
    runs = []
    for library in ("torch", "recurse"):
        model = small_mlp()
        groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-2) if library == "torch" else rc.HyperOptimizer(groups, rc.AdamW(1e-2))
        train(model, opt)
        runs.append([param.detach().clone() for param in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))

    model = small_mlp()
    frozen = [param.detach().clone() for param in model[2].parameters()]
    opt = rc.HyperOptimizer([{"params": model[0].parameters(), "momentum": 0.0},
                             {"params": model[2].parameters(), "lr": 0.0}],
                            rc.SGD(0.1, momentum=0.9, hyper=rc.SGD(1e-3, normalize="rms")))
    train(model, opt)
    assert sorted(opt.learned_hyperparameters()) == ["0.group0.lr", "0.group1.momentum"]
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[2].parameters()))


def test_an_lr_that_rounds_to_zero_in_half_precision_is_a_step_near_none_not_an_error():
    opt = rc.HyperOptimizer([torch.zeros(3, dtype=torch.float16, requires_grad=True)], rc.SGD(0.1))
    opt.param_groups[0]["lr"] = 1e-9  # (the last steps of a cosine decay)
    assert opt.group_lrs() == [1e-9]


def test_a_checkpoint_of_other_groups_is_refused_before_anything_is_loaded():
    model = small_mlp()
    saved = rc.HyperOptimizer([{"params": model[0].parameters(), "weight_decay": 0.0},
                               {"params": model[2].parameters()}], rc.AdamW(1e-2))
    train(model, saved)
    other = rc.HyperOptimizer([{"params": model[0].parameters()},
                               {"params": model[2].parameters(), "weight_decay": 0.0}], rc.AdamW(1e-2))
    with pytest.raises(ValueError, match=r"the checkpoint's param group 0: rc.AdamW: weight_decay cannot be switched "
                                         r"off after construction"):
        other.load_state_dict(saved.state_dict())
    assert other.step_count == 0 and other.levels[0].state is None


def test_a_schedule_is_a_factor_on_the_lr_the_checkpoint_started_from():
    def tower(start):
        return rc.HyperOptimizer(small_mlp().parameters(), rc.SGD(start, hyper=rc.SGD(1e-3, normalize="rms")))

    saved = tower(1e-2)
    saved.param_groups[0]["lr"] = 5e-3
    loaded = tower(2e-2)
    loaded.load_state_dict(saved.state_dict())
    assert loaded.group_lrs() == saved.group_lrs() == [pytest.approx(5e-3, rel=1e-12)]


def test_under_a_tied_tower_the_schedule_scales_the_model_step_only():
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.tower(rc.SGD(0.05), 2, tie=True))
    opt.param_groups[0]["lr"] = 0.025
    train(model, opt)
    assert opt.levels[0].last_update.lr_scales == (0.5,)
    assert opt.levels[-1].last_self_update.lr_scales is None


def test_several_groups_take_the_closed_form_and_agree_with_autograd(monkeypatch):
    """Two groups learning lr (Adam) and lr, momentum (SGD): the PerGroup's
    closed form gives the hypergradients autograd gives, to 1e-12."""
    from recurse.optim.per_group import PerGroup

    for rule in (rc.Adam(1e-2, learn="lr"), rc.SGD(0.05, momentum=0.5)):
        runs = []
        for closed in (True, False):
            monkeypatch.setattr(PerGroup, "provides_closed_form", lambda self, closed=closed: closed and all(
                optimizer.provides_closed_form() for optimizer, _ in self.groups.values()))
            model = small_mlp()
            rule.hyper = rc.SGD(1e-2, normalize="rms")
            opt = rc.HyperOptimizer(two_groups(model), rule)
            opt.param_groups[1]["lr"] = 1e-3  # (and a schedule's factor on one group)
            train(model, opt, steps=6)
            assert (opt.levels[0].last_update.closed_form is not None) == closed
            runs.append(opt.learned_hyperparameters())
        assert runs[0].keys() == runs[1].keys()
        assert all(runs[0][key] == pytest.approx(runs[1][key], rel=1e-12) for key in runs[0])
