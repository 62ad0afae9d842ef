"""The optimization graph: who optimizes whom, as a ``networkx.DiGraph``.

Nodes are parameter groups (``kind="group"``: model layers or any named
subset, an optimizer's hyperparameters) and optimizers (``kind="optimizer"``).
An edge optimizer -> group means "steps"; an edge from an optimizer's
hyperparameter group to that optimizer means "configures". A tower
``rc.SGD(0.1, hyper=rc.SGD(1e-3))`` stepping group ``model`` is::

    model/1 -> model/0.hyper -> model/0 -> model

so the topological order is the schedule (the top of a tower steps first, as
the online engine does). A cycle is an error unless every optimizer on it is
declared tied (an optimizer that steps its own hyperparameters, built with
``rc.tower(opt, depth, tie=True)``).

    graph = rc.graph.build(groups={"conv": conv.parameters(), "fc": fc.parameters()},
                           optimizers={"conv_opt": rc.Adam(1e-3, hyper=rc.SGD(1e-2)), "fc_opt": rc.SGD(0.1)},
                           steps={"conv_opt": "conv", "fc_opt": "fc"})
    print(rc.graph.describe(graph)); opt = rc.graph.GraphOptimizer(graph)

``GraphOptimizer`` runs the graph online; ``per_group(graph)`` turns it into
one ``rc.PerGroup`` optimizer for ``rc.MetaTrainer`` (e.g. two LSTMs, one
for weights and one for biases, meta-trained together).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Callable, Iterable, Mapping, Sequence

import networkx as nx
import torch
from torch import Tensor

from recurse import plan
from recurse.hyper import CopiesWhole, HyperOptimizer, fill_gradients, log_skipped_step
from recurse.optim.base import Optimizer

GROUP, OPTIMIZER = "group", "optimizer"
STEPS, CONFIGURES = "steps", "configures"


class GraphError(ValueError):
    """An optimization graph that cannot be run; the message names the nodes.

    >>> rc.graph.build(groups={"weight": [model.weight], "bias": [model.bias]},
    ...                optimizers={"sgd": rc.SGD(0.1)}, steps={"sgd": "weight"})
    Traceback (most recent call last):
    ...
    recurse.graph.GraphError: trainable group 'bias' is stepped by no optimizer
    """


def hyper_group(optimizer_name: str) -> str:
    """Name of the group holding the hyperparameters of ``optimizer_name``.

    >>> rc.graph.hyper_group("adam")
    'adam.hyper'
    """
    return f"{optimizer_name}.hyper"


def build(groups: Mapping[str, Iterable[Tensor]], optimizers: Mapping[str, Any],
          steps: Mapping[str, str | Sequence[str]], *, ties: Iterable[str] = (), device=None,
          dtype: torch.dtype | None = None, validate_graph: bool = True) -> nx.DiGraph:
    """Build (and validate) the graph.

    ``groups``: name -> parameters. ``optimizers``: name -> an rc.Optimizer
    (its ``hyper=`` chain is added as nodes ``name/1``, ``name/2``, ...) or
    any label, for a graph that is only drawn. ``steps``: optimizer name ->
    the group(s) it steps; ``"<optimizer>.hyper"`` names an optimizer's
    hyperparameters. ``ties``: optimizers allowed on a cycle. ``device`` and
    ``dtype``: what every group must be on (default: the first group's).

    >>> graph = rc.graph.build(groups={"weight": [model.weight], "bias": [model.bias]},
    ...                        optimizers={"adam": rc.Adam(1e-3, hyper=rc.SGD(1e-4)), "sgd": rc.SGD(0.1)},
    ...                        steps={"adam": "weight", "sgd": "bias"})
    >>> print(rc.graph.describe(graph))
    adam/1: rc.SGD(lr=0.0001) steps adam.hyper (hyperparameters lr, beta1, beta2, eps)
    adam: rc.Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08) steps weight (4 values in 1 tensor)
    sgd: rc.SGD(lr=0.1) steps bias (1 value in 1 tensor)
    """
    graph = nx.DiGraph()
    owner: dict[int, str] = {}
    for name, params in groups.items():
        params = list(params)
        for param in params:
            if owner.setdefault(id(param), name) != name:
                raise GraphError(f"a tensor of shape {tuple(param.shape)} is in groups {owner[id(param)]!r} and "
                                 f"{name!r}; each parameter belongs to one group")
        graph.add_node(name, kind=GROUP, params=params, **_group_facts(params))
    ties = set(ties)
    for name, optimizer in optimizers.items():
        _add_optimizer(graph, name, optimizer, ties)
    for name, targets in steps.items():
        if name not in optimizers:
            raise GraphError(f"steps names optimizer {name!r}, which is not among optimizers {sorted(optimizers)}")
        for target in [targets] if isinstance(targets, str) else list(targets):
            if target not in graph:
                owner = target[: -len(".hyper")] if target.endswith(".hyper") else None
                if owner is None or graph.nodes.get(owner, {}).get("kind") != OPTIMIZER:
                    raise GraphError(f"optimizer {name!r} steps {target!r}, which is neither a group "
                                     f"{sorted(groups)} nor '<optimizer>.hyper'")
                _add_hyper_group(graph, owner)
            graph.add_edge(name, target, relation=STEPS)
    graph.graph["ties"] = sorted(ties)
    if validate_graph:
        validate(graph, device=device, dtype=dtype)
    return graph


def _label(optimizer: Any) -> str:
    """``rc.SGD(lr=0.1)``: the optimizer and its non-zero values, without its tower."""
    if not isinstance(optimizer, Optimizer):
        return str(optimizer)
    values = ", ".join(f"{k}={v:g}" for k, v in optimizer.current_values().items() if v != 0)
    return f"rc.{type(optimizer).__name__}({values})"


def _add_optimizer(graph: nx.DiGraph, name: str, optimizer: Any, ties: set[str]) -> None:
    graph.add_node(name, kind=OPTIMIZER, label=_label(optimizer),
                   optimizer=optimizer if isinstance(optimizer, Optimizer) else None)
    if not isinstance(optimizer, Optimizer) or optimizer.hyper is None:
        return
    _add_hyper_group(graph, name)
    if optimizer.hyper is optimizer:  # tied: it steps its own hyperparameters
        graph.add_edge(name, hyper_group(name), relation=STEPS)
        graph.nodes[name]["label"] += f", tied over {optimizer.tied_depth} levels"
        ties.add(name)
        return
    upper = _next_level_name(name)
    _add_optimizer(graph, upper, optimizer.hyper, ties)
    graph.add_edge(upper, hyper_group(name), relation=STEPS)


def _next_level_name(name: str) -> str:
    base, _, level = name.rpartition("/")
    return f"{base}/{int(level) + 1}" if base and level.isdigit() else f"{name}/1"


def _add_hyper_group(graph: nx.DiGraph, owner: str) -> None:
    name = hyper_group(owner)
    if name in graph:
        return
    optimizer = graph.nodes[owner].get("optimizer")
    learnable = list(optimizer.learnable) if optimizer is not None else []
    graph.add_node(name, kind=GROUP, params=[], hyperparameters=learnable,
                   numel=0 if optimizer is None else optimizer.raw.numel(), shapes=[],
                   device=None, dtype=None)
    graph.add_edge(name, owner, relation=CONFIGURES)


def _group_facts(params: list[Tensor]) -> dict[str, Any]:
    first = params[0] if params else None
    return {"numel": sum(p.numel() for p in params), "shapes": [list(p.shape) for p in params],
            "device": None if first is None else str(first.device),
            "dtype": None if first is None else str(first.dtype).replace("torch.", "")}


def validate(graph: nx.DiGraph, *, device=None, dtype: torch.dtype | None = None) -> None:
    """Raise :class:`GraphError` naming the nodes of the first problem found.

    >>> graph = rc.graph.build(groups={"weight": [model.weight], "bias": [model.bias]},
    ...                        optimizers={"sgd": rc.SGD(0.1)}, steps={"sgd": "weight"}, validate_graph=False)
    >>> rc.graph.validate(graph)
    Traceback (most recent call last):
    ...
    recurse.graph.GraphError: trainable group 'bias' is stepped by no optimizer
    """
    for node, data in graph.nodes(data=True):
        if data["kind"] != GROUP:
            continue
        stepped_by = sorted(u for u, _, r in graph.in_edges(node, data="relation") if r == STEPS)
        if len(stepped_by) > 1:
            raise GraphError(f"group {node!r} is stepped by {len(stepped_by)} optimizers {stepped_by}; "
                             "give each group exactly one")
        trainable = any(p.requires_grad for p in data.get("params", []))
        if trainable and not stepped_by:
            raise GraphError(f"trainable group {node!r} is stepped by no optimizer")
    ties = set(graph.graph.get("ties", []))
    for cycle in nx.simple_cycles(graph):
        optimizers = [node for node in cycle if graph.nodes[node]["kind"] == OPTIMIZER]
        if not set(optimizers) <= ties:
            raise GraphError(f"cycle {' -> '.join(cycle + cycle[:1])} is not a declared tie "
                             f"(untied optimizers on it: {sorted(set(optimizers) - ties)})")
    _check_runnable(graph)
    _check_devices(graph, device, dtype)


def _check_runnable(graph: nx.DiGraph) -> None:
    """Refuse, naming it, an edge the engines could not run as drawn: an
    optimizer node that steps the hyperparameters of several optimizers, or
    of one and a model group too; one that steps hyperparameters with
    nothing to learn; one stepping its own without being built tied
    (``rc.tower(opt, depth, tie=True)``); and a node whose steps never reach
    a model group (it would never run). Nodes that hold only a label (a
    graph that is drawn, never run) are left alone."""
    model_groups = {node for node, data in graph.nodes(data=True) if data["kind"] == GROUP and data.get("params")}
    for name, data in graph.nodes(data=True):
        optimizer = data.get("optimizer")
        if data["kind"] != OPTIMIZER or optimizer is None:
            continue
        stepped = sorted(group for _, group, relation in graph.out_edges(name, data="relation") if relation == STEPS)
        own = hyper_group(name)
        hyper_groups = [group for group in stepped if group != own and "hyperparameters" in graph.nodes[group]]
        if len(hyper_groups) > 1 or (hyper_groups and len(stepped) > len(hyper_groups) + (own in stepped)):
            raise GraphError(f"optimizer {name!r} steps {stepped}: an optimizer steps model groups or the "
                             "hyperparameters of one optimizer, not both or several; give each its own")
        for group in hyper_groups:
            owner = next(iter(graph.successors(group)))
            if graph.nodes[owner].get("optimizer") is not None and not graph.nodes[group]["hyperparameters"]:
                raise GraphError(f"optimizer {name!r} steps {group!r}, but {owner!r} has nothing to learn (learn=())")
        if own in stepped and optimizer.hyper is not optimizer:
            raise GraphError(f"optimizer {name!r} steps its own hyperparameters {own!r} but was not built tied; "
                             "build it with rc.tower(opt, depth, tie=True)")
        if model_groups and not any(nx.has_path(graph, name, group) for group in model_groups):
            raise GraphError(f"optimizer {name!r} steps {stepped or 'nothing'}, which reaches no model group: "
                             "it would never run")


def tower_of(graph: nx.DiGraph, name: str) -> Optimizer:
    """The tower the graph draws for optimizer node ``name``, as one
    description (a copy; the graph's optimizers are left as they are): its
    optimizer and its ``hyper=`` chain, with the node that steps the top's
    hyperparameters through ``steps`` (``"<node>.hyper"``) as the level
    above, and so on up. What :class:`GraphOptimizer` runs for the node.

    >>> graph = rc.graph.build(groups={"w": model.parameters()},
    ...                        optimizers={"adam": rc.Adam(1e-3, learn="lr"), "meta": rc.SGD(0.05, normalize="rms")},
    ...                        steps={"adam": "w", "meta": "adam.hyper"})
    >>> rc.graph.tower_of(graph, "adam")
    rc.Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0, hyper=rc.SGD(lr=0.05, momentum=0, dampening=0, weight_decay=0))
    """
    optimizer = graph.nodes[name].get("optimizer")
    if optimizer is None:
        raise GraphError(f"optimizer node {name!r} holds no rc.Optimizer (it is only a label: "
                         f"{graph.nodes[name].get('label')!r})")
    optimizer = plan.instantiate(optimizer)
    top, top_name = optimizer, name
    while top.hyper is not None and top.hyper is not top:
        top, top_name = top.hyper, _next_level_name(top_name)
    if top.hyper is None:
        steppers = [node for node, _ in graph.in_edges(hyper_group(top_name)) if node != top_name] \
            if hyper_group(top_name) in graph else []
        if len(steppers) > 1:
            raise GraphError(f"group {hyper_group(top_name)!r} is stepped by {len(steppers)} optimizers "
                             f"{sorted(steppers)}; give each group exactly one")
        if steppers:
            top.hyper = tower_of(graph, steppers[0])
    return optimizer


def _check_devices(graph: nx.DiGraph, device, dtype) -> None:
    groups = [(n, d) for n, d in graph.nodes(data=True) if d["kind"] == GROUP and d.get("params")]
    if not groups:
        return
    expected_device = str(torch.device(device)) if device is not None else groups[0][1]["device"]
    expected_dtype = str(dtype).replace("torch.", "") if dtype is not None else groups[0][1]["dtype"]
    for name, data in groups:
        for param in data["params"]:
            found_device, found_dtype = str(param.device), str(param.dtype).replace("torch.", "")
            if (found_device, found_dtype) != (expected_device, expected_dtype):
                raise GraphError(f"group {name!r} holds a {found_dtype} tensor on {found_device}; expected "
                                 f"{expected_dtype} on {expected_device}")


def schedule(graph: nx.DiGraph) -> list[str]:
    """Optimizers in the order they step: topological order, with the steps of
    tied optimizers on each other's (or their own) hyperparameters removed.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> rc.graph.schedule(graph)                    # the top of the tower steps first
    ['level0/1', 'level0']
    """
    ties = set(graph.graph.get("ties", []))
    tie_edges = {(u, hyper_group(owner)) for u in ties for owner in ties}
    acyclic = nx.DiGraph(edge for edge in graph.edges if edge not in tie_edges)
    acyclic.add_nodes_from(graph.nodes)
    return [node for node in nx.lexicographical_topological_sort(acyclic) if graph.nodes[node]["kind"] == OPTIMIZER]


def _count(number: int, noun: str) -> str:
    """``1 value``, ``5 values``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def describe(graph: nx.DiGraph) -> str:
    """One line per optimizer, in schedule order: what it is and what it steps.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> print(rc.graph.describe(graph))
    level0/1: rc.SGD(lr=0.001) steps level0.hyper (hyperparameters lr)
    level0: rc.SGD(lr=0.1) steps model (5 values in 2 tensors)
    """
    lines = []
    for name in schedule(graph):
        targets = []
        for _, group in graph.out_edges(name):
            data = graph.nodes[group]
            size = f"hyperparameters {', '.join(data['hyperparameters'])}" \
                if "hyperparameters" in data else f"{_count(data['numel'], 'value')} in " \
                                                  f"{_count(len(data['shapes']), 'tensor')}"
            targets.append(f"{group} ({size})")
        lines.append(f"{name}: {graph.nodes[name]['label']} steps {', '.join(sorted(targets)) or 'nothing'}")
    return "\n".join(lines)


