"""recurse under torch.distributed (gloo, 2 CPU processes on loopback):
a DDP model under a depth-2 tower, and MetaTrainer data-parallel over tasks,
both equal to one process on the whole batch."""

import importlib.util
import os
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
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash prints every thread's stack
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


@pytest.mark.parametrize("mode", ["meta", "meta_lstm"])
def test_meta_training_split_over_ranks_equals_one_process_on_all_tasks(tmp_path, mode):
    """The learned values (SGD's log lr, or every weight of an LSTM optimizer)
    equal one process meta-training on all the tasks."""
    ranks = run_two_ranks(mode, tmp_path)
    single = load_job().meta_run(learned=mode == "meta_lstm")
    for rank in ranks:
        torch.testing.assert_close(rank["raw"], single["raw"], rtol=1e-10, atol=1e-12)
    assert torch.equal(ranks[0]["raw"], ranks[1]["raw"])
    start = (rc.LSTMOptimizer(hidden_size=4) if mode == "meta_lstm" else rc.SGD(0.01, learn="lr")).raw
    assert not torch.allclose(single["raw"], start.to(single["raw"].dtype))  # it did learn


def test_check_in_sync_fails_loudly_on_every_rank_when_a_learned_value_drifts(tmp_path):
    for rank in run_two_ranks("drift", tmp_path):
        assert "level 0's learned value 'lr' (raw entry 0) differs across ranks" in rank["error"]
        assert "rank 0: " in rank["error"] and "rank 1: " in rank["error"]


def test_check_in_sync_is_a_no_op_outside_torch_distributed():
    theta = torch.zeros(2, requires_grad=True)
    rc.distributed.check_in_sync(rc.HyperOptimizer([theta], rc.SGD(0.1, hyper=rc.SGD(0.01))))
