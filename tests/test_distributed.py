"""recurse under torch.distributed (gloo, 2 CPU processes on loopback):
a DDP model under a depth-2 tower, and MetaTrainer data-parallel over tasks,
both equal to one process on the whole batch."""

from pathlib import Path

import pytest
import torch

import recurse as rc
import torchrun

JOB = Path(__file__).parent / "distributed_job.py"


def load_job():
    return torchrun.load_job(JOB)


def run_two_ranks(mode, out):
    return torchrun.run_two_ranks(JOB, mode, out)


@pytest.mark.parametrize("mode", ["online", "rollback"])
def test_a_tower_on_a_ddp_model_equals_one_process_on_the_whole_batch(tmp_path, mode):
    """Under rc.Rollback too: the ranks roll back together, on the mean of their losses."""
    ranks = run_two_ranks(mode, tmp_path)
    single = load_job().online_run(rollback=mode == "rollback")
    if mode == "rollback":
        assert len(single["events"]) >= 1
        for rank in ranks:
            assert [event["observation"] for event in rank["events"]] == [
                event["observation"] for event in single["events"]]
            assert [event["loss"] for event in rank["events"]] == pytest.approx(
                [event["loss"] for event in single["events"]], rel=1e-10)  # (the whole batch's loss)
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
