"""The hypergradient each level receives is the exact derivative of the
next-step loss: closed form for SGD over SGD, float64 central finite
differences for stacks of every built-in at depths 1, 2 and 3."""

import copy

import pytest
import torch

import recurse as rc
from optimizer_table import CASE_IDS, CASES, regression_data, small_mlp, train_step


def full_batch_loss(model, inputs, targets):
    return torch.nn.functional.mse_loss(model(inputs), targets)


def test_sgd_over_sgd_hypergradient_is_minus_dot_of_consecutive_gradients():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3)))
    previous_grads = None
    for step in range(6):
        opt.zero_grad()
        full_batch_loss(model, inputs, targets).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        if previous_grads is None:
            assert opt.hypergradients() == {}
        else:
            expected = -sum((g * h).sum() for g, h in zip(grads, previous_grads)).item()
            assert opt.hypergradients()["0.lr"] == pytest.approx(expected, rel=1e-10, abs=0)
        previous_grads = grads


def stack_of(case, depth):
    # Running-RMS normalisation at the hyper levels keeps each level's
    # hypergradient well above finite-difference noise (without it, G_k
    # shrinks roughly like G_0^(k+1)); the unnormalised path is checked by
    # the closed form above and at depth 1 below.
    normalize = "rms" if depth > 1 else None
    levels = [case.make()] + [case.hyper_level(normalize=normalize) for _ in range(depth)]
    return rc.stack(*levels)


def run_steps(model, opt, inputs, targets, count):
    sign = -1.0 if opt.levels[0].optimizer.maximizes else 1.0  # (see test_hypergradients_match_...)
    for _ in range(count):
        opt.zero_grad()
        (sign * full_batch_loss(model, inputs, targets)).backward()
        opt.step()


