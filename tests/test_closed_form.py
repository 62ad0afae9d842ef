"""The closed-form hypergradients (Optimizer.update_with_vjp) equal autograd
through the optimizer's own update, for every configuration of the
optimizers that have one, at the first and later steps, in float64."""

import copy

import pytest
import torch

import recurse as rc
from machine import INDUCTOR_BUILDS_REDUCTIONS
from optimizer_table import autograd_vjp, regression_data, small_mlp, train_step
from recurse.optim import adam as adam_module

CONFIGURATIONS = {
    "sgd": lambda: rc.SGD(0.05),
    "sgd-momentum": lambda: rc.SGD(0.05, momentum=0.9),
    "sgd-momentum-dampening-wd": lambda: rc.SGD(0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
    "sgd-nesterov-wd": lambda: rc.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
    "sgd-wd": lambda: rc.SGD(0.05, weight_decay=1e-2),
    "sgd-momentum-fixed-lr-only": lambda: rc.SGD(0.05, momentum=0.9, learn="lr"),
    "adam": lambda: rc.Adam(1e-2, eps=1e-3),
    "adam-wd": lambda: rc.Adam(1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=1e-2),
    "adam-beta1-off": lambda: rc.Adam(1e-2, betas=(0.0, 0.99), eps=1e-3),
    "adam-lr-only": lambda: rc.Adam(1e-2, learn="lr"),
    "adamw": lambda: rc.AdamW(1e-2, eps=1e-3, weight_decay=0.1),
    "adamw-lr-only": lambda: rc.AdamW(1e-2, weight_decay=0.1, learn="lr"),
    "adamw-weight-decay-only": lambda: rc.AdamW(1e-2, weight_decay=0.1, learn="weight_decay"),  # (no temporaries)
    "sgd-momentum-wd-maximize": lambda: rc.SGD(0.05, momentum=0.9, weight_decay=1e-2, maximize=True),
    "adam-amsgrad-lr-beta1-eps": lambda: rc.Adam(1e-2, eps=1e-3, amsgrad=True, learn=("lr", "beta1", "eps")),
    # (beta2 = 0.5: v falls below its running maximum at about half the coordinates, so the maximum's branch acts)
    "adam-amsgrad-short-v-memory": lambda: rc.Adam(1e-2, betas=(0.9, 0.5), eps=1e-3, amsgrad=True,
                                                   learn=("lr", "beta1", "eps")),
    "adam-amsgrad-maximize-lr-only": lambda: rc.Adam(1e-2, amsgrad=True, maximize=True, learn="lr"),
    "adamw-amsgrad-lr-weight-decay": lambda: rc.AdamW(1e-2, weight_decay=0.1, amsgrad=True,
                                                      learn=("lr", "weight_decay")),
    "sgd-momentum-identity": lambda: rc.SGD(0.05, momentum=0.9, parametrization={"lr": "identity", "momentum": "identity"}),
    "adam-identity-lr-beta1": lambda: rc.Adam(1e-2, eps=1e-3, parametrization={"lr": "identity", "beta1": "identity"}),
}


def random_problem(seed):
    """Params of several shapes (0-d and empty included), a gradient
    sequence, and one coordinate whose parameter and gradient stay 0 (so
    Adam's second moment there is exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (), (0,), (5,)]
    params = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    params[0][0, 0] = 0.0
    grads = []
    for _ in range(4):
        step = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
        step[0][0, 0] = 0.0
        grads.append(step)
    return params, grads


def check_closed_form_against_autograd(optimizer, seed, device="cpu"):
    """Four steps of update_with_vjp on random_problem, in float64: the new
    parameters equal the update's, and each vjp equals autograd through the
    update (a list of floats where hypergradient_on_host is set)."""
    optimizer.to(device, torch.float64)
    params, grads = random_problem(seed)
    params, grads = [p.to(device) for p in params], [[g.to(device) for g in step] for step in grads]
    state = optimizer.init(params)
    generator = torch.Generator().manual_seed(7)
    for step, step_grads in enumerate(grads):
        values = optimizer.values_from_raw(optimizer.raw.tolist())
        new_params, new_state, vjp = optimizer.update_with_vjp(params, step_grads, state, values)
        reference_params, _ = optimizer.update(params, step_grads, state, optimizer.hyper_values(optimizer.raw))
        for mine, reference in zip(new_params, reference_params):
            torch.testing.assert_close(mine, reference, rtol=1e-14, atol=1e-15)
        incoming = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device) for p in params]
        expected = autograd_vjp(optimizer, params, step_grads, state, incoming)
        gradient = vjp(incoming)
        assert isinstance(gradient, list if optimizer.hypergradient_on_host else torch.Tensor)
        torch.testing.assert_close(optimizer.as_raw_tensor(gradient), expected, rtol=1e-10, atol=1e-14)
        if step > 0:  # (on the first step momentum, dampening and beta1 do not act yet)
            assert expected.abs().min() > 0  # every learnable hyperparameter really moves the update
        params, state = new_params, new_state


@pytest.mark.parametrize("on_host", [False, True], ids=["tensor", "floats"])
@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_closed_form_vjp_equals_autograd_through_the_update(name, on_host):
    """``on_host``: the engine's setting where the level above steps in
    floats; the vjp then reads its inner products once and returns floats."""
    optimizer = CONFIGURATIONS[name]()
    optimizer.hypergradient_on_host = on_host
    check_closed_form_against_autograd(optimizer, seed=len(name))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", sorted(name for name in CONFIGURATIONS if name.startswith("adam")))
def test_adam_compiled_closed_form_equals_autograd(name):
    """Adam(compile=True): the inner products through torch.compile (one
    function per parameter tensor) give the same hypergradient, and it
    really compiled (no fallback)."""
    torch._dynamo.reset()  # (one compiled function serves every configuration; each is a recompile)
    optimizer = CONFIGURATIONS[name]()
    optimizer.compile = True
    check_closed_form_against_autograd(optimizer, seed=len(name))
    assert optimizer.compile or not INDUCTOR_BUILDS_REDUCTIONS  # (it compiled: no fallback; see tests/machine.py)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_tower_with_a_compiled_adam_level_trains_and_resumes_as_the_eager_one():
    """The engine around Adam(compile=True): 12 steps of a float64 tower, a
    checkpoint, 8 more in a resumed optimizer; the same losses, learned
    values and parameters as without compile (summation order aside)."""
    torch._dynamo.reset()
    inputs, targets = regression_data()
    runs = []
    for compile in (False, True):
        model = small_mlp()

        def make():
            return rc.Adam(1e-2, eps=1e-3, compile=compile, hyper=rc.SGD(1e-3, normalize="rms"))

        opt = rc.HyperOptimizer(model.parameters(), make())
        losses = [train_step(model, opt, inputs, targets) for _ in range(12)]
        resumed = rc.HyperOptimizer(model.parameters(), make())
        resumed.load_state_dict(opt.state_dict())
        losses += [train_step(model, resumed, inputs, targets) for _ in range(8)]
        # (it compiled: no fallback; see tests/machine.py)
        assert resumed.levels[0].optimizer.compile == compile or not INDUCTOR_BUILDS_REDUCTIONS
        runs.append((losses, resumed.hyperparameters(), [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_values, eager_params), (losses, values, params) = runs
    assert losses == pytest.approx(eager_losses, rel=1e-10)
    assert values == pytest.approx(eager_values, rel=1e-10)
    for mine, reference in zip(params, eager_params):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_compiled_closed_form_on_cuda_equals_autograd(name):
    torch._dynamo.reset()
    optimizer = CONFIGURATIONS[name]()
    optimizer.compile = True
    check_closed_form_against_autograd(optimizer, seed=len(name), device="cuda")
    assert optimizer.compile


def test_adam_compile_that_fails_warns_once_and_computes_without_it(monkeypatch, caplog):
    def no_compiler(*arguments):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(adam_module, "_fused_products", no_compiler)
    optimizer = rc.Adam(1e-2, eps=1e-3, compile=True, hyper=rc.SGD(1e-3))
    with caplog.at_level("WARNING", logger="recurse"):
        check_closed_form_against_autograd(optimizer, seed=3)
    assert not optimizer.compile
    warnings = [record.message for record in caplog.records if "torch.compile failed" in record.message]
    assert warnings == ["rc.Adam(compile=True): torch.compile failed (RuntimeError: no C++ compiler); "
                        "the closed form runs without it"]


def test_an_optimizer_without_a_closed_form_is_differentiated_by_autograd():
    assert rc.RMSprop(1e-2).update_with_vjp([], [], {}, {}) is None
    assert rc.LSTMOptimizer().update_with_vjp([], [], {}, {}) is None


def test_a_saturated_hyperparameter_skips_the_step_instead_of_dividing_by_zero():
    """beta1 = sigmoid(50) is exactly 1.0 in float64: Adam's bias correction
    1 - beta1^t is 0. The step must be rejected by the guard, not crash."""
    theta = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.Adam(1e-2, hyper=rc.SGD(1e-3)))
    adam = opt.levels[0].optimizer  # (the engine's own copy of the description)
    adam.raw = torch.tensor([adam.raw[0].item(), 50.0, adam.raw[2].item(), adam.raw[3].item()], dtype=torch.float64)
    assert adam.values_from_raw(adam.raw.tolist())["beta1"] == 1.0
    (theta ** 2).sum().backward()
    opt.step()
    assert opt.nonfinite_steps == 1 and torch.equal(theta.detach(), torch.ones(3, dtype=torch.float64))


def test_a_tower_with_a_value_beyond_the_dtype_is_refused_before_any_level_moves():
    below, above = rc.SGD(0.1), rc.SGD(3.5e38)
    raw_before = below.raw.clone()
    with pytest.raises(ValueError, match=r"rc.SGD: lr = 3.5e\+38 is beyond the largest torch.float32"):
        rc.HyperOptimizer([torch.zeros(2, requires_grad=True)], rc.stack(below, above))
    assert below.raw.dtype == torch.float64 and torch.equal(below.raw, raw_before)


@pytest.mark.parametrize("guard", ["skip", "raise"])
def test_a_learned_value_driven_beyond_the_dtype_is_caught_by_the_guard(guard):
    """lr = e * 3e38 is a finite Python float but no float32: torch refuses
    it as a scale ("cannot be converted to type float without overflow").
    The guard must see a saturated value and skip (or raise), nothing updated."""
    theta = torch.ones(3, requires_grad=True)
    learned = rc.SGD(3e38, hyper=rc.SGD(1.0, normalize="rms"))
    # (first_step_limit=None: the test needs the first step taken at lr 3e38)
    opt = rc.HyperOptimizer([theta], learned, guard=guard, first_step_limit=None)
    theta.grad = torch.full((3,), 0.1)
    opt.step()  # lr = 3e38 fits; theta = 1 - 3e37
    theta.grad = torch.full((3,), 0.1)
    raw_before, theta_before = learned.raw.clone(), theta.detach().clone()
    # The normalised hyper-step raises log lr by 1: lr = 8.2e38, beyond float32.
    assert learned.values_from_raw([raw_before.item() + 1.0])["lr"] > torch.finfo(torch.float32).max
    if guard == "raise":
        with pytest.raises(FloatingPointError, match="non-finite update at step 2"):
            opt.step()
    else:
        opt.step()
        assert opt.nonfinite_steps == 1
    assert torch.equal(theta.detach(), theta_before) and torch.equal(learned.raw, raw_before)


@pytest.mark.parametrize("make", [lambda: rc.SGD(0.1, momentum=0.9), lambda: rc.Adam(0.1), lambda: rc.AdamW(0.1),
                                  lambda: rc.RMSprop(0.1), lambda: rc.Adagrad(0.1)])
def test_every_built_in_steps_an_empty_parameter_list(make):
    """The foreach ops refuse empty lists; the list helpers fall back to the per-tensor loop."""
    optimizer = make()
    new_params, _ = optimizer.update([], [], optimizer.init([]), optimizer.hyper_values())
    assert new_params == []


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_on_host_floats_every_closed_form_computes_what_it_computes_on_a_tensor(name):
    """A tower's upper levels step their few numbers as Python floats (a host
    vector, one float per entry); the same formulas on one float64 tensor
    (the engine's tensor path) give the same update, state and vjp."""
    on_tensor, on_host = CONFIGURATIONS[name](), CONFIGURATIONS[name]()
    assert type(on_host).host_floats
    for optimizer in (on_tensor, on_host):
        optimizer.to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(len(name))
    start = torch.randn(5, generator=generator, dtype=torch.float64)
    start[0] = 0.0  # a coordinate whose gradient stays 0: Adam's v_t is exactly 0 there
    tensor_params, host_params = [start], start.tolist()
    tensor_state, host_state = on_tensor.init(tensor_params), on_host.init(host_params)
    values = on_tensor.values_from_raw(on_tensor.raw.tolist())
    for _ in range(4):
        grads = torch.randn(5, generator=generator, dtype=torch.float64)
        grads[0] = 0.0
        incoming = torch.randn(5, generator=generator, dtype=torch.float64)
        tensor_params, tensor_state, tensor_vjp = on_tensor.update_with_vjp(tensor_params, [grads], tensor_state, values)
        host_params, host_state, host_vjp = on_host.update_with_vjp(host_params, grads.tolist(), host_state, values)
        assert all(type(value) is float for value in host_params)
        torch.testing.assert_close(torch.tensor(host_params, dtype=torch.float64), tensor_params[0], rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(torch.tensor(host_vjp(incoming.tolist()), dtype=torch.float64),
                                   tensor_vjp([incoming]), rtol=1e-12, atol=1e-15)
        for key, tensors in tensor_state.items():
            floats = host_state[key]
            if isinstance(tensors, (list, tuple)) and tensors and tensors[0] is not None:
                torch.testing.assert_close(torch.tensor(floats, dtype=torch.float64), tensors[0], rtol=1e-13, atol=1e-15)
            else:
                assert floats == tensors or (list(tensors) == [None] and floats == [None] * 5)


def test_host_arithmetic_keeps_ieee_results_where_python_would_raise():
    from recurse.optim import _ops

    assert _ops.divide_each([1.0, -1.0, 0.0], [0.0, 0.0, 0.0])[:2] == [float("inf"), -float("inf")]
    assert _ops.divide_each([0.0], [0.0])[0] != _ops.divide_each([0.0], [0.0])[0]  # NaN
    assert _ops.divide_all([1.0], -0.0) == [-float("inf")]
    assert _ops.addcdiv_all([1.0], [2.0], [0.0], 1.0) == [float("inf")]
    root = _ops.sqrt_all([4.0, float("nan"), float("inf")])
    assert root[0] == 2.0 and root[1] != root[1] and root[2] == float("inf")
    assert _ops.dot([float("inf"), 1.0], [1.0, float("-inf")]) != _ops.dot([float("inf")], [1.0])  # inf - inf: NaN
    assert _ops.clamp_min_all([float("nan"), -1.0, 2.0], 0.5)[1:] == [0.5, 2.0]


@pytest.mark.parametrize("level_zero", [lambda: rc.Adam(1e-2, learn="lr"), lambda: rc.AdamW(1e-2, learn="lr")],
                         ids=["adam", "adamw-with-weight-decay"])
def test_adam_learning_only_its_lr_keeps_one_direction_alone_and_resumes_exactly(level_zero):
    """Its closed form saves u = m_t / den (+ (1 - beta1^t) weight_decay p, AdamW), a SavedProduct: the
    engine keeps no inputs and no gradient, and a checkpoint, a deep copy and an in-place write to .grad
    all go on as the original run."""
    inputs, targets = regression_data()

    def build(model):
        return rc.HyperOptimizer(model.parameters(), rc.stack(level_zero(), rc.SGD(1e-3, normalize="rms")))

    model = small_mlp()
    opt = build(model)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    record = opt.levels[0].last_update
    assert record.params is None and record.grads is None and record.state is None and opt._kept_grads is None
    assert set(record.saved) == {"direction", "bias_correction1", "values"}
    assert not opt.levels[0].optimizer.closed_form_keeps_params()  # (so the engine copies no parameters)
    resumed_model = small_mlp()
    resumed_model.load_state_dict(model.state_dict())
    resumed = build(resumed_model)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    copied_model, copied = copy.deepcopy((model, opt))
    for _ in range(5):
        losses = {train_step(m, o, inputs, targets) for m, o in ((model, opt), (resumed_model, resumed),
                                                                 (copied_model, copied))}
        assert len(losses) == 1
    assert opt.hyperparameters() == resumed.hyperparameters() == copied.hyperparameters()
    # an in-place write to a gradient skips nothing now: no kept gradient can be stale
    model.zero_grad(set_to_none=False)
    train_step(model, opt, inputs, targets)
    assert not opt.copies_gradients


@pytest.mark.parametrize("guard", ["skip", "off"])
def test_adamw_learning_only_its_lr_under_a_closure_takes_autograd_on_a_copy(guard):
    """Where the closed form is not taken (step(closure); also a value beyond its dtype), autograd
    differentiates p (1 - lr wd) on a copy of the parameters, which the engine did not make for the
    closed form: the next step neither crashes on the in-place update nor reads the new parameters."""
    inputs, targets = regression_data()

    def build(model):
        return rc.HyperOptimizer(model.parameters(), rc.stack(rc.AdamW(1e-2, learn="lr"), rc.SGD(1e-3)),
                                 guard=guard)

    def closure_step(model, opt):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            return loss
        return opt.step(closure).item()

    model = small_mlp()
    opt = build(model)
    for _ in range(3):
        closure_step(model, opt)
    plain_model = small_mlp()
    plain = build(plain_model)
    for _ in range(3):
        train_step(plain_model, plain, inputs, targets)
    assert opt.hypergradients()["0.lr"] == pytest.approx(plain.hypergradients()["0.lr"], rel=1e-12)
    resumed_model = copy.deepcopy(model)
    resumed = build(resumed_model)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        assert closure_step(model, opt) == closure_step(resumed_model, resumed)
