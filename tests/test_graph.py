"""The optimization graph: validation errors name the nodes, exports round-trip,
the drawing of a tied tower is stable, per-group optimizers train."""

import copy
from pathlib import Path

import networkx as nx
import pytest
import torch

import recurse as rc
from recurse import graph as rg

GOLDEN = Path(__file__).parent / "golden"


def two_layer_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def tied_tower_graph():
    model = two_layer_model()
    # Three levels: Adam trains the model, an SGD tied over 2 levels learns Adam's lr and its own.
    tower = rc.stack(rc.Adam(1e-3, learn="lr"), rc.tower(rc.SGD(0.01), 2, tie=True))
    return rg.build({"model": model.parameters()}, {"adam": tower}, {"adam": "model"})


def test_a_tied_three_level_tower_draws_as_the_golden_file():
    dot = rg.to_dot(tied_tower_graph())
    assert dot == (GOLDEN / "tied_tower.dot").read_text()


def test_dot_and_json_exports_round_trip():
    graph = tied_tower_graph()

    def same(a, b):
        return nx.is_isomorphic(a, b, node_match=lambda x, y: x["kind"] == y["kind"],
                                edge_match=lambda x, y: x["relation"] == y["relation"])

    from_json = rg.from_json(rg.to_json(graph))
    assert same(graph, from_json) and sorted(from_json.nodes) == sorted(graph.nodes)
    assert from_json.nodes["adam.hyper"]["hyperparameters"] == ["lr"]
    from_dot = rg.from_dot(rg.to_dot(graph))
    assert same(graph, from_dot) and sorted(from_dot.nodes) == sorted(graph.nodes)


def test_schedule_steps_the_top_of_each_tower_first():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"adam": rc.Adam(1e-2, hyper=rc.SGD(1e-3, hyper=rc.SGD(1e-4))), "sgd": rc.SGD(0.1)},
                     {"adam": "hidden", "sgd": "out"})
    assert rg.schedule(graph) == ["adam/2", "adam/1", "adam", "sgd"]
    text = rg.describe(graph)
    assert "adam/1: rc.SGD(lr=0.001) steps adam.hyper (hyperparameters lr, beta1, beta2, eps)" in text
    assert "sgd: rc.SGD(lr=0.1) steps out (18 values in 2 tensors)" in text


def test_per_group_optimizers_train_each_group_with_its_own_rule():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"adam": rc.Adam(1e-2), "sgd": rc.SGD(0.1, momentum=0.9)}, {"adam": "hidden", "sgd": "out"})
    opt = rg.GraphOptimizer(graph)
    reference = two_layer_model()
    references = [torch.optim.Adam(reference[0].parameters(), lr=1e-2),
                  torch.optim.SGD(reference[2].parameters(), lr=0.1, momentum=0.9)]
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
        for each in references:
            each.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs), targets).backward()
        for each in references:
            each.step()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)
    assert set(opt.state_dict()) == {"adam", "sgd"}


def test_a_group_can_carry_its_own_tower():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"adam": rc.Adam(1e-2), "sgd": rc.tower(rc.SGD(0.1), 2, tie=True)}, {"adam": "hidden", "sgd": "out"})
    opt = rg.GraphOptimizer(graph)
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    values = opt.hyperparameters()
    assert values["adam:0.lr"] == 1e-2 and values["sgd:0.lr"] != 0.1


def test_a_graph_reports_each_nodes_hypergradients_and_history():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"adam": rc.Adam(1e-2), "sgd": rc.SGD(0.1, hyper=rc.SGD(1e-3))}, {"adam": "hidden", "sgd": "out"})
    opt = rg.GraphOptimizer(graph, record_history=True)
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    node = opt.optimizers["sgd"]
    assert opt.hypergradients() == {f"sgd:{key}": value for key, value in node.hypergradients().items()} != {}
    history = opt.history()
    assert set(history) == {"sgd:0.lr"} and len(history["sgd:0.lr"]) == 4
    assert history["sgd:0.lr"][-1] == pytest.approx(opt.hyperparameters()["sgd:0.lr"], rel=1e-6)


