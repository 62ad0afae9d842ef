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


def test_five_thousand_steps_of_a_depth_three_stack_do_not_grow_memory():
    inputs, targets = regression_data()
    model = small_mlp()
    tower = rc.stack(rc.Adam(1e-2), rc.SGD(1e-3, normalize="rms"), rc.SGD(1e-4), rc.SGD(1e-5))
    opt = rc.HyperOptimizer(model.parameters(), tower)
    for _ in range(500):
        train_step(model, opt, inputs, targets)
    tensors_before, rss_before = live_tensor_count(), peak_rss_kib()
    for _ in range(4500):
        train_step(model, opt, inputs, targets)
    tensors_after, rss_after = live_tensor_count(), peak_rss_kib()
    assert opt.step_count == 5000
    assert tensors_after <= tensors_before + 10
    assert rss_after - rss_before < 20 * 1024  # KiB


def test_a_recorded_history_costs_a_few_numbers_per_step_not_tensors():
    """record_history keeps the learned values of every step: for levels a
    host level steps they are Python floats (a tensor per level per step
    cost kilobytes of allocator overhead each, in an earlier version)."""
    inputs, targets = regression_data()
    model = small_mlp()
    tower = rc.stack(rc.SGD(0.05, learn="lr"), *(rc.SGD(1e-3, normalize="rms") for _ in range(4)))
    opt = rc.HyperOptimizer(model.parameters(), tower, record_history=True)
    for _ in range(100):
        train_step(model, opt, inputs, targets)
    tensors_before, rss_before = live_tensor_count(), peak_rss_kib()
    for _ in range(3000):
        train_step(model, opt, inputs, targets)
    tensors_after, rss_after = live_tensor_count(), peak_rss_kib()
    assert len(opt.history()["0.lr"]) == 3100
    assert tensors_after <= tensors_before + 10
    assert rss_after - rss_before < 8 * 1024  # KiB: 3,000 rows of 4 floats are ~0.5 MB of Python objects
