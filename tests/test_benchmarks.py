"""The benchmarks run (tiny sizes) and check what they claim to check:
recurse's hypergradient equals gdtuo's from the same state, the three
K-step meta-gradients (recurse, higher, torch.func) agree, and the
other depth-1 rows of overhead.py (hand-written, compiled) learn what
recurse learns."""

import importlib.util
import sys
from pathlib import Path

import pytest

from machine import INDUCTOR_BUILDS_REDUCTIONS

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load(name):
    sys.path.insert(0, str(BENCHMARKS))  # peers_unroll imports its neighbour unroll.py
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_recurse_and_gdtuo_compute_the_same_one_step_hypergradient():
    assert load("peers_online").hypergradient_agreement() < 1e-10


def test_recurse_and_gdtuo_sgd_stacks_follow_the_same_trajectory():
    """With lr learned in its own units, as gdtuo does, both take the same
    steps: the training losses after 40 steps agree."""
    bench = load("peers_online")
    for depth in (1, 2):
        ours, theirs = (bench.measure(name, "SGD", depth, steps=40, device="cpu") for name in ("recurse", "gdtuo"))
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_the_peer_online_benchmark_measures_both_implementations():
    bench = load("peers_online")
    for implementation in ("gdtuo", "recurse", "recurse-guard-off"):
        figures = bench.measure(implementation, "Adam", 1, steps=25, device="cpu")
        assert figures["ms"] > 0 and figures["peak_mb"] > 0
        assert 0 <= figures["loss"] < 2.3  # below the loss of a uniform guess over 10 classes


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float64", 1e-10)])
def test_recurse_higher_and_torch_func_unrolls_give_the_same_meta_gradient(dtype, tolerance, capsys):
    """Issue 10's unroll acceptance: meta-gradients equal to 1e-10 in float64."""
    rows = load("peers_unroll").main(["--steps", "3", "--repeats", "1", "--dtype", dtype])
    (steps, ms, memory, difference), = rows
    assert steps == 3 and difference < tolerance and set(ms) == {"torch.func", "higher", "recurse"}
    assert "| 3 |" in capsys.readouterr().out


def test_the_scaling_benchmark_prints_both_tables(capsys):
    load("scaling").main(["--steps", "1", "--sizes", "1e3"])
    out = capsys.readouterr().out
    assert "| 16 |" in out and "| 1e+03 |" in out and "slope:" in out


@pytest.mark.parametrize("family,floors", [("SGD", ("HAND_WRITTEN", "HAND_GUARDED")),
                                           ("Adam, lr only", ("HAND_WRITTEN", "COMPILED")), ("Adam", ("COMPILED",))])
def test_the_other_depth_one_rows_of_the_overhead_benchmark_learn_what_recurse_learns(family, floors, caplog):
    """overhead.py times hand-written depth-1 towers as floors for recurse's
    first level, and depth 1 with level 0 through torch.compile; they only
    count if they do the same arithmetic: after 30 steps on the same batch
    each has learned recurse's lr."""
    import torch

    bench = load("overhead")
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(256, 784, generator=generator), torch.randint(0, 10, (256,), generator=generator)
    learned = {}
    for name in ("recurse depth 1",) + tuple(getattr(bench, floor) for floor in floors):
        step, learned_lr = bench.make_runner(name, family, 1, device, inputs, labels)
        for _ in range(30):
            step()
        learned[name] = learned_lr()
    ours = learned.pop("recurse depth 1")
    assert ours != pytest.approx(1e-3 if family != "SGD" else 0.05, rel=1e-6)  # the lr did move
    for name, theirs in learned.items():
        assert theirs == pytest.approx(ours, rel=1e-4), name
    if INDUCTOR_BUILDS_REDUCTIONS:  # (the compiled rows really compiled; see tests/machine.py)
        assert "torch.compile failed" not in caplog.text


@pytest.mark.parametrize("family", ["SGD", "Adam"])
def test_the_inner_product_rows_of_the_overhead_benchmark_step_as_torch_optim_and_take_what_level_1_reads(family):
    """The rows 'torch.optim + the inner products ... alone' are floors only
    if they step as torch.optim does and take the products named: g_t with
    g_{t-1} (SGD), and with m_{t-1}, v_{t-1} and g_{t-1} (Adam)."""
    import torch

    bench = load("overhead")
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(64, 784, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    models = [bench.make_model("cpu") for _ in range(2)]
    if family == "SGD":
        ours = bench.SGDWithInnerProduct(models[0].parameters(), lr=0.05)
        reference = torch.optim.SGD(models[1].parameters(), lr=0.05)
    else:
        ours = bench.AdamWithInnerProducts(models[0].parameters(), lr=1e-3)
        reference = torch.optim.Adam(models[1].parameters(), lr=1e-3)

    def flat(tensors):
        return torch.cat([tensor.double().flatten() for tensor in tensors])

    previous_gradient = None
    for _ in range(3):
        for model, opt in zip(models, (ours, reference)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        params = list(models[1].parameters())
        gradient = flat(param.grad for param in params)
        if previous_gradient is not None:  # (what was kept: torch.optim's state is still step t-1's)
            kept = [previous_gradient] if family == "SGD" else [
                flat(reference.state[param]["exp_avg"] for param in params),
                flat(reference.state[param]["exp_avg_sq"] for param in params), previous_gradient]
        previous_gradient = gradient
        for opt in (ours, reference):
            opt.step()
    for mine, theirs in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(mine, theirs)
    assert ours.inner == pytest.approx([torch.dot(gradient, vector).item() for vector in kept], rel=1e-5)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the benchmark reads the resident set from /proc")
def test_the_memory_benchmark_counts_the_buffers_each_optimizer_holds():
    """benchmarks/memory.py, at 16M parameters (at 4M the process's fixed costs, autograd's threads among
    them, are a third of a model size and vary): rc's depth 0 holds what torch.optim holds (Adam's two
    moments); a learned lr keeps one model size more: the ratio r = m_t / den its closed form saves
    (one-step horizon), or one tangent (Decayed)."""
    bench = load("memory")
    held = {row["optimizer"]: row["model_sizes"] for row in bench.measure_rows(
        ["torch.optim.Adam", "rc Adam depth 0", "rc Adam lr only depth 1", "rc Adam lr only depth 1, Decayed(0.99)"],
        16_000_000, "cpu")}
    assert held["rc Adam depth 0"] == pytest.approx(held["torch.optim.Adam"], abs=0.15)
    assert held["rc Adam lr only depth 1"] - held["rc Adam depth 0"] == pytest.approx(1.0, abs=0.3)
    assert held["rc Adam lr only depth 1, Decayed(0.99)"] - held["rc Adam depth 0"] == pytest.approx(1.0, abs=0.3)


def test_the_drop_in_benchmark_times_every_row_against_its_group_s_torch_optim(capsys):
    rows = load("drop_in").main(["--steps", "2", "--repeats", "1"])
    groups = {group for group, *_ in rows}
    assert "amsgrad" in groups and "second head used alternate steps" in groups
    assert all(ms > 0 for _, _, ms, _ in rows)
    assert "| amsgrad | torch.optim Adam(amsgrad=True) |" in capsys.readouterr().out


def test_the_fsdp_benchmark_times_every_row_against_torch_optim_on_the_same_shards(capsys):
    load("fsdp").main(["--steps", "2", "--rounds", "1", "--hidden", "16"])
    out = capsys.readouterr().out
    assert "| torch.optim.Adam | " in out and "| 1.00x |" in out
    assert "| recurse default tower (AdamW lr learned, depth 1) |" in out and "| depth-2 SGD tower |" in out
