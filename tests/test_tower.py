"""Towers: construction helpers, learning a bad learning rate back, tying,
history, checkpoints and exact resume."""

import copy
import io
import math
import pickle

import pytest
import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step
from recurse.problems import QuadraticFamily


def run_quadratic(task, optimizer, steps=200):
    theta = torch.zeros(task.dim, dtype=torch.float64, requires_grad=True)
    opt = rc.HyperOptimizer([theta], optimizer)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(theta).backward()
        opt.step()
    with torch.no_grad():
        return task.loss(theta).item(), opt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_two_stack_recovers_from_a_learning_rate_100x_too_small(seed):
    task = QuadraticFamily(10, seed=seed).sample()
    bad_lr = 1.0 / task.smoothness() / 100
    fixed_loss, _ = run_quadratic(task, rc.SGD(bad_lr))
    tower = rc.stack(rc.SGD(bad_lr), rc.SGD(0.05, normalize="rms"), rc.SGD(0.01, normalize="rms"))
    learned_loss, opt = run_quadratic(task, tower)
    assert learned_loss / fixed_loss < 0.2
    assert opt.hyperparameters()["0.lr"] > 10 * bad_lr


def test_stack_equals_nested_hyper_and_tower_builds_independent_copies():
    nested = rc.Adam(1e-3, hyper=rc.SGD(1e-4, hyper=rc.SGD(1e-5)))
    stacked = rc.stack(rc.Adam(1e-3), rc.SGD(1e-4), rc.SGD(1e-5))
    assert repr(nested) == repr(stacked)
    built = rc.tower(rc.SGD(0.01), depth=4)
    chain = [built]
    while chain[-1].hyper is not None:
        chain.append(chain[-1].hyper)
    assert len(chain) == 5 and len({id(level) for level in chain}) == 5
    model = small_mlp()
    assert rc.HyperOptimizer(model.parameters(), built).depth == 4
    assert rc.HyperOptimizer(small_mlp().parameters(), rc.SGD(0.1)).depth == 0


def test_hyperparameters_are_named_by_level_and_history_records_every_step():
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-2), rc.SGD(1e-3), rc.SGD(1e-4)), record_history=True)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    names = opt.hyperparameters()
    assert {"0.lr", "0.beta1", "0.beta2", "0.eps", "1.lr", "2.lr"} <= set(names)
    history = opt.history()
    assert set(history) == {"0.lr", "0.beta1", "0.beta2", "0.eps", "1.lr"}
    assert all(len(values) == 5 for values in history.values())
    assert history["0.lr"][-1] == pytest.approx(names["0.lr"], rel=1e-12)