def _portable(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph without tensors and optimizer objects (what exports keep)."""
    portable = nx.DiGraph()
    portable.graph.update(graph.graph)
    for node, data in graph.nodes(data=True):
        portable.add_node(node, **{k: v for k, v in data.items() if k not in ("params", "optimizer")})
    portable.add_edges_from(graph.edges(data=True))
    return portable


def to_json(graph: nx.DiGraph) -> str:
    """Node-link JSON (``networkx.node_link_data``), tensors and objects left out.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> import json; sorted(json.loads(rc.graph.to_json(graph)))
    ['directed', 'edges', 'graph', 'multigraph', 'nodes']
    """
    return json.dumps(nx.node_link_data(_portable(graph), edges="edges"), indent=1, sort_keys=True)


def from_json(text: str) -> nx.DiGraph:
    """The graph written by :func:`to_json` (for drawing and inspection; no tensors).

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> sorted(rc.graph.from_json(rc.graph.to_json(graph)).nodes)
    ['level0', 'level0.hyper', 'level0/1', 'model']
    """
    return nx.node_link_graph(json.loads(text), edges="edges")


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text (via ``networkx.nx_pydot``): groups are boxes,
    optimizers ellipses, an optimizer's step of its own hyperparameters dashed.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> rc.graph.to_dot(graph).startswith("strict digraph")
    True
    """
    ties = set(graph.graph.get("ties", []))
    drawing = nx.DiGraph()
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        count = data.get("numel", 0)
        detail = f"{count} value{'' if count == 1 else 's'}" if data["kind"] == GROUP else data["label"]
        drawing.add_node(node, kind=data["kind"], shape="box" if data["kind"] == GROUP else "ellipse",
                         label=f'"{node}: {detail}"')
    for u, v in sorted(graph.edges):
        relation = graph.edges[u, v]["relation"]
        style = "dashed" if u in ties and any(v == hyper_group(owner) for owner in ties) else "solid"
        drawing.add_edge(u, v, relation=relation, label=relation, style=style)
    return nx.nx_pydot.to_pydot(drawing).to_string()


def from_dot(text: str) -> nx.DiGraph:
    """The structure written by :func:`to_dot`: nodes with ``kind``, edges with ``relation``.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> sorted(rc.graph.from_dot(rc.graph.to_dot(graph)).edges)
    [('level0', 'model'), ('level0.hyper', 'level0'), ('level0/1', 'level0.hyper')]
    """
    import warnings

    import pydot

    with warnings.catch_warnings():  # pydot's parser uses pyparsing names that pyparsing deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        parsed = nx.nx_pydot.from_pydot(pydot.graph_from_dot_data(text)[0])
    graph = nx.DiGraph()
    for node, data in parsed.nodes(data=True):
        if "kind" in data:  # pydot adds attribute-less default nodes ("node", "edge") for style statements
            graph.add_node(node.strip('"'), kind=data["kind"])
    graph.add_edges_from((u.strip('"'), v.strip('"'), {"relation": data["relation"]})
                         for u, v, data in parsed.edges(data=True))
    return graph


def draw(graph: nx.DiGraph, path) -> None:
    """A PNG of the graph (matplotlib): optimizers in the order they step,
    left to right; groups as squares, optimizers as circles, ties dashed.

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> rc.graph.draw(graph, "tower.png")
    >>> import os; os.path.getsize("tower.png") > 0
    True
    """
    from recurse.reporting import saved_figure

    ties = set(graph.graph.get("ties", []))
    tie_edges = {(u, hyper_group(owner)) for u in ties for owner in ties}
    acyclic = nx.DiGraph(edge for edge in graph.edges if edge not in tie_edges)
    acyclic.add_nodes_from(graph.nodes)
    for layer, nodes in enumerate(nx.topological_generations(acyclic)):
        for node in nodes:
            acyclic.nodes[node]["layer"] = layer
    positions = nx.multipartite_layout(acyclic, subset_key="layer")
    widest = max(len(nodes) for nodes in nx.topological_generations(acyclic))
    with saved_figure(path, figsize=(2.5 * len(list(nx.topological_generations(acyclic))) + 2,
                                     1.6 * widest + 1.9)) as (_, axis):
        for kind, shape, colour in ((GROUP, "s", "tab:blue"), (OPTIMIZER, "o", "tab:orange")):
            nodes = [n for n, d in graph.nodes(data=True) if d["kind"] == kind]
            nx.draw_networkx_nodes(graph, positions, nodelist=nodes, node_shape=shape, node_color=colour,
                                   node_size=700, alpha=0.8, ax=axis)
        solid = [edge for edge in graph.edges if edge not in tie_edges]
        nx.draw_networkx_edges(graph, positions, edgelist=solid, ax=axis, arrows=True, node_size=700)
        nx.draw_networkx_edges(graph, positions, edgelist=[e for e in graph.edges if e in tie_edges], ax=axis,
                               style="dashed", arrows=True, connectionstyle="arc3,rad=0.4", node_size=700)
        # Labels under their nodes, wrapped and on a white box, so that none covers a node or an arrow.
        labels = {n: n if d["kind"] == GROUP else f"{n}\n" + textwrap.fill(d["label"], 26, break_long_words=False)
                  for n, d in graph.nodes(data=True)}
        # (the offset is a share of the gap between the nodes of one layer, so a label stays above the next)
        heights = sorted({round(y, 9) for _, y in positions.values()})
        gap = min((b - a for a, b in zip(heights, heights[1:])), default=1.0)
        below = {node: (x, y - 0.25 * gap) for node, (x, y) in positions.items()}
        nx.draw_networkx_labels(graph, below, labels=labels, font_size=7, ax=axis, verticalalignment="top",
                                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9})
        axis.set_ylim(heights[0] - gap, heights[-1] + 0.5 * gap)
        axis.set_title("who steps whom (squares: parameter groups, circles: optimizers, dashed: ties)", fontsize=9)
        axis.axis("off")