def test_a_newton_node_steps_from_the_closures_loss_beside_a_gradient_node():
    """Newton on the output layer (learning its lr), SGD on the hidden one,
    from one closure that returns the loss: each steps as it would alone
    from the same point."""
    model, reference = two_layer_model().double(), two_layer_model().double()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"newton": rc.Newton(0.5, damping=0.1, hyper=rc.SGD(1e-3)), "sgd": rc.SGD(0.1)},
                     {"newton": "out", "sgd": "hidden"})
    opt = rg.GraphOptimizer(graph)
    newton = rc.HyperOptimizer(reference[2].parameters(), rc.Newton(0.5, damping=0.1, hyper=rc.SGD(1e-3)))
    sgd = torch.optim.SGD(reference[0].parameters(), lr=0.1)
    inputs, targets = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for _ in range(4):
        opt.step(lambda: torch.nn.functional.mse_loss(model(inputs), targets))
        sgd.zero_grad()
        loss = torch.nn.functional.mse_loss(reference(inputs), targets)
        hidden_grads = torch.autograd.grad(loss, list(reference[0].parameters()), retain_graph=True)
        newton.step(lambda: loss)
        for param, grad in zip(reference[0].parameters(), hidden_grads):
            param.grad = grad
        sgd.step()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert opt.hyperparameters()["newton:0.lr"] != 0.5  # (its level above learned)
    with pytest.raises(ValueError, match=r"node 'newton' \(rc.Newton\(.*\)\) needs the loss; call step\(closure\)"):
        opt.step()


def test_two_newton_nodes_each_step_from_the_same_loss():
    """Every node's step is computed before any is taken, so two Newton
    nodes each take the step they would take alone from the same point."""
    model = two_layer_model().double()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"a": rc.Newton(0.5, damping=1.0), "b": rc.Newton(0.5, damping=1.0)},
                     {"a": "hidden", "b": "out"})
    opt = rg.GraphOptimizer(graph)
    inputs, targets = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for _ in range(3):
        start = copy.deepcopy(model)
        opt.step(lambda: torch.nn.functional.mse_loss(model(inputs), targets))
        expected = []
        for layer in (0, 2):  # that layer's Newton step alone, the other layer held where it started
            reference = copy.deepcopy(start)
            alone = rc.HyperOptimizer(reference[layer].parameters(), rc.Newton(0.5, damping=1.0))
            alone.step(lambda: torch.nn.functional.mse_loss(reference(inputs), targets))
            expected += list(reference[layer].parameters())
        for mine, theirs in zip(model.parameters(), expected):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert not any(torch.equal(a, b) for a, b in zip(start.parameters(), model.parameters()))


def _nan_in_the_hidden_layer(model):
    model.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(3, 4)), torch.randn(3, 2)).backward()
    model[0].weight.grad[0, 0] = float("nan")


def test_a_non_finite_gradient_in_one_node_skips_every_node(caplog):
    """All or nothing: the layer with finite gradients does not step either,
    one warning names the node, and every counter counts the step."""
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"a": rc.SGD(0.1, hyper=rc.SGD(1e-3)), "b": rc.Adam(1e-2)}, {"a": "hidden", "b": "out"})
    opt = rg.GraphOptimizer(graph)
    for _ in range(2):  # (so that level 1 has a hypergradient chain to drop)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(torch.randn(3, 4)), torch.randn(3, 2)).backward()
        opt.step()
    before = copy.deepcopy(model)
    lr_before = opt.hyperparameters()
    _nan_in_the_hidden_layer(model)
    opt.step()
    for mine, theirs in zip(model.parameters(), before.parameters()):
        assert torch.equal(mine, theirs)
    assert opt.hyperparameters() == lr_before
    assert opt.nonfinite_steps == 1 and [each.nonfinite_steps for each in opt.optimizers.values()] == [1, 1]
    assert "non-finite gradient in node 'a' at step 3; the step of every node was skipped" in caplog.text
    assert "rc.HyperOptimizer" not in caplog.text  # (one warning, the graph's)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(3, 4)), torch.randn(3, 2)).backward()
    opt.step()  # and training goes on
    assert all(not torch.equal(mine, theirs) for mine, theirs in zip(model.parameters(), before.parameters()))

    raising = rg.GraphOptimizer(graph, guard="raise")
    _nan_in_the_hidden_layer(model)
    before = copy.deepcopy(model)
    with pytest.raises(FloatingPointError, match="non-finite gradient in node 'a'"):
        raising.step()
    for mine, theirs in zip(model.parameters(), before.parameters()):
        assert torch.equal(mine, theirs)