@pytest.mark.parametrize("tied_depth", [1, 2])
def test_tied_sgd_follows_its_closed_form(tied_depth):
    """One SGD steps the model and its own log-lr r with its own lr:
    G_t = -(g_t . g_{t-1}) e^{r_{t-1}}  (+ G_t (-e^{r_{t-2}} G_{t-1}) at depth 2),
    r_t = r_{t-1} - e^{r_{t-1}} G_t."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), rc.tower(rc.SGD(0.05), tied_depth, tie=True))
    raws, grads, hypergradients = [math.log(0.05)], [], []
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        opt.step()
        if len(grads) == 1:
            continue
        through_model = -(grads[-1] @ grads[-2]).item() * math.exp(raws[-1])
        total = through_model
        if tied_depth == 2 and hypergradients:
            total += through_model * (-math.exp(raws[-2]) * hypergradients[-1])
        hypergradients.append(total)
        raws.append(raws[-1] - math.exp(raws[-1]) * total)
        assert opt.levels[0].optimizer.raw.item() == pytest.approx(raws[-1], rel=1e-12)


TOWERS = {
    "adam-sgd-sgd": lambda: rc.stack(rc.Adam(1e-2), rc.SGD(1e-3), rc.SGD(1e-4)),
    "rmsprop-normalised": lambda: rc.stack(rc.RMSprop(1e-2, momentum=0.5), rc.Adam(1e-3, normalize="rms")),
    "tied-sgd": lambda: rc.tower(rc.SGD(0.05, momentum=0.5), 3, tie=True),
    "adagrad-depth0": lambda: rc.Adagrad(0.05),
}


def make_run(kind, dtype=torch.float64, device="cpu"):
    model = small_mlp(dtype=dtype).to(device)
    return model, rc.HyperOptimizer(model.parameters(), TOWERS[kind](), record_history=True)


@pytest.mark.parametrize("kind", ["adam-sgd-sgd", "rmsprop-normalised", "tied-sgd", "adagrad-depth0"])
def test_state_dict_round_trip_resumes_bit_identically(kind):
    inputs, targets = regression_data()
    model, opt = make_run(kind)
    for _ in range(7):
        train_step(model, opt, inputs, targets)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_model, resumed_opt = make_run(kind)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    for _ in range(7):
        assert train_step(model, opt, inputs, targets) == train_step(resumed_model, resumed_opt, inputs, targets)
    assert opt.hyperparameters() == resumed_opt.hyperparameters()
    assert opt.history() == resumed_opt.history()
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


HALF_PRECISION_TOWERS = {
    "sgd-momentum": lambda: rc.SGD(0.05, momentum=0.9, hyper=rc.SGD(0.01, normalize="rms",
                                                                      hyper=rc.SGD(1e-3, normalize="rms"))),
    "adam": lambda: rc.Adam(1e-2, eps=1e-4, hyper=rc.SGD(0.01, normalize="rms")),
    "adamw-over-adam": lambda: rc.AdamW(1e-2, eps=1e-4, hyper=rc.Adam(0.01, eps=1e-4, normalize="rms")),
    "adagrad": lambda: rc.Adagrad(5e-2, eps=1e-4, hyper=rc.SGD(0.01, normalize="rms")),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", sorted(HALF_PRECISION_TOWERS))
def test_a_half_precision_model_learns_its_hyperparameters_as_a_float32_one_does(kind, dtype):
    """The parameters stay in half precision; the learned values are held in
    float32 (rc.optim.base.raw_dtype_for), so bfloat16's 8 significant bits
    do not swallow the hyper-steps: after 60 steps the learned lr is within
    2% of a float32 run's (in bfloat16 raw, Adam's ended 32% off). A
    checkpoint taken on the way resumes to the same run."""
    learned, models = [], []
    for run_dtype in (torch.float32, dtype):
        inputs, targets = regression_data(dtype=run_dtype)
        model = small_mlp(dtype=run_dtype)
        opt = rc.HyperOptimizer(model.parameters(), HALF_PRECISION_TOWERS[kind]())
        losses = [train_step(model, opt, inputs, targets) for _ in range(60)]
        assert opt.nonfinite_steps == 0 and losses[-1] < 0.5 * losses[0]
        learned.append(opt.hyperparameters()["0.lr"])
        models.append((model, opt))
    assert all(level.optimizer.raw.dtype == torch.float32 for level in opt.levels)
    assert all(param.dtype == dtype for param in model.parameters())
    assert abs(learned[1] - learned[0]) < 0.02 * learned[0]

    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict()}
    resumed_model = small_mlp(dtype=dtype)
    resumed_opt = rc.HyperOptimizer(resumed_model.parameters(), HALF_PRECISION_TOWERS[kind]())
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    for _ in range(5):
        assert train_step(model, opt, inputs, targets) == train_step(resumed_model, resumed_opt, inputs, targets)
    assert opt.hyperparameters() == resumed_opt.hyperparameters()


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
@pytest.mark.parametrize("kind", ["adam-sgd-sgd", "rmsprop-normalised", "tied-sgd"])
def test_a_model_and_its_optimizer_copied_mid_run_train_on_as_the_original(kind, clone):
    """copy.deepcopy or pickle of {model, optimizer} (torch.optim's
    __getstate__ would keep only param_groups and state): both go on with
    the same losses, learned values and history, and the copy's steps leave
    the original as it was (the last updates' graphs are not shared)."""
    inputs, targets = regression_data()
    model, opt = make_run(kind)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    pair = {"model": model, "opt": opt}
    twin = copy.deepcopy(pair) if clone == "deepcopy" else pickle.loads(pickle.dumps(pair))
    assert twin["opt"].param_groups[0]["params"][0] is next(twin["model"].parameters())
    theirs = [train_step(twin["model"], twin["opt"], inputs, targets) for _ in range(4)]
    ours = [train_step(model, opt, inputs, targets) for _ in range(4)]
    assert ours == theirs
    assert opt.hyperparameters() == twin["opt"].hyperparameters() and opt.history() == twin["opt"].history()


def mixed_precision_mlp(dtype_of_first_layer):
    """small_mlp in float32 with its first layer in another dtype, as models
    that keep some layers narrow are; the forward pass casts between them."""
    model = small_mlp(dtype=torch.float32)
    model[0].to(dtype_of_first_layer)
    return model


def mixed_step(model, opt, inputs, targets):
    opt.zero_grad()
    hidden = model[1](model[0](inputs.to(model[0].weight.dtype)).float())
    loss = torch.nn.functional.mse_loss(model[2](hidden), targets)
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_a_model_mixing_dtypes_trains_as_torch_optim_at_depth_zero_and_learns_above_it(family):
    """A bfloat16 layer beside float32 ones: at depth 0 recurse takes
    torch.optim's steps to the bit (torch.optim groups by dtype); a learned
    tower keeps each parameter in its dtype, learns its lr within 2% of an
    all-float32 run, and a checkpoint resumes exactly."""
    inputs, targets = regression_data(dtype=torch.float32)
    make = {"sgd": lambda: rc.SGD(0.05, momentum=0.9), "adam": lambda: rc.Adam(1e-2, eps=1e-4)}[family]
    reference = mixed_precision_mlp(torch.bfloat16)
    theirs_opt = (torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9) if family == "sgd"
                  else torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-4))
    model = mixed_precision_mlp(torch.bfloat16)
    opt = rc.HyperOptimizer(model.parameters(), make())
    for _ in range(10):
        assert mixed_step(model, opt, inputs, targets) == mixed_step(reference, theirs_opt, inputs, targets)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))

    learned = []
    for first_layer in (torch.float32, torch.bfloat16):
        model = mixed_precision_mlp(first_layer)
        tower = make()
        tower.hyper = rc.SGD(0.01, normalize="rms")
        opt = rc.HyperOptimizer(model.parameters(), tower)
        losses = [mixed_step(model, opt, inputs, targets) for _ in range(40)]
        assert opt.nonfinite_steps == 0 and losses[-1] < losses[0]
        learned.append(opt.hyperparameters()["0.lr"])
    assert [param.dtype for param in model.parameters()] == [torch.bfloat16] * 2 + [torch.float32] * 2
    assert opt.levels[0].optimizer.raw.dtype == torch.float32
    assert abs(learned[1] - learned[0]) < 0.02 * learned[0]
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict()}
    resumed_model = mixed_precision_mlp(torch.bfloat16)
    resumed_tower = make()
    resumed_tower.hyper = rc.SGD(0.01, normalize="rms")
    resumed = rc.HyperOptimizer(resumed_model.parameters(), resumed_tower)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["opt"])
    for _ in range(3):
        assert mixed_step(model, opt, inputs, targets) == mixed_step(resumed_model, resumed, inputs, targets)


