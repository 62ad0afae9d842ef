"""rc.PerGroup: one optimizer per parameter group (as L2L's separate LSTMs),
against the groups stepped one by one, closed-form hypergradients and float64
finite differences; built from an optimization graph."""

import pytest
import torch

import recurse as rc


def mlp_params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 3), (6,), (2, 6), (2,)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def mlp_loss(params, inputs, targets):
    hidden = torch.tanh(inputs @ params[0].T + params[1])
    return (hidden @ params[2].T + params[3] - targets).square().mean()


def data(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 3, generator=generator, dtype=torch.float64), \
        torch.randn(32, 2, generator=generator, dtype=torch.float64)


def test_each_group_is_stepped_exactly_as_its_optimizer_alone_would():
    params, grads = mlp_params(0), mlp_params(1)
    weights, biases = rc.Adam(0.01), rc.SGD(0.1, momentum=0.9)
    grouped = rc.PerGroup({"weights": (rc.Adam(0.01), [0, 2]), "biases": (rc.SGD(0.1, momentum=0.9), [1, 3])})
    state = grouped.init(params)
    alone = {"weights": weights.init([params[0], params[2]]), "biases": biases.init([params[1], params[3]])}
    for _ in range(3):
        new, state = grouped.step(params, grads, state)
        new_w, alone["weights"] = weights.step([params[0], params[2]], [grads[0], grads[2]], alone["weights"])
        new_b, alone["biases"] = biases.step([params[1], params[3]], [grads[1], grads[3]], alone["biases"])
        assert all(torch.equal(a, b) for a, b in zip(new, [new_w[0], new_b[0], new_w[1], new_b[1]]))
        params = new


def test_online_hypergradients_are_per_group_dot_products_of_consecutive_gradients():
    """SGD over SGD per group: d L_t / d lr_group = -g_t[group] . g_{t-1}[group]."""
    inputs, targets = data()
    params = [p.clone().requires_grad_() for p in mlp_params()]
    opt = rc.HyperOptimizer(params, rc.PerGroup({"w": (rc.SGD(0.05), [0, 2]), "b": (rc.SGD(0.05), [1, 3])},
                                                hyper=rc.SGD(1e-3)))
    previous = None
    for _ in range(4):
        opt.zero_grad()
        mlp_loss(params, inputs, targets).backward()
        grads = [p.grad.clone() for p in params]
        opt.step()
        if previous is not None:
            for group, indices in (("w", [0, 2]), ("b", [1, 3])):
                expected = -sum((grads[i] * previous[i]).sum() for i in indices).item()
                assert opt.hypergradients()[f"0.{group}.lr"] == pytest.approx(expected, rel=1e-10)
        previous = grads
    assert set(opt.hyperparameters()) >= {"0.w.lr", "0.b.lr", "1.lr"}
    assert opt.hyperparameters()["0.w.lr"] != opt.hyperparameters()["0.b.lr"]


def two_lstm_graph(params):
    return rc.graph.build({"weights": [params[0], params[2]], "biases": [params[1], params[3]]},
                          {"lstm_w": rc.LSTMOptimizer(hidden_size=4, seed=0),
                           "lstm_b": rc.LSTMOptimizer(hidden_size=4, seed=1)},
                          {"lstm_w": "weights", "lstm_b": "biases"})


def test_two_lstms_from_a_graph_meta_train_together_and_their_meta_gradient_matches_finite_differences():
    inputs, targets = data()
    params, grouped = rc.graph.per_group(two_lstm_graph(mlp_params()))
    assert set(grouped.groups) == {"lstm_w", "lstm_b"}
    assert grouped.groups["lstm_w"][1] == [2, 3] and grouped.groups["lstm_b"][1] == [0, 1]  # biases sort first

    def objective(values, step):
        return mlp_loss([values[2], values[0], values[3], values[1]], inputs, targets)

    def meta_loss(raw):
        return rc.unroll(objective, params, grouped, steps=4, raw=raw, meta_loss="sum").meta_loss

    raw = grouped.raw.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(meta_loss(raw), raw)
    direction = torch.randn(raw.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = 1e-4
    with torch.no_grad():
        values = [meta_loss(grouped.raw + shift * step * direction).item() for shift in (-2, -1, 1, 2)]
    finite_difference = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * step)
    assert (gradient @ direction).item() == pytest.approx(finite_difference, rel=1e-6)

    trainer = rc.MetaTrainer(params, objective, [grouped, rc.Adam(1e-2)], unroll_steps=[5], meta_loss="sum")
    start = {name: optimizer.raw.clone() for name, (optimizer, _) in grouped.groups.items()}
    for _ in range(3):
        trainer.meta_step()
    for name, (optimizer, _) in grouped.groups.items():
        assert not torch.equal(optimizer.raw, start[name]), f"{name} did not learn"
    assert set(trainer.hyperparameters()) == {"0.lstm_w.weights.rms", "0.lstm_b.weights.rms", "1.lr", "1.beta1",
                                              "1.beta2", "1.eps", "1.weight_decay"}


