"""Property tests (hypothesis): random shapes, dtypes, groups, hyperparameters
and depths. Example counts are fixed by the settings below."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recurse as rc
from optimizer_table import autograd_vjp

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)  # () is 0-d; a 0 makes it empty
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def optimizer_pairs(draw):
    """(recurse optimizer, torch.optim factory) with the same random settings."""
    lr = draw(st.floats(1e-4, 0.5))
    kind = draw(st.sampled_from(["sgd", "adam", "adamw", "rmsprop", "adagrad"]))
    if kind == "sgd":
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        weight_decay = draw(st.sampled_from([0.0, 1e-2]))
        return (rc.SGD(lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov),
                lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
    if kind in ("adam", "adamw"):
        betas = (draw(st.floats(0.0, 0.99)), draw(st.floats(0.5, 0.999)))
        weight_decay = draw(st.sampled_from([0.0, 1e-2]))
        ours, theirs = (rc.Adam, torch.optim.Adam) if kind == "adam" else (rc.AdamW, torch.optim.AdamW)
        return (ours(lr, betas=betas, weight_decay=weight_decay),
                lambda p: theirs(p, lr=lr, betas=betas, weight_decay=weight_decay))
    if kind == "rmsprop":
        centered = draw(st.booleans())
        return rc.RMSprop(lr, centered=centered), lambda p: torch.optim.RMSprop(p, lr=lr, centered=centered)
    return rc.Adagrad(lr), lambda p: torch.optim.Adagrad(p, lr=lr)


@PROPERTY_SETTINGS
@given(group_shapes=st.lists(st.lists(shapes, min_size=1, max_size=3), min_size=1, max_size=3), dtype=dtypes,
       pair=optimizer_pairs(), seed=st.integers(0, 2**16))
def test_depth_zero_is_torch_optim_on_any_shapes_dtypes_and_groups(group_shapes, dtype, pair, seed):
    ours, make_theirs = pair
    generator = torch.Generator().manual_seed(seed)
    starts = [[torch.randn(shape, generator=generator, dtype=dtype) for shape in group] for group in group_shapes]
    mine = [[t.clone().requires_grad_() for t in group] for group in starts]
    theirs = [[t.clone().requires_grad_() for t in group] for group in starts]
    opt = rc.HyperOptimizer([{"params": group} for group in mine], ours)
    reference = make_theirs([p for group in theirs for p in group])
    for _ in range(4):
        grads = [torch.randn(t.shape, generator=generator, dtype=dtype) for group in starts for t in group]
        for params in (mine, theirs):
            for param, grad in zip([p for group in params for p in group], grads):
                param.grad = grad.clone()
        opt.step()
        reference.step()
    for a, b in zip([p for group in mine for p in group], [p for group in theirs for p in group]):
        assert torch.equal(a, b)


@PROPERTY_SETTINGS
@given(depth=st.integers(0, 6), tie=st.booleans(), base_lr=st.floats(1e-4, 10.0), hyper_lr=st.floats(1e-4, 1.0),
       seed=st.integers(0, 2**16), dim=st.integers(1, 8))
def test_towers_on_random_quadratics_never_hold_a_non_finite_value(depth, tie, base_lr, hyper_lr, seed, dim):
    task = rc.problems.QuadraticFamily(dim, seed=seed).sample()
    theta = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    tower = rc.tower(rc.SGD(base_lr), depth, tie=True) if tie and depth else rc.stack(
        rc.SGD(base_lr), *[rc.SGD(hyper_lr) for _ in range(depth)])
    opt = rc.HyperOptimizer([theta], tower)
    for _ in range(30):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
        assert torch.isfinite(theta).all()
        assert all(torch.isfinite(level.optimizer.raw).all() for level in opt.levels)
    assert opt.step_count + opt.nonfinite_steps == 30


@PROPERTY_SETTINGS
@given(depth=st.integers(0, 4), stop_at=st.integers(0, 12), seed=st.integers(0, 2**16),
       family=st.sampled_from(["sgd", "adam"]))
def test_state_dict_round_trips_at_any_step(depth, stop_at, seed, family):
    task = rc.problems.QuadraticFamily(4, seed=seed).sample()

    def build():
        theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        base = rc.SGD(0.01, momentum=0.5) if family == "sgd" else rc.Adam(0.05)
        return [theta], rc.HyperOptimizer([theta], rc.stack(base, *[rc.SGD(1e-3, normalize="rms")
                                                                    for _ in range(depth)]))

    assert_resume_is_exact(build, lambda params: task.loss(params[0]), steps=12, stop_at=stop_at)


def assert_resume_is_exact(build, loss_of, *, steps, stop_at):
    """``build()`` gives (params, HyperOptimizer). A run saved after
    ``stop_at`` steps and resumed in a fresh build ends bit-identical to one
    that ran all ``steps``."""
    def run(params, opt, count):
        for _ in range(count):
            opt.zero_grad()
            loss_of(params).backward()
            opt.step()

    whole_params, whole = build()
    run(whole_params, whole, steps)
    first_params, first = build()
    run(first_params, first, stop_at)
    saved = first.state_dict()
    resumed_params, resumed = build()
    with torch.no_grad():
        for resumed_param, first_param in zip(resumed_params, first_params):
            resumed_param.copy_(first_param)
    resumed.load_state_dict(saved)
    run(resumed_params, resumed, steps - stop_at)
    for resumed_param, whole_param in zip(resumed_params, whole_params):
        assert torch.equal(resumed_param, whole_param)
    assert resumed.hyperparameters() == whole.hyperparameters()


def bottom_optimizer(kind, lr, hyper):
    """The optimizer that trains two parameter tensors: a built-in, an LSTM
    optimizer, or a PerGroup with one of each."""
    if kind == "sgd":
        return rc.SGD(lr, momentum=0.5, hyper=hyper)
    if kind == "adam":
        return rc.Adam(lr, hyper=hyper)
    if kind == "lstm":
        return rc.LSTMOptimizer(hidden_size=4, layers=1, hyper=hyper)
    return rc.PerGroup({"first": (rc.SGD(lr), [0]), "second": (rc.LSTMOptimizer(hidden_size=4, layers=1), [1])},
                       hyper=hyper)


learned_kinds = st.sampled_from(["sgd", "adam", "lstm", "per_group"])


def hyper_stack(kinds, lr):
    """Levels above the bottom, RMS-normalised, built top-down: SGD or Adam each."""
    hyper = None
    for kind in reversed(kinds):
        hyper = (rc.SGD if kind == "sgd" else rc.Adam)(lr, normalize="rms", hyper=hyper)
    return hyper


@PROPERTY_SETTINGS
@given(bottom=learned_kinds, levels=st.lists(st.sampled_from(["sgd", "adam"]), min_size=0, max_size=3),
       base_lr=st.floats(1e-4, 10.0), hyper_lr=st.floats(1e-4, 1.0), seed=st.integers(0, 2**16))
def test_towers_over_learned_and_per_group_optimizers_never_hold_a_non_finite_value(bottom, levels, base_lr,
                                                                                      hyper_lr, seed):
    task = rc.problems.QuadraticFamily(6, seed=seed).sample()
    first = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    second = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([first, second], bottom_optimizer(bottom, base_lr, hyper_stack(levels, hyper_lr)))
    for _ in range(15):
        opt.zero_grad()
        task.loss(torch.cat([first, second])).backward()
        opt.step()
        assert torch.isfinite(first).all() and torch.isfinite(second).all()
        assert all(torch.isfinite(level.optimizer.raw).all() for level in opt.levels)
    assert opt.step_count + opt.nonfinite_steps == 15


@PROPERTY_SETTINGS
@given(bottom=learned_kinds, depth=st.integers(0, 2), stop_at=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_state_dict_round_trips_at_any_step_for_learned_and_per_group_optimizers(bottom, depth, stop_at, seed):
    task = rc.problems.QuadraticFamily(6, seed=seed).sample()

    def build():
        params = [torch.zeros(2, dtype=torch.float64, requires_grad=True),
                  torch.zeros(4, dtype=torch.float64, requires_grad=True)]
        return params, rc.HyperOptimizer(params, bottom_optimizer(bottom, 0.05, hyper_stack(["sgd"] * depth, 1e-3)))

    assert_resume_is_exact(build, lambda params: task.loss(torch.cat(params)), steps=8, stop_at=stop_at)


@st.composite
def closed_form_optimizers(draw):
    """An SGD or Adam/AdamW with random settings and a random learnable subset."""
    lr = draw(st.floats(1e-3, 0.5))
    if draw(st.booleans()):
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        dampening = 0.0 if nesterov or momentum == 0 else draw(st.sampled_from([0.0, 0.3]))
        weight_decay = draw(st.sampled_from([0.0, 1e-2]))
        optimizer = rc.SGD(lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    else:
        kind = draw(st.sampled_from([rc.Adam, rc.AdamW]))
        betas = (draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.floats(0.5, 0.999)))
        optimizer = kind(lr, betas=betas, eps=draw(st.floats(1e-8, 1e-1)),
                         weight_decay=draw(st.sampled_from([0.0, 1e-2])))
    learn = draw(st.lists(st.sampled_from(optimizer.learnable), min_size=1, unique=True))
    return type(optimizer), optimizer, learn


@PROPERTY_SETTINGS
@given(spec=closed_form_optimizers(), shapes=st.lists(shapes, min_size=1, max_size=3), steps=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_closed_form_hypergradients_equal_autograd_for_any_settings(spec, shapes, steps, seed):
    kind, template, learn = spec
    values = dict(template.initial_values)
    if kind is rc.SGD:
        optimizer = rc.SGD(values["lr"], values["momentum"], values["dampening"], values["weight_decay"],
                           nesterov=template.nesterov, learn=learn)
    else:
        optimizer = kind(values["lr"], (values["beta1"], values["beta2"]), values["eps"], values["weight_decay"],
                         learn=learn)
    optimizer.to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    state = optimizer.init(params)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        incoming = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        values = optimizer.values_from_raw(optimizer.raw.tolist())
        new_params, new_state, vjp = optimizer.update_with_vjp(params, grads, state, values)
        expected = autograd_vjp(optimizer, params, grads, state, incoming)
        torch.testing.assert_close(vjp(incoming), expected, rtol=1e-9, atol=1e-12)
        params, state = new_params, new_state