def from_hyper_optimizer(optimizer) -> nx.DiGraph:
    """The graph of an ``rc.HyperOptimizer``: its parameters as group ``model``,
    stepped by ``level0``, whose hyperparameters are stepped by ``level0/1``, ...

    >>> graph = rc.graph.from_hyper_optimizer(rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3))))
    >>> rc.graph.schedule(graph)
    ['level0/1', 'level0']
    """
    return build({"model": optimizer._params}, {"level0": optimizer.levels[0].optimizer}, {"level0": "model"})


def from_meta_trainer(trainer) -> nx.DiGraph:
    """The graph of an ``rc.MetaTrainer``: ``level<i>`` steps ``level<i-1>.hyper``
    from unrolls of ``unroll_steps[i-1]`` steps (in the node's label).

    >>> trainer = rc.MetaTrainer([torch.zeros(3)], lambda params, k: (params[0] ** 2).sum(),
    ...                          [rc.SGD(0.01), rc.Adam(0.05)], unroll_steps=[5])
    >>> rc.graph.schedule(rc.graph.from_meta_trainer(trainer))
    ['level1', 'level0']
    """
    optimizers, steps = {}, {}
    for level, optimizer in enumerate(trainer.optimizers):
        unrolled = f", from {trainer.unroll_steps[level - 1]}-step unrolls" if level else ""
        optimizers[f"level{level}"] = _label(optimizer) + unrolled
        steps[f"level{level}"] = "model" if level == 0 else hyper_group(f"level{level - 1}")
    return build({"model": trainer.params}, optimizers, steps)