def test_a_group_value_the_parameters_dtype_cannot_hold_is_refused_before_any_group_moves():
    """place_next_to checks every value first; a PerGroup's values are its groups'."""
    sgd, adam = rc.SGD(0.1), rc.Adam(1e-3)  # Adam's eps = 1e-8 rounds to 0 in float16
    params = [torch.zeros(2, dtype=torch.float16, requires_grad=True) for _ in range(2)]
    with pytest.raises(ValueError, match=r"rc.Adam: eps = 1e-08 rounds to 0 in torch.float16"):
        rc.HyperOptimizer(params, rc.PerGroup({"a": (sgd, [0]), "b": (adam, [1])}))
    assert sgd.params_dtype == torch.float64 and sgd.raw.dtype == torch.float64  # (as built: nothing moved)


@pytest.mark.parametrize("above", ["sgd", "rmsprop"], ids=["host-level-above", "tensor-level-above"])
def test_groups_whose_closed_forms_save_what_they_need_keep_no_inputs_and_resume_exactly(above):
    """Adam learning its lr and plain SGD each save their product's lists
    alone (rc.SavedProduct), so the PerGroup's is one too: the engine keeps
    neither the parameters nor the state of the last step, and a run
    resumed from a checkpoint goes on bit for bit. (An SGD level above steps
    the four learned lrs in Python floats, an RMSprop level as a tensor.)"""
    import copy

    inputs, targets = data()

    def build(start):
        params = [p.clone().requires_grad_() for p in start]
        level = rc.SGD(0.02, normalize="rms") if above == "sgd" else rc.RMSprop(0.01)
        grouped = rc.PerGroup({"weights": (rc.Adam(0.01, learn="lr"), [0, 2]), "biases": (rc.SGD(0.1), [1, 3])},
                              hyper=level)
        return params, rc.HyperOptimizer(params, grouped)

    def run(params, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            mlp_loss(params, inputs, targets).backward()
            opt.step()

    params, opt = build(mlp_params())
    run(params, opt, 3)
    record = opt.levels[0].last_update
    assert record.params is None and record.state is None and record.saved is not None
    snapshot = copy.deepcopy(([p.detach() for p in params], opt.state_dict()))
    run(params, opt, 3)
    resumed_params, resumed = build(snapshot[0])
    resumed.load_state_dict(snapshot[1])
    run(resumed_params, resumed, 3)
    assert resumed.hyperparameters() == opt.hyperparameters()
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, params))


def per_tensor_run(steps, opt=None, model=None, start=0):
    """A small MLP whose every tensor learns its own lr (the default tower)."""
    if model is None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    opt = opt or rc.HyperOptimizer(rc.per_tensor(model.named_parameters()))
    inputs, targets = data()
    for _ in range(start, start + steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    return model, opt


def test_per_tensor_groups_each_learn_their_own_lr_and_resume_bit_for_bit():
    model, opt = per_tensor_run(20)
    assert [group["param_names"] for group in opt.param_groups] == [["0.weight"], ["0.bias"], ["2.weight"],
                                                                    ["2.bias"]]
    lrs = [opt.hyperparameters()[f"0.group{index}.lr"] for index in range(4)]
    assert len(set(lrs)) == 4 and all(lr != 1e-3 for lr in lrs)  # (each moved, each its own way)
    saved_model, saved = per_tensor_run(10)
    resumed_model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    resumed_model.load_state_dict(saved_model.state_dict())
    resumed = rc.HyperOptimizer(rc.per_tensor(resumed_model.named_parameters()))
    resumed.load_state_dict(saved.state_dict())
    per_tensor_run(10, resumed, resumed_model, start=10)
    assert resumed.hyperparameters() == opt.hyperparameters()
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), model.parameters()))


def test_a_scheduler_scales_each_tensor_s_learned_lr_by_its_own_factor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    opt = rc.HyperOptimizer(rc.per_tensor([{"params": model[0].parameters()},
                                           {"params": model[2].parameters(), "weight_decay": 0.0}]))
    assert [group["weight_decay"] for group in opt.param_groups] == [0.01, 0.01, 0.0, 0.0]
    factors = [1.0, 0.5, 0.25, 0.0]
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, [lambda step, f=f: f for f in factors])
    frozen = model[2].bias.detach().clone()
    per_tensor_run(5, opt, model)
    schedule.step()
    learned = [opt.hyperparameters()[f"0.group{index}.lr"] for index in range(4)]
    assert opt.group_lrs() == pytest.approx([lr * f for lr, f in zip(learned, factors)], rel=1e-12)
    assert torch.equal(model[2].bias, frozen)  # (a factor of 0 from the first step: that tensor never moved)


@pytest.mark.parametrize("params, error, message", [
    (torch.zeros(2, requires_grad=True), TypeError, "params must be an iterable of tensors, got a single tensor"),
    ([], ValueError, "got an empty parameter list"),
    ([{"lr": 0.1}], TypeError, r"param groups \(dicts with 'params'\), got builtins.dict at position 0"),
    ([{"params": [torch.zeros(2)]}, torch.zeros(3)], TypeError, r"got torch.Tensor at position 1 \(not a mixture"),
])
def test_per_tensor_refuses_what_is_not_parameters(params, error, message):
    with pytest.raises(error, match=message):
        rc.per_tensor(params)
