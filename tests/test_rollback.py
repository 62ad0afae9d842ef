"""rc.Rollback: a run that diverges while finite is rolled back to a
healthy snapshot with a smaller lr and recovers; a healthy run is never
touched; a resumed run rolls back as the original would."""

import copy
import io
import logging

import pytest
import torch

import recurse as rc
from recurse.problems import QuadraticFamily

SMOOTHNESS = QuadraticFamily(10, seed=0).sample().smoothness()
DIVERGING = {
    "lr 1e3x too large, fixed": lambda: rc.SGD(1e3 / SMOOTHNESS),
    "lr 1e3x too large, depth 2": lambda: rc.stack(rc.SGD(1e3 / SMOOTHNESS), rc.SGD(0.05, normalize="rms"),
                                                   rc.SGD(0.01, normalize="rms")),
}


class Point(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))


def train_on_quadratic(make_optimizer, steps=300, rollback=None, start=None):
    """The losses of ``steps`` steps on the quadratic (every step observed when ``rollback`` is given)."""
    task = QuadraticFamily(10, seed=0).sample()
    point, opt, watcher = start if start is not None else (Point(), None, None)
    opt = opt or make_optimizer(point)
    if rollback is not None and watcher is None:
        watcher = rc.Rollback(point, opt, **rollback)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = task.loss(point.theta)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if watcher is not None:
            watcher.observe(loss)
    return losses, (point, opt, watcher), task.loss(point.theta).item()


@pytest.mark.parametrize("name", DIVERGING)
def test_a_run_diverging_while_finite_recovers_with_its_rollbacks_logged(name, caplog):
    def tower(point):
        return rc.HyperOptimizer(point.parameters(), DIVERGING[name]())

    _, _, without = train_on_quadratic(tower)
    with caplog.at_level(logging.WARNING, logger="recurse"):
        losses, (_, opt, watcher), final = train_on_quadratic(tower, rollback={"every": 20, "floor": 1e-12})
    assert not without < 1e3 * losses[0]  # (it diverges: inf, or finite and huge)
    assert final < 0.05 * losses[0]
    assert 1 <= watcher.rollbacks == len(watcher.events) < watcher.max_rollbacks
    assert opt.group_lrs()[0] < 1e3 / SMOOTHNESS * 0.5 ** watcher.rollbacks * 1.5
    logged = [record.getMessage() for record in caplog.records if record.getMessage().startswith("rc.Rollback")]
    assert len(logged) == watcher.rollbacks and f"rollback {watcher.rollbacks} of at most 10" in logged[-1]


def test_a_healthy_noisy_run_is_never_rolled_back_nor_changed():
    """Mini-batch noise on an MLP learning its Adam knobs: no rollback, and
    watching changes nothing."""
    def run(watch):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = rc.HyperOptimizer(model.parameters(), rc.Adam(1e-2, hyper=rc.SGD(1e-3, normalize="rms")))
        watcher = rc.Rollback(model, opt, every=10) if watch else None
        data = torch.Generator().manual_seed(1)
        for _ in range(300):
            inputs = torch.randn(8, 8, generator=data)
            targets = inputs[:, :1] * 2 + 0.3 * torch.randn(8, 1, generator=data)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            opt.step()
            if watcher is not None:
                assert not watcher.observe(loss)
        return model, watcher

    watched, watcher = run(True)
    plain, _ = run(False)
    assert watcher.rollbacks == 0 and watcher.observations == 300
    for mine, theirs in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(mine, theirs)


def test_a_torch_optim_run_recovers_too():
    losses, (_, opt, watcher), final = train_on_quadratic(
        lambda point: torch.optim.SGD(point.parameters(), lr=1e3 / SMOOTHNESS), rollback={"every": 20, "floor": 1e-12})
    assert final < 0.05 * losses[0] and watcher.rollbacks >= 1
    assert opt.param_groups[0]["lr"] == pytest.approx(1e3 / SMOOTHNESS * 0.5 ** watcher.rollbacks)


def test_a_run_that_diverges_past_max_rollbacks_raises_naming_them():
    def tower(point):
        return rc.HyperOptimizer(point.parameters(), DIVERGING["lr 1e3x too large, fixed"]())

    with pytest.raises(FloatingPointError, match=r"rc.Rollback: the run diverged again .* after 2 rollbacks "
                                                 r"\(max_rollbacks\)"):
        train_on_quadratic(tower, rollback={"every": 20, "max_rollbacks": 2})


