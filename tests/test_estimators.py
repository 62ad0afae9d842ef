"""Hypergradient horizons (recurse.estimators): the decayed accumulator at
mu = 0 is the one-step hypergradient, and at any mu it is the derivative of
the loss through the decayed sum of past updates, checked against float64
central differences; its memory resumes exactly."""

import copy
import io

import pytest
import torch

import recurse as rc
from recurse.estimators import Decayed, OneStep

LEVEL_ZERO = {
    "sgd-momentum": lambda: rc.SGD(0.05, momentum=0.9),
    "adam": lambda: rc.Adam(1e-2),
    "adamw": lambda: rc.AdamW(1e-2, weight_decay=1e-2),
    "rmsprop": lambda: rc.RMSprop(1e-2, momentum=0.5),
    "adagrad": lambda: rc.Adagrad(0.1),
}


def regression():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    targets = torch.tanh(inputs @ torch.randn(4, 1, generator=generator, dtype=torch.float64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    return model, lambda module: torch.nn.functional.mse_loss(module(inputs), targets)


def train(level_zero, horizon, steps, hyper_lr=1e-3):
    """A float64 tower (level 0 learned by SGD on its raw knobs) trained full batch; the
    level-0 hypergradient of every step, the model and the optimizer."""
    model, loss_of = regression()
    opt = rc.HyperOptimizer(model.parameters(), level_zero(), horizon=horizon) if hyper_lr is None else \
        rc.HyperOptimizer(model.parameters(), rc.stack(level_zero(), rc.SGD(hyper_lr)), horizon=horizon)
    hypergradients = []
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        hypergradients.append(opt.last_hypergradients[0])
    return hypergradients, model, opt


@pytest.mark.parametrize("name", sorted(LEVEL_ZERO))
def test_decayed_at_mu_zero_is_the_one_step_hypergradient(name):
    one_step, model_a, opt_a = train(LEVEL_ZERO[name], OneStep(), 12)
    decayed, model_b, opt_b = train(LEVEL_ZERO[name], Decayed(0.0), 12)
    assert one_step[0] is None and decayed[0] is None  # (nothing to look back on at the first step)
    for ours, reference in zip(decayed[1:], one_step[1:]):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)
    assert opt_b.hyperparameters() == pytest.approx(opt_a.hyperparameters(), rel=1e-12)


@pytest.mark.parametrize("mu", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("name", ["sgd-momentum", "adam"])
def test_decayed_hypergradient_equals_central_differences_through_the_decayed_sum_of_updates(name, mu):
    """G_{T+1} = d/d raw_j of L(theta_T + sum_{s<=T} mu^(T-s) (u_s(raw_s + eps e_j) - u_s(raw_s))),
    each past update u_s rebuilt from its recorded parameters, gradient, state and raw."""
    model, loss_of = regression()
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(LEVEL_ZERO[name](), rc.SGD(1e-3)), horizon=Decayed(mu))
    rule, records = opt.levels[0].optimizer, []
    for _ in range(8):
        opt.zero_grad()
        loss_of(model).backward()
        params = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.detach().clone() for p in model.parameters()]
        state = copy.deepcopy(opt.levels[0].state) if opt.levels[0].state is not None else rule.init(params)
        opt.step()
        records.append((params, grads, state, rule.raw.detach().clone()))  # (the raw this step's update used)
    theta = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_of(model).backward()
    opt.step()
    hypergradient = opt.last_hypergradients[0]
    probe = copy.deepcopy(model)

    def shifted_loss(entry, epsilon):
        point = list(theta)
        for age, (params, grads, state, raw) in enumerate(reversed(records)):
            shifted = raw.clone()
            shifted[entry] += epsilon
            moved, _ = rule.update(params, grads, state, rule.hyper_values(shifted))
            base, _ = rule.update(params, grads, state, rule.hyper_values(raw))
            point = [p + mu ** age * (m - b) for p, m, b in zip(point, moved, base)]
        with torch.no_grad():
            for param, value in zip(probe.parameters(), point):
                param.copy_(value)
            return loss_of(probe).item()

    for entry in range(rule.raw.numel()):
        central = (shifted_loss(entry, 1e-6) - shifted_loss(entry, -1e-6)) / 2e-6
        # (the loss is about 0.1: its central difference carries about 1e-11 of float64 rounding)
        assert hypergradient[entry].item() == pytest.approx(central, rel=1e-6, abs=1e-10), rule.learnable[entry]


def test_a_decayed_run_resumes_exactly_from_its_checkpoint():
    def build(model):
        return rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize="rms")),
                                 horizon=Decayed(0.9))

    model, loss_of = regression()
    opt = build(model)
    for _ in range(5):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_model, _ = regression()
    resumed_model.load_state_dict(saved["model"])
    resumed = build(resumed_model)
    resumed.load_state_dict(saved["opt"])
    for _ in range(5):
        for module, optimizer in ((model, opt), (resumed_model, resumed)):
            optimizer.zero_grad()
            loss_of(module).backward()
            optimizer.step()
        assert torch.equal(opt.last_hypergradients[0], resumed.last_hypergradients[0])
    assert opt.hyperparameters() == resumed.hyperparameters()


