"""recurse under torch.distributed (gloo, 2 CPU processes on loopback):
a DDP model under a depth-2 tower, and MetaTrainer data-parallel over tasks,
both equal to one process on the whole batch."""

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import recurse as rc

JOB = Path(__file__).parent / "distributed_job.py"


def load_job():
    spec = importlib.util.spec_from_file_location("distributed_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_two_ranks(mode, out):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(JOB), mode, str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


def test_a_tower_on_a_ddp_model_equals_one_process_on_the_whole_batch(tmp_path):
    ranks = run_two_ranks("online", tmp_path)
    single = load_job().online_run()
    for rank in ranks:
        for mine, reference in zip(rank["params"], single["params"]):
            torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)
        assert rank["hyper"] == pytest.approx(single["hyper"], rel=1e-10)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # the ranks are identical, bit for bit
    assert ranks[0]["hyper"] == ranks[1]["hyper"]


def test_meta_training_split_over_ranks_equals_one_process_on_all_tasks(tmp_path):
    ranks = run_two_ranks("meta", tmp_path)
    single = load_job().meta_run()
    for rank in ranks:
        torch.testing.assert_close(rank["raw"], single["raw"], rtol=1e-10, atol=1e-12)
    assert torch.equal(ranks[0]["raw"], ranks[1]["raw"])
    assert single["hyper"]["0.lr"] != 0.01  # it did learn


def test_check_in_sync_is_a_no_op_outside_torch_distributed():
    theta = torch.zeros(2, requires_grad=True)
    rc.distributed.check_in_sync(rc.HyperOptimizer([theta], rc.SGD(0.1, hyper=rc.SGD(0.01))))