def test_the_guard_finds_a_nan_in_any_dtype_of_a_mixed_model():
    model = mixed_precision_mlp(torch.bfloat16)
    opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.05, hyper=rc.SGD(1e-3)))
    before = [param.detach().clone() for param in model.parameters()]
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    model[0].weight.grad[0, 0] = float("nan")
    opt.step()
    assert opt.nonfinite_steps == 1 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_load_state_dict_rejects_a_different_tower():
    _, opt = make_run("adam-sgd-sgd")
    _, other = make_run("tied-sgd")
    with pytest.raises(ValueError, match="levels"):
        other.load_state_dict(opt.state_dict())


def test_model_stays_a_deep_copyable_leaf_module():
    import copy
    import pickle

    inputs, targets = regression_data()
    model, opt = make_run("adam-sgd-sgd")
    for _ in range(3):
        train_step(model, opt, inputs, targets)
    assert all(p.is_leaf and p.grad_fn is None for p in model.parameters())
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    for p, q, r in zip(model.parameters(), clone.parameters(), restored.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


HOST_TOWERS = {
    "sgd-momentum-rms": lambda: rc.stack(rc.SGD(0.05, momentum=0.5), rc.SGD(1e-3, normalize="rms"),
                                         rc.SGD(1e-3, momentum=0.5, nesterov=True, normalize="rms")),
    "sgd-rms-over-adam": lambda: rc.stack(rc.Adam(1e-2, eps=1e-3), rc.SGD(1e-3, normalize="rms"), rc.SGD(1e-4)),
    "adam-adam-adamw": lambda: rc.stack(rc.Adam(1e-2), rc.Adam(1e-3, normalize="rms"),
                                        rc.AdamW(1e-4, weight_decay=1e-2)),
    "rmsprop-between-host-levels": lambda: rc.stack(rc.SGD(0.05), rc.RMSprop(1e-3), rc.Adam(1e-3), rc.SGD(1e-4)),
    "clip-keeps-a-level-on-tensors": lambda: rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize=rc.transforms.Clip(1.0)),
                                                      rc.SGD(1e-3, normalize="rms")),
}


