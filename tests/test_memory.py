"""Memory stays constant over steps: no graph is kept beyond one step per level."""

import gc
import resource
import warnings

import torch

import recurse as rc
from optimizer_table import regression_data, small_mlp, train_step


def live_tensor_count() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() pokes deprecated torch module proxies
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def growth_while_training(tower, *, warm_up: int, steps: int, **options):
    """Train the small MLP with ``tower`` for ``warm_up`` steps, then measure
    ``steps`` more: (the optimizer, live tensors added, peak RSS added in KiB)."""
    inputs, targets = regression_data()
    model = small_mlp()
    opt = rc.HyperOptimizer(model.parameters(), tower, **options)
    for _ in range(warm_up):
        train_step(model, opt, inputs, targets)
    tensors_before, rss_before = live_tensor_count(), peak_rss_kib()
    for _ in range(steps):
        train_step(model, opt, inputs, targets)
    return opt, live_tensor_count() - tensors_before, peak_rss_kib() - rss_before


def test_five_thousand_steps_of_a_depth_three_stack_do_not_grow_memory():
    tower = rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize="rms"), rc.SGD(1e-4), rc.SGD(1e-5))
    opt, tensors_added, rss_added = growth_while_training(tower, warm_up=500, steps=4500)
    assert opt.step_count == 5000
    assert tensors_added <= 10
    assert rss_added < 20 * 1024  # KiB


def test_a_recorded_history_costs_a_few_numbers_per_step_not_tensors():
    """record_history keeps the learned values of every step: for levels a
    host level steps they are Python floats (a tensor per level per step
    cost kilobytes of allocator overhead each, in an earlier version)."""
    tower = rc.stack(rc.SGD(0.05, learn="lr"), *(rc.SGD(1e-3, normalize="rms") for _ in range(4)))
    opt, tensors_added, rss_added = growth_while_training(tower, warm_up=100, steps=3000, record_history=True)
    assert len(opt.history()["0.lr"]) == 3100
    assert tensors_added <= 10
    assert rss_added < 8 * 1024  # KiB: 3,000 rows of 4 floats are ~0.5 MB of Python objects