def loss_after_one_step(case, depth, model_state, opt_state, level, index, shift, inputs, targets):
    """Resume from a snapshot, move one raw hyperparameter, take one step,
    return the loss at the new point (the 'next-step loss')."""
    model = small_mlp()
    model.load_state_dict(model_state)
    opt = rc.HyperOptimizer(model.parameters(), stack_of(case, depth))
    opt.load_state_dict(copy.deepcopy(opt_state))
    optimizer = opt.levels[level].optimizer
    raw = optimizer.raw.clone()
    raw[index] += shift
    optimizer.raw = raw
    run_steps(model, opt, inputs, targets, 1)
    with torch.no_grad():
        return full_batch_loss(model, inputs, targets).item()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hypergradients_match_central_finite_differences(case, depth):
    """Moving level k's (already updated) hyperparameters before its use at
    step T-1 and measuring the loss after that step gives d L_T / d h_k,
    which the engine reports at step T. Hyper levels are built without
    weight decay, so a level's update of the raw vector below it is
    additive and shifting that vector before the step shifts it after.
    Where level 0 maximizes (maximize=True), it is trained on -L, and the
    tower minimises what level 0 maximises, so reports d L_T / d h_k too."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), stack_of(case, depth))
    total_steps = depth + 3
    run_steps(model, opt, inputs, targets, total_steps - 2)
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    run_steps(model, opt, inputs, targets, 2)
    # Fourth-order central differences at h and h/2, combined by Richardson
    # extrapolation (error O(h^6)), so h can be large enough that float64
    # rounding of the loss stays far below the 1e-6 tolerance.
    h = 2e-2
    for level in range(depth):
        reported = opt.last_hypergradients[level]
        assert reported is not None, f"level {level} got no hypergradient"
        for index in range(reported.numel()):

            def loss_at(shift):
                return loss_after_one_step(case, depth, model_state, opt_state, level, index, shift, inputs, targets)

            def central(step):
                return (loss_at(-2 * step) - 8 * loss_at(-step) + 8 * loss_at(step) - loss_at(2 * step)) / (12 * step)

            finite_difference = (16 * central(h / 2) - central(h)) / 15
            name = opt.levels[level].optimizer.learnable[index]
            error = abs(reported[index].item() - finite_difference) / abs(finite_difference)
            assert error < 1e-6, f"level {level} {name}: engine {reported[index].item()!r} vs FD {finite_difference!r}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_update_depends_on_params_is_declared_truthfully(case):
    """An optimizer that says its update's Jacobian in the hyperparameters
    does not depend on the parameters lets the engine skip copying them;
    check the claim: the VJP is the same at two different parameter points."""
    optimizer = case.make(hyper=rc.SGD(1e-2))
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,)]
    grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    cotangent = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]

    def hypergradient_at(params):
        optimizer.to("cpu", torch.float64)
        state = optimizer.init(params)
        leaf = optimizer.raw.clone().requires_grad_()
        new_params, _ = optimizer.update(params, grads, state, optimizer.hyper_values(leaf))
        (gradient,) = torch.autograd.grad(new_params, leaf, grad_outputs=cotangent)
        return gradient

    here = hypergradient_at([torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes])
    there = hypergradient_at([torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes])
    assert optimizer.update_depends_on_params() == (not torch.allclose(here, there, rtol=1e-12, atol=0))


def test_with_the_identity_parametrization_lr_itself_takes_the_hypergradient_step():
    """parametrization={"lr": "identity"} (gdtuo's): d loss / d raw is
    d loss / d lr = -g_t . g_{t-1}, and lr_{t+1} = lr_t - hyper_lr * that."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3), parametrization={"lr": "identity"}))
    previous_grads, lr = None, 0.05
    for _ in range(4):
        opt.zero_grad()
        full_batch_loss(model, inputs, targets).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        if previous_grads is not None:
            expected = -sum((g * h).sum() for g, h in zip(grads, previous_grads)).item()
            assert opt.last_hypergradients[0].item() == pytest.approx(expected, rel=1e-10, abs=0)
            lr = lr - 1e-3 * expected
        assert opt.hyperparameters()["0.lr"] == pytest.approx(lr, rel=1e-12)
        previous_grads = grads


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_loop_that_zeroes_grads_in_place_learns_the_same_as_one_that_sets_them_to_none(case):
    """The engine keeps g_t for the next hypergradient; zero_grad(set_to_none=False)
    zeroes that very tensor in place, and must change nothing."""
    inputs, targets = regression_data()
    runs = []
    for set_to_none in (True, False):
        model = small_mlp()
        opt = rc.HyperOptimizer(model.parameters(), case.make(hyper=rc.Adam(1e-2, hyper=rc.SGD(1e-3))))
        losses = [train_step(model, opt, inputs, targets, set_to_none=set_to_none, sign=case.sign) for _ in range(6)]
        runs.append((losses, opt.hyperparameters()))
    assert runs[0] == runs[1]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_leaves_gradients_as_torch_optim_does(set_to_none):
    """HyperOptimizer writes zero_grad out (see its docstring): None, or
    zeros that are detached and need no grad, as torch.optim leaves them,
    including a gradient that kept a graph (backward(create_graph=True))."""
    inputs, targets = regression_data()
    leftovers = []
    for make in (lambda params: torch.optim.SGD(params, lr=0.05),
                 lambda params: rc.HyperOptimizer(params, rc.SGD(0.05))):
        model = small_mlp()
        opt = make(model.parameters())
        full_batch_loss(model, inputs, targets).backward(create_graph=True)
        grads = [param.grad for param in model.parameters()]
        assert all(grad.grad_fn is not None for grad in grads)
        opt.zero_grad(set_to_none=set_to_none)
        leftovers.append([
            None if param.grad is None
            else (param.grad is grad, param.grad.grad_fn, param.grad.requires_grad, param.grad.abs().sum().item())
            for param, grad in zip(model.parameters(), grads)
        ])
    assert leftovers[0] == leftovers[1]
    assert leftovers[1][0] == (None if set_to_none else (True, None, False, 0.0))


def test_step_hooks_and_the_profiler_range_work_as_in_torch_optim(monkeypatch):
    """HyperOptimizer enters torch.optim's step wrapper only when a hook is
    registered or a profiler runs (see its step). Then the same hooks fire
    in the same order with the same arguments as for torch.optim, a pre-hook
    can replace the closure, and the profiler records the step's range."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    inputs, targets = regression_data()
    logs = []
    for make in (lambda params: torch.optim.SGD(params, lr=0.05), lambda params: rc.HyperOptimizer(params, rc.SGD(0.05))):
        model, log = small_mlp(), []
        opt = make(model.parameters())

        def closure():
            opt.zero_grad()
            loss = full_batch_loss(model, inputs, targets)
            loss.backward()
            log.append("closure")
            return loss

        handles = [
            opt.register_step_pre_hook(lambda o, args, kwargs: (log.append(("pre", o is opt, len(args))), None)[1]),
            opt.register_step_pre_hook(lambda o, args, kwargs: ((args[0], closure), kwargs)),
            opt.register_step_post_hook(lambda o, args, kwargs: log.append(("post", args[1] is closure))),
            register_optimizer_step_pre_hook(lambda o, args, kwargs: log.append("global pre")),
            register_optimizer_step_post_hook(lambda o, args, kwargs: log.append("global post")),
        ]
        try:
            returned = opt.step(lambda: 1 / 0)  # replaced by the second pre-hook
        finally:
            for handle in handles:
                handle.remove()
        log.append(returned.item())
        logs.append(log)
    assert logs[0] == logs[1]
    assert logs[1][:4] == ["global pre", ("pre", True, 2), "closure", ("post", True)]

    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05))
    full_batch_loss(model, inputs, targets).backward()
    with torch.profiler.profile() as profile:
        opt.step()
    assert "Optimizer.step#HyperOptimizer.step" in [event.name for event in profile.events()]

    def refuse(*args, **kwargs):
        raise AssertionError("entered torch.optim's step wrapper with no hook and no profiler")

    monkeypatch.setattr(rc.HyperOptimizer, "_step_with_hooks", refuse)
    before = [param.detach().clone() for param in model.parameters()]
    opt.step()
    assert not any(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_a_kept_gradient_written_in_place_behind_the_optimizer_skips_one_hypergradient_and_says_so(caplog):
    """model.zero_grad(set_to_none=False) zeroes, in place, the .grad tensors
    level 0 kept for the next hypergradient (the optimizer's own zero_grad
    swaps them instead). The engine notices, skips that one hypergradient,
    warns, and copies gradients from then on; a checkpoint taken in between
    resumes to the same run."""
    inputs, targets = regression_data()

    def run(steps, opt=None, model=None):
        for _ in range(steps):
            model.zero_grad(set_to_none=False)
            full_batch_loss(model, inputs, targets).backward()
            opt.step()

    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3)))
    run(1, opt, model)
    assert not opt.copies_gradients
    with caplog.at_level("WARNING", logger="recurse"):
        run(1, opt, model)
    assert opt.last_hypergradients[0] is None and opt.copies_gradients
    assert sum("written in place" in record.message for record in caplog.records) == 1
    run(1, opt, model)
    assert opt.last_hypergradients[0] is not None  # copied gradients: learning goes on

    # The same, checkpointed right after the in-place write: both runs skip it.
    model, resumed_model = small_mlp(), small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3)))
    run(2, opt, model)
    model.zero_grad(set_to_none=False)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    resumed = rc.HyperOptimizer(resumed_model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3)))
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["opt"])
    run(3, opt, model)
    run(3, resumed, resumed_model)
    assert opt.hyperparameters() == resumed.hyperparameters()
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