@pytest.mark.parametrize("kind", sorted(HOST_TOWERS))
def test_levels_stepped_in_host_floats_take_the_steps_tensor_levels_take(kind, monkeypatch):
    """Upper levels run as Python floats (HyperOptimizer's host levels); with
    that switched off every level runs on tensors. Same float64 run both ways."""
    import recurse.hyper

    inputs, targets = regression_data()
    runs = {}
    for host in (True, False):
        if not host:
            monkeypatch.setattr(recurse.hyper, "HOST_LEVEL_MAX_ENTRIES", -1)
        model = small_mlp()
        opt = rc.HyperOptimizer(model.parameters(), HOST_TOWERS[kind]())
        assert any(level.host for level in opt.levels) == host
        losses = [train_step(model, opt, inputs, targets) for _ in range(30)]
        runs[host] = losses, opt.hyperparameters(), torch.cat(opt.last_hypergradients[:-1])
    (host_losses, host_values, host_gradients), (losses, values, gradients) = runs[True], runs[False]
    assert host_losses == pytest.approx(losses, rel=1e-9)
    assert host_values == pytest.approx(values, rel=1e-9)
    torch.testing.assert_close(host_gradients, gradients, rtol=1e-8, atol=1e-14)


def test_raw_set_as_host_floats_reads_back_as_the_tensor_of_its_dtype_and_follows_in_place_edits():
    optimizer = rc.Adam(1e-3, hyper=rc.SGD(1e-4))
    optimizer.to("cpu", torch.float32)
    optimizer.set_raw_floats([0.1, -2.0, 3.0, 1e39])
    assert optimizer.raw.dtype == torch.float32
    assert optimizer.raw.tolist() == torch.tensor([0.1, -2.0, 3.0, 1e39], dtype=torch.float32).tolist()
    assert optimizer.raw_floats() == optimizer.raw.tolist()  # rounded as the tensor holds them
    optimizer.raw.mul_(2.0)  # an in-place edit of the tensor is what raw_floats reads next
    assert optimizer.raw_floats() == optimizer.raw.tolist() and optimizer.raw_floats()[1] == -4.0


def online_run(device: str) -> tuple[list[float], dict[str, float], torch.Tensor]:
    """A float64 run on ``device`` of a tower with host levels, a tensor level
    (RMSprop), kept gradients, a non-finite step the guard rejects and a
    state_dict round trip: the losses, the learned values, the model."""
    torch.manual_seed(0)
    inputs, targets = regression_data()
    inputs, targets = inputs.to(device), targets.to(device)
    model = small_mlp().to(device)

    def tower():
        return rc.stack(rc.Adam(1e-2, eps=1e-3), rc.RMSprop(1e-3), rc.Adam(1e-3, normalize="rms"), rc.SGD(1e-4))

    opt = rc.HyperOptimizer(model.parameters(), tower(), record_history=True)
    losses = [train_step(model, opt, inputs, targets) for _ in range(10)]
    opt.zero_grad()
    (model(inputs).sum() * float("nan")).backward()
    opt.step()  # rejected: nothing moves
    assert opt.nonfinite_steps == 1
    resumed = rc.HyperOptimizer(model.parameters(), tower(), record_history=True)
    resumed.load_state_dict(opt.state_dict())
    losses += [train_step(model, resumed, inputs, targets) for _ in range(10)]
    for level in resumed.levels:
        assert level.optimizer.raw.device.type == torch.device(device).type
    assert all(g is None or g.device.type == torch.device(device).type for g in resumed.last_hypergradients)
    return losses, resumed.hyperparameters(), torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("kind", ["adam-sgd-sgd", "rmsprop-normalised", "tied-sgd"])