def test_decayed_keeps_its_tangents_and_not_the_last_update():
    """One model-sized tensor list per learned knob; no gradients or inputs of the last update kept."""
    _, model, opt = train(lambda: rc.Adam(1e-2, learn=("lr", "beta1")), Decayed(0.9), 3)
    memory = opt._horizon_memory
    assert len(memory) == 2 and [[t.shape for t in tangent] for tangent in memory] == \
        [[p.shape for p in model.parameters()]] * 2
    assert opt.levels[0].last_update is None and opt._kept_grads is None


def test_a_skipped_step_keeps_the_accumulator_as_if_it_had_not_been_taken():
    """Nothing moved at a skipped step, so the tangents of the committed steps stay exact: the next
    hypergradient is the one a run without the bad step takes."""
    def run(poisons):
        model, loss_of = regression()
        opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.05), rc.SGD(1e-3)), horizon=Decayed(0.9))
        for poison in poisons:
            opt.zero_grad()
            loss_of(model).backward()
            if poison:
                next(model.parameters()).grad[0, 0] = float("nan")
            opt.step()
        return opt

    skipped, clean = run((False, False, True, False)), run((False, False, False))
    assert skipped.nonfinite_steps == 1
    assert torch.equal(skipped.last_hypergradients[0], clean.last_hypergradients[0])


def test_tangents_are_kept_in_at_least_float32():
    """In bfloat16 a decayed sum near 1 / (1 - mu) times each term would stop moving."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).to(torch.bfloat16)
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.05), rc.SGD(1e-3)), horizon=Decayed(0.999))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4, dtype=torch.bfloat16)).square().mean().backward()
        opt.step()
    assert {tangent.dtype for tangents in opt._horizon_memory for tangent in tangents} == {torch.float32}
    assert opt.last_hypergradients[0].dtype == torch.float32
    resumed = rc.HyperOptimizer(model.parameters(), rc.stack(rc.SGD(0.05), rc.SGD(1e-3)), horizon=Decayed(0.999))
    resumed.load_state_dict(opt.state_dict())
    assert {tangent.dtype for tangents in resumed._horizon_memory for tangent in tangents} == {torch.float32}


def test_a_checkpoint_is_loaded_only_under_the_horizon_it_was_taken_with():
    _, model, opt = train(LEVEL_ZERO["adam"], Decayed(0.9), 3)
    for other in (OneStep(), Decayed(0.5)):
        again = rc.HyperOptimizer(model.parameters(), rc.stack(LEVEL_ZERO["adam"](), rc.SGD(1e-3)), horizon=other)
        with pytest.raises(ValueError, match=r"the checkpoint was taken with horizon=Decayed\(mu=0.9\), this "
                                             r"optimizer has horizon=.*; build it with the same horizon"):
            again.load_state_dict(opt.state_dict())


def test_an_optimizer_meta_trained_with_learn_runs_online_at_what_it_learned():
    """learn= marks the knobs a MetaTrainer learns; once learned (assign_raw), the optimizer runs fixed online."""
    adam = rc.Adam(1e-3, learn="lr")
    adam.assign_raw(torch.tensor([-4.0], dtype=torch.float64))
    opt = rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), adam)
    assert opt.depth == 0 and opt.hyperparameters()["0.lr"] == pytest.approx(torch.tensor(-4.0).exp().item())


def test_bad_horizons_are_refused_naming_the_value():
    params = torch.nn.Linear(4, 1).parameters
    with pytest.raises(ValueError, match=r"rc.estimators.Decayed: mu must be a number in \[0, 1\], got 1.5"):
        Decayed(1.5)
    with pytest.raises(TypeError, match=r"horizon must be an rc.estimators horizon .* got builtins.float"):
        rc.HyperOptimizer(params(), rc.SGD(0.1), horizon=0.9)
    with pytest.raises(ValueError, match=r"horizon=Decayed\(mu=0.9\) needs a level 0 that steps from the gradient "
                                         r"and is not tied; .* is tied"):
        rc.HyperOptimizer(params(), rc.tower(rc.SGD(0.1), depth=2, tie=True), horizon=Decayed(0.9))
    lstm = rc.LSTMOptimizer(hidden_size=4, hyper=rc.SGD(1e-3))
    with pytest.raises(ValueError, match=rf"keeps one model-sized tangent per learned value and level 0 "
                                         rf"\(LSTMOptimizer\) learns {lstm.raw.numel()} \(at most 64\)"):
        rc.HyperOptimizer(params(), lstm, horizon=Decayed(0.9))