def test_a_scheduler_schedules_each_node_and_a_copy_trains_on_as_the_original():
    """GraphOptimizer.param_groups: one group per node, showing its values;
    a LambdaLR with one schedule per group scales each node's lr (a learned
    one learns on under it); copy.deepcopy of the
    model with its GraphOptimizer trains on exactly as the original."""
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"adam": rc.Adam(1e-2), "sgd": rc.SGD(0.1, hyper=rc.SGD(1e-3))}, {"adam": "hidden", "sgd": "out"})
    opt = rg.GraphOptimizer(graph)
    assert [group["lr"] for group in opt.param_groups] == [1e-2, pytest.approx(0.1, rel=1e-6)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, [lambda k: 0.5 ** k, lambda k: 1.0])
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)

    def train(model, opt, scheduler=None):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        return loss.item()

    for _ in range(3):
        train(model, opt, scheduler)
    assert opt.hyperparameters()["adam:0.lr"] == 1e-2 * 0.5 ** 3
    learned = opt.hyperparameters()["sgd:0.lr"]  # (LambdaLR writes every group: a learned lr is scaled, not reset)
    assert opt.param_groups[1]["lr"] == 0.1 and learned != pytest.approx(0.1, rel=1e-9)
    train(model, opt)
    assert opt.hyperparameters()["sgd:0.lr"] != learned  # and it learns on
    twin = copy.deepcopy({"model": model, "opt": opt})
    assert [train(twin["model"], twin["opt"]) for _ in range(3)] == [train(model, opt) for _ in range(3)]
    assert twin["opt"].hyperparameters() == opt.hyperparameters()


def test_one_optimizer_stepping_two_groups_shares_one_state():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"shared": rc.SGD(0.1, hyper=rc.SGD(1e-3))}, {"shared": ["hidden", "out"]})
    opt = rg.GraphOptimizer(graph)
    assert list(opt.optimizers) == ["shared"] and len(opt.optimizers["shared"]._params) == 4


def test_a_group_stepped_by_two_optimizers_is_named():
    model = two_layer_model()
    with pytest.raises(rg.GraphError, match=r"group 'hidden' is stepped by 2 optimizers \['a', 'b'\]"):
        rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                 {"a": rc.SGD(0.1), "b": rc.SGD(0.1)}, {"a": ["hidden", "out"], "b": "hidden"})


def test_an_unreached_trainable_group_is_named():
    model = two_layer_model()
    with pytest.raises(rg.GraphError, match="trainable group 'out' is stepped by no optimizer"):
        rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()}, {"a": rc.SGD(0.1)},
                 {"a": "hidden"})


def test_a_cycle_that_is_not_a_declared_tie_is_named():
    model = two_layer_model()
    groups = {"hidden": model[0].parameters(), "out": model[2].parameters()}
    optimizers = {"a": "learned optimizer A", "b": "learned optimizer B"}
    steps = {"a": ["hidden", "b.hyper"], "b": ["out", "a.hyper"]}
    with pytest.raises(rg.GraphError, match=r"cycle .*a.* is not a declared tie \(untied optimizers on it: \['a', 'b'\]\)"):
        rg.build(groups, optimizers, steps)
    graph = rg.build(groups, optimizers, steps, ties=["a", "b"])  # declared: allowed
    assert rg.schedule(graph) == ["a", "b"]


def test_a_group_on_the_wrong_device_or_dtype_is_named():
    model = two_layer_model()
    with pytest.raises(rg.GraphError, match="group 'out' holds a float64 tensor on cpu; expected float32 on cpu"):
        rg.build({"hidden": model[0].parameters(), "out": [torch.zeros(3, dtype=torch.float64, requires_grad=True)]},
                 {"a": rc.SGD(0.1)}, {"a": ["hidden", "out"]})
    with pytest.raises(rg.GraphError, match="group 'hidden' holds a float32 tensor on cpu; expected float64 on cpu"):
        rg.build({"hidden": model[0].parameters()}, {"a": rc.SGD(0.1)}, {"a": "hidden"}, dtype=torch.float64)


def test_unknown_names_in_steps_are_named():
    model = two_layer_model()
    with pytest.raises(rg.GraphError, match=r"steps names optimizer 'c', which is not among optimizers \['a'\]"):
        rg.build({"hidden": model[0].parameters()}, {"a": rc.SGD(0.1)}, {"a": "hidden", "c": "hidden"})
    with pytest.raises(rg.GraphError, match="optimizer 'a' steps 'fc', which is neither a group"):
        rg.build({"hidden": model[0].parameters()}, {"a": rc.SGD(0.1)}, {"a": ["hidden", "fc"]})


def test_graphs_of_the_two_engines():
    model = two_layer_model()
    online = rc.HyperOptimizer(model.parameters(), rc.stack(rc.Adam(1e-3), rc.SGD(1e-2), rc.SGD(1e-3)))
    assert rg.schedule(rg.from_hyper_optimizer(online)) == ["level0/2", "level0/1", "level0"]
    trainer = rc.MetaTrainer([torch.zeros(3)], lambda p, k: p[0].square().sum(), [rc.SGD(0.1), rc.Adam(0.01)],
                             unroll_steps=[5])
    graph = rg.from_meta_trainer(trainer)
    assert rg.schedule(graph) == ["level1", "level0"]
    assert "from 5-step unrolls" in graph.nodes["level1"]["label"]