def test_a_float32_checkpoint_resumes_a_float64_run_on_any_device(kind, device):
    """As torch.optim's load_state_dict casts its state: each tensor goes to
    the parameters' device, a floating one in the dtype of what it belongs
    to. The resumed float64 run then takes the float32 run's steps (to
    float32 precision); uncast, Adam's next dot product mixed the dtypes."""
    inputs, targets = regression_data(dtype=torch.float32)
    model, opt = make_run(kind, dtype=torch.float32)
    for _ in range(5):
        train_step(model, opt, inputs, targets)
    wide_model, wide_opt = make_run(kind, dtype=torch.float64, device=device)
    wide_model.load_state_dict(model.state_dict())
    wide_opt.load_state_dict(opt.state_dict())
    wide_inputs, wide_targets = inputs.to(device, torch.float64), targets.to(device, torch.float64)
    wide = [train_step(wide_model, wide_opt, wide_inputs, wide_targets) for _ in range(3)]
    narrow = [train_step(model, opt, inputs, targets) for _ in range(3)]
    assert wide == pytest.approx(narrow, rel=1e-6)
    assert wide_opt.hyperparameters()["0.lr"] == pytest.approx(opt.hyperparameters()["0.lr"], rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_online_engine_on_cuda_takes_the_steps_it_takes_on_the_cpu():
    cpu_losses, cpu_values, cpu_model = online_run("cpu")
    cuda_losses, cuda_values, cuda_model = online_run("cuda")
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-9)
    assert cuda_values == pytest.approx(cpu_values, rel=1e-9)
    torch.testing.assert_close(cuda_model, cpu_model, rtol=1e-9, atol=1e-12)


def test_one_description_builds_independent_optimizers():
    """A tower description is a recipe: two HyperOptimizers built from one
    instance learn apart, and the description keeps its starting values."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    tower = rc.stack(rc.SGD(0.1), rc.SGD(0.01, normalize="rms"))
    opt_a, opt_b = rc.HyperOptimizer(a.parameters(), tower), rc.HyperOptimizer(b.parameters(), tower)
    inputs, targets = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(20):
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(a(inputs), targets).backward()
        opt_a.step()
    assert opt_a.hyperparameters()["0.lr"] != pytest.approx(0.1, rel=1e-3)  # A learned
    fresh = rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), tower)
    assert opt_b.hyperparameters() == fresh.hyperparameters()  # B did not move
    assert tower.current_values()["lr"] == pytest.approx(0.1, rel=1e-15)  # nor did the recipe
    assert tower.raw.dtype == torch.float64  # (placing A's levels next to float32 parameters moved a copy)
    tied = rc.tower(rc.SGD(0.1, normalize="rms"), depth=2, tie=True)
    copy_a, copy_b = (rc.HyperOptimizer(model.parameters(), tied).levels[0].optimizer for model in (a, b))
    assert copy_a is not copy_b and copy_a.hyper is copy_a and copy_a.tied_depth == 2  # each copy stays tied


def test_a_knob_marked_learned_with_no_level_above_is_refused():
    """rc.Adam(1e-3, learn="lr") alone would train at 1e-3 and learn nothing, silently."""
    with pytest.raises(ValueError, match=r"rc.HyperOptimizer: level 0 \(rc.Adam\(lr=0.001.*\)\) marks \['lr'\] as "
                                         r"learned \(learn=\), but no optimizer above learns them"):
        rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), rc.Adam(1e-3, learn="lr"))
    with pytest.raises(ValueError, match=r"level 1 \(rc.SGD\(lr=0.01.*\)\) marks \['lr'\] as learned"):
        rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), rc.stack(rc.Adam(1e-3), rc.SGD(0.01, learn="lr")))
    # learn=() (nothing learned) and the default (learned only when a level above exists) stay as they were
    assert rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), rc.Adam(1e-3, learn=())).depth == 0
    assert rc.HyperOptimizer(torch.nn.Linear(4, 1).parameters(), rc.Adam(1e-3)).depth == 0