def per_group(graph: nx.DiGraph):
    """``(params, optimizer)``: the model parameters of ``graph`` (its groups in
    sorted order) and one ``rc.PerGroup`` whose groups are the graph's
    optimizer nodes that step model groups, for ``rc.MetaTrainer``/``rc.unroll``
    (``GraphOptimizer`` is the online counterpart). The optimizers' own
    ``hyper=`` towers are not used there: the meta-optimizer is given to the
    MetaTrainer.

    >>> graph = rc.graph.build(groups={"weight": [model.weight], "bias": [model.bias]},
    ...                        optimizers={"weights": rc.LSTMOptimizer(hidden_size=4, seed=0),
    ...                                    "biases": rc.LSTMOptimizer(hidden_size=4, seed=1)},
    ...                        steps={"weights": "weight", "biases": "bias"})
    >>> params, optimizer = rc.graph.per_group(graph)
    >>> len(params), type(optimizer).__name__, optimizer.raw.shape == (2 * rc.LSTMOptimizer(hidden_size=4).raw.numel(),)
    (2, 'PerGroup', True)
    """
    from recurse.optim.per_group import PerGroup

    groups = sorted(name for name, data in graph.nodes(data=True) if data["kind"] == GROUP and data.get("params"))
    offsets, params = {}, []
    for group in groups:
        offsets[group] = list(range(len(params), len(params) + len(graph.nodes[group]["params"])))
        params += graph.nodes[group]["params"]
    entries = {}
    for name in schedule(graph):
        stepped = sorted(g for _, g in graph.out_edges(name) if g in offsets)
        if not stepped:
            continue
        optimizer = graph.nodes[name]["optimizer"]
        if optimizer is None or optimizer.hyper is not None:
            raise GraphError(f"optimizer node {name!r} must hold an rc.Optimizer without hyper= to be part of a "
                             f"PerGroup, got {graph.nodes[name]['label']!r}")
        if hyper_group(name) in graph:
            steppers = sorted(node for node, _ in graph.in_edges(hyper_group(name)))
            raise GraphError(f"{steppers} step {hyper_group(name)!r}, but a PerGroup runs no levels above its "
                             "groups (the MetaTrainer's meta-optimizer learns them); drop that edge")
        entries[name] = (optimizer, [index for group in stepped for index in offsets[group]])
    return params, PerGroup(entries)