def test_a_resumed_run_rolls_back_as_the_original_does():
    def tower(point):
        return rc.HyperOptimizer(point.parameters(), DIVERGING["lr 1e3x too large, depth 2"]())

    settings = {"every": 20, "floor": 1e-12}
    _, (point, opt, watcher), _ = train_on_quadratic(tower, steps=40, rollback=settings)
    assert watcher.rollbacks >= 1  # (the checkpoint holds a rollback's state)
    buffer = io.BytesIO()
    torch.save({"model": point.state_dict(), "opt": opt.state_dict(), "rollback": watcher.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_point = Point()
    resumed_point.load_state_dict(saved["model"])
    resumed_opt = tower(resumed_point)
    resumed_opt.load_state_dict(saved["opt"])
    resumed_watcher = rc.Rollback(resumed_point, resumed_opt, **settings)
    resumed_watcher.load_state_dict(saved["rollback"])
    original = train_on_quadratic(tower, steps=200, start=(point, opt, watcher))
    resumed = train_on_quadratic(tower, steps=200, start=(resumed_point, resumed_opt, resumed_watcher))
    assert original[0] == resumed[0]
    assert watcher.events == resumed_watcher.events and watcher.rollbacks > 1


def test_the_snapshot_is_a_copy():
    """The snapshot is a copy: training on after it does not change it."""
    point = Point()
    opt = torch.optim.SGD(point.parameters(), lr=0.1)
    watcher = rc.Rollback(point, opt, every=1)
    snapshot = copy.deepcopy(watcher.state_dict()["snapshot"][0]["theta"])
    point.theta.data.add_(1.0)
    assert torch.equal(watcher.state_dict()["snapshot"][0]["theta"], snapshot)


def fit_watched(model, opt, watcher, inputs, targets, steps):
    """``steps`` full-batch MSE steps, each observed; the first and the last loss."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        watcher.observe(loss)
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_a_linear_model_with_lr_far_too_large_recovers_on_each_device(device):
    """The snapshot stays on the model's device; the same code path on a GPU."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).to(device)
    inputs, targets = torch.randn(8, 4, device=device), torch.randn(8, 1, device=device)
    # (first_step_limit=None: the run must diverge for the rollback to act)
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(10.0, hyper=rc.SGD(1e-3, normalize="rms")),
                            first_step_limit=None)
    watcher = rc.Rollback(model, opt, every=5)
    first, last = fit_watched(model, opt, watcher, inputs, targets, steps=60)
    assert watcher.rollbacks >= 1 and last < 0.5 * first
    assert all(tensor.device.type == device for tensor in watcher.state_dict()["snapshot"][0].values())


def test_a_graph_optimizer_is_rolled_back_and_shrunk_node_by_node():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    graph = rc.graph.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                           {"fast": rc.SGD(20.0), "slow": rc.Adam(1e-2, hyper=rc.SGD(1e-3, normalize="rms"))},
                           {"fast": "out", "slow": "hidden"})
    opt = rc.graph.GraphOptimizer(graph)
    watcher = rc.Rollback(model, opt, every=5)
    first, last = fit_watched(model, opt, watcher, torch.randn(32, 4), torch.randn(32, 1), steps=100)
    assert watcher.rollbacks >= 1 and last < first
    assert opt.hyperparameters()["fast:0.lr"] == pytest.approx(20.0 * 0.5 ** watcher.rollbacks)


def quadratic_tower_run():
    """The depth-2 tower at 1e3x the stable lr on the quadratic: it diverges on any machine."""
    task = QuadraticFamily(10, seed=0).sample()
    point = Point()
    tower = DIVERGING["lr 1e3x too large, depth 2"]
    return point, lambda model: rc.HyperOptimizer(model.parameters(), tower()), lambda: task.loss(point.theta)


def overshooting_mlp_run():
    """A full-batch SGD depth-1 tower that learns too large an lr (studies/rollback.py): whether and when
    it diverges depends on the CPU's floating-point path."""
    from recurse.problems import SyntheticRegression

    task = SyntheticRegression(seed=0)
    model = task.model(seed=0)
    inputs, targets = next(task.batches(512, seed=0))
    return (model, lambda model: rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(1e-3), rc.SGD(
        0.02, normalize="rms"))), lambda: task.loss(model, inputs, targets))


@pytest.mark.parametrize("scenario,must_roll_back", [(quadratic_tower_run, True), (overshooting_mlp_run, False)],
                         ids=["quadratic depth 2", "MLP depth 1 full batch"])
def test_every_rollback_restores_the_snapshot_bit_for_bit_and_halves_the_lr(scenario, must_roll_back):
    """The mechanism itself, observation by observation: when observe()
    rolls back, the model and the optimizer are exactly the snapshot taken
    before, but for the param group's lr, which is halved: the learned lr
    is as it was, and the lr the group steps with is half of it."""
    model, make_optimizer, loss_of = scenario()
    opt = make_optimizer(model)
    watcher = rc.Rollback(model, opt, every=20, floor=1e-12)
    checked = 0
    for _ in range(500):
        snapshot_model, snapshot_optimizer = copy.deepcopy(watcher.state_dict()["snapshot"])
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        if not watcher.observe(loss):
            continue
        for name, value in model.state_dict().items():
            assert torch.equal(value, snapshot_model[name]), name
        restored = make_optimizer(copy.deepcopy(model))
        restored.load_state_dict(snapshot_optimizer)
        assert opt.hyperparameters() == restored.hyperparameters()
        assert opt.param_groups[0]["lr"] == restored.param_groups[0]["lr"] * 0.5
        assert opt.group_lrs()[0] == pytest.approx(restored.group_lrs()[0] * 0.5, rel=1e-12)
        assert watcher.events[-1]["lr"] == [opt.param_groups[0]["lr"]]
        checked += 1
    assert checked == watcher.rollbacks and (checked >= 1 or not must_roll_back)