def test_a_node_that_steps_another_nodes_hyperparameters_learns_them():
    """The edge 'meta steps adam.hyper' runs as drawn: meta is the level above adam."""
    model = two_layer_model()
    graph = rg.build({"w": model.parameters()},
                     {"adam": rc.Adam(1e-3, learn="lr"), "meta": rc.SGD(0.05, normalize="rms")},
                     {"adam": "w", "meta": "adam.hyper"})
    assert "meta: rc.SGD(lr=0.05) steps adam.hyper (hyperparameters lr)" in rg.describe(graph)
    opt = rg.GraphOptimizer(graph)
    inputs, targets = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 2)
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    assert opt.optimizers["adam"].depth == 1 and opt.hyperparameters()["adam:1.lr"] == 0.05
    assert opt.hyperparameters()["adam:0.lr"] != pytest.approx(1e-3, rel=1e-3)
    # the same tower written with hyper= learns the very same values
    model_again = two_layer_model()
    written = rc.HyperOptimizer(model_again.parameters(), rc.Adam(1e-3, learn="lr", hyper=rc.SGD(0.05, normalize="rms")))
    for _ in range(50):
        written.zero_grad()
        torch.nn.functional.mse_loss(model_again(inputs), targets).backward()
        written.step()
    assert written.hyperparameters()["0.lr"] == opt.hyperparameters()["adam:0.lr"]


@pytest.mark.parametrize("optimizers,steps,message", [
    ({"a": rc.SGD(0.1), "b": rc.SGD(0.1), "meta": rc.SGD(0.01)}, {"a": "hidden", "b": "out", "meta": ["a.hyper", "b.hyper"]},
     r"optimizer 'meta' steps \['a.hyper', 'b.hyper'\]: an optimizer steps model groups or the hyperparameters of "
     r"one optimizer, not both or several"),
    ({"a": rc.SGD(0.1), "b": rc.SGD(0.1)}, {"a": "hidden", "b": ["out", "a.hyper"]},
     r"optimizer 'b' steps \['a.hyper', 'out'\]: an optimizer steps model groups or the hyperparameters of one"),
    ({"a": rc.SGD(0.1, learn=()), "b": rc.SGD(0.1), "meta": rc.SGD(0.01)}, {"a": "hidden", "b": "out", "meta": "a.hyper"},
     r"optimizer 'meta' steps 'a.hyper', but 'a' has nothing to learn \(learn=\(\)\)"),
    ({"a": rc.SGD(0.1), "b": rc.SGD(0.1)}, {"a": ["hidden", "out", "a.hyper"], "b": []},
     r"optimizer 'a' steps its own hyperparameters 'a.hyper' but was not built tied"),
    ({"a": rc.SGD(0.1), "idle": rc.SGD(0.1)}, {"a": ["hidden", "out"]},
     r"optimizer 'idle' steps nothing, which reaches no model group: it would never run"),
], ids=["one node over two", "model and hyperparameters", "nothing to learn", "untied self-step", "never runs"])
def test_an_edge_that_cannot_run_is_refused_when_the_graph_is_built(optimizers, steps, message):
    model = two_layer_model()
    with pytest.raises(rg.GraphError, match=message):
        rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()}, optimizers, steps,
                 ties=["a"] if "a.hyper" in steps.get("a", []) else ())


def test_a_per_group_graph_refuses_a_node_over_a_groups_hyperparameters():
    model = two_layer_model()
    graph = rg.build({"hidden": model[0].parameters(), "out": model[2].parameters()},
                     {"a": rc.SGD(0.1), "b": rc.SGD(0.1), "meta": rc.SGD(0.01)},
                     {"a": "hidden", "b": "out", "meta": "a.hyper"})
    with pytest.raises(rg.GraphError, match=r"\['meta'\] step 'a.hyper', but a PerGroup runs no levels above"):
        rg.per_group(graph)


def test_tower_of_refuses_a_hyperparameter_group_with_two_steppers():
    model = two_layer_model()
    graph = rg.build({"w": model.parameters()}, {"adam": rc.Adam(1e-3, learn="lr"), "m1": rc.SGD(0.05),
                                                 "m2": rc.SGD(0.01)},
                     {"adam": "w", "m1": "adam.hyper", "m2": "adam.hyper"}, validate_graph=False)
    with pytest.raises(rg.GraphError, match=r"group 'adam.hyper' is stepped by 2 optimizers \['m1', 'm2'\]"):
        rg.tower_of(graph, "adam")