class GraphOptimizer(CopiesWhole, torch.optim.Optimizer):
    """Per-group optimizers from a graph: one ``rc.HyperOptimizer`` per
    optimizer node that steps model groups (over all the groups it steps,
    so one node stepping several groups shares its state: weight tying),
    stepped in schedule order. Each node runs :func:`tower_of` it: its
    optimizer's ``hyper=`` chain, and the nodes that step its
    hyperparameters through ``steps`` (``"<node>.hyper"``).
    A step is all or nothing: every node computes its step first, and if
    the guard rejects any (a non-finite gradient or update), no node
    changes; ``nonfinite_steps`` counts those steps.
    A node whose optimizer needs the loss itself (``rc.Newton``) works as
    in an rc.HyperOptimizer: ``step(closure)`` with a closure that returns
    the loss without calling backward; the other nodes' gradients are taken
    from that loss.
    ``param_groups`` has one group per such node, in that order, showing
    its level-0 values as an rc.HyperOptimizer's do (``group["lr"]``), so a
    learning-rate scheduler schedules each node.

    >>> graph = rc.graph.build(groups={"weight": [model.weight], "bias": [model.bias]},
    ...                        optimizers={"adam": rc.Adam(1e-3, hyper=rc.SGD(1e-4)), "sgd": rc.SGD(0.1)},
    ...                        steps={"adam": "weight", "sgd": "bias"})
    >>> opt = rc.graph.GraphOptimizer(graph)
    >>> loss.backward(); opt.step(); list(opt.optimizers)
    ['adam', 'sgd']
    """

    def __init__(self, graph: nx.DiGraph, **options: Any) -> None:
        validate(graph)
        self.graph = graph
        self.optimizers: dict[str, HyperOptimizer] = {}
        for name in schedule(graph):
            model_groups = [g for _, g in graph.out_edges(name) if graph.nodes[g].get("params")]
            if not model_groups:
                continue
            params = [p for group in sorted(model_groups) for p in graph.nodes[group]["params"]]
            self.optimizers[name] = HyperOptimizer(params, tower_of(graph, name), **options)
        self._needs_loss = [name for name, opt in self.optimizers.items() if opt.levels[0].optimizer.needs_loss_graph]
        for name, opt in self.optimizers.items():
            if opt._sharding is not None:  # (the graph's step reads the parameters' .grad, which shards hide)
                raise ValueError(f"rc.graph.GraphOptimizer: node {name!r} steps sharded (fully_shard) parameters; "
                                 "give each node an rc.HyperOptimizer of its own")
            if opt.levels[0].optimizer.needs_closure:
                raise ValueError(f"rc.graph.GraphOptimizer: node {name!r} ({opt.levels[0].optimizer!r}) evaluates the "
                                 "loss again at other points, which a graph's step does not offer; give it an "
                                 "rc.HyperOptimizer of its own")
        all_params = [p for opt in self.optimizers.values() for p in opt._params]
        super().__init__(all_params, defaults={})
        # One param group per optimizer node, showing its values (group["lr"]): schedulers schedule each node.
        self.param_groups = [group for opt in self.optimizers.values() for group in opt.param_groups]
        self._ready = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_ready", False):  # (a group added now would belong to no node, and never be stepped)
            raise NotImplementedError("rc.graph.GraphOptimizer: parameters cannot be added after construction "
                                      "(add_param_group); add a group to the graph and build a new GraphOptimizer")
        super().add_param_group(param_group)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._needs_loss:
            self._gradients_from(loss)
        # Every node's step is computed before any is taken: all or nothing, and a Newton node's
        # Hessian-vector products read the loss's graph at the parameters it was built at.
        # A node none of whose parameters has a gradient (a branch this loss did not use) is skipped, as
        # torch.optim skips such parameters; where no node has one, backward was forgotten.
        stepping = {name: optimizer for name, optimizer in self.optimizers.items()
                    if name in self._needs_loss or any(param.grad is not None for param in optimizer._params)}
        if not stepping:
            raise RuntimeError("rc.graph.GraphOptimizer.step: no parameter has a .grad; call loss.backward() "
                               "before step()")
        with torch.no_grad():
            attempts = {name: optimizer._attempt((lambda: loss) if name in self._needs_loss else None)[1]
                        for name, optimizer in stepping.items()}
            rejected = {name: what for name, what in attempts.items() if isinstance(what, str)}
            if rejected:
                self._reject(rejected)
            else:
                for name, optimizer in stepping.items():
                    optimizer._commit(attempts[name])
        return loss

    def _gradients_from(self, loss) -> None:
        """.grad of the nodes that step from gradients, from the closure's
        loss (a node that needs the loss itself takes its own from it)."""
        if loss is None:
            name = self._needs_loss[0]
            raise ValueError(f"rc.graph.GraphOptimizer.step: node {name!r} "
                             f"({self.optimizers[name].levels[0].optimizer!r}) needs the loss; call step(closure) "
                             "with a closure that returns it without calling backward")
        params = [param for name, optimizer in self.optimizers.items() if name not in self._needs_loss
                  for param in optimizer._params]
        if params:
            fill_gradients("rc.graph.GraphOptimizer.step", loss, params)

    def _reject(self, rejected: dict[str, str]) -> None:
        where = ", ".join(f"{what} in node {name!r}" for name, what in rejected.items())
        step = max(optimizer.step_count for optimizer in self.optimizers.values()) + 1  # (a skipped node lags)
        message = (f"rc.graph.GraphOptimizer: non-finite {where} at step {step}; the step of every node was skipped "
                   "and nothing was updated")
        if any(optimizer.guard == "raise" for optimizer in self.optimizers.values()):
            raise FloatingPointError(message)
        for optimizer in self.optimizers.values():
            optimizer._skipped()
        log_skipped_step(message, self.nonfinite_steps)

    @property
    def nonfinite_steps(self) -> int:
        """Steps skipped for a non-finite gradient or update (every node counts each; checkpoints keep it)."""
        return next(iter(self.optimizers.values())).nonfinite_steps

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def hyperparameters(self) -> dict[str, float]:
        """Every node's ``HyperOptimizer.hyperparameters()``, as ``{"<node>:<level>.<name>": value}``."""
        return self._by_node(HyperOptimizer.hyperparameters)

    def hypergradients(self) -> dict[str, float]:
        """Every node's ``HyperOptimizer.hypergradients()``, named as in ``hyperparameters()``."""
        return self._by_node(HyperOptimizer.hypergradients)

    def history(self) -> dict[str, list[float]]:
        """Every node's ``HyperOptimizer.history()`` (built with ``record_history=True``), named as in
        ``hyperparameters()``."""
        return self._by_node(HyperOptimizer.history)

    def _by_node(self, read: Callable[[HyperOptimizer], dict[str, Any]]) -> dict[str, Any]:
        return {f"{name}:{key}": value for name, opt in self.optimizers.items() for key, value in read(opt).items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
