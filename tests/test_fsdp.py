"""Towers over FSDP2 shards (fully_shard; gloo, 2 CPU processes on
loopback): each rank steps its shard, the hypergradients are summed over
the mesh, and the run equals one process on the whole batch."""

from pathlib import Path

import pytest
import torch

import torchrun

JOB = Path(__file__).parent / "fsdp_job.py"


def assert_equals_one_process(ranks, single):
    for rank in ranks:
        for mine, reference in zip(rank["params"], single["params"]):
            torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-10)
        for mine, reference in zip(rank["raws"], single["raws"]):
            torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["raws"], ranks[1]["raws"]))  # bit for bit across ranks
    assert ranks[0]["hyper"] == ranks[1]["hyper"]


@pytest.mark.parametrize("mode", ["sgd", "default", "per_tensor", "tied", "limit", "guard"])
def test_a_tower_on_fully_sharded_parameters_equals_one_process_on_the_whole_batch(tmp_path, mode):
    """30 steps in float64 of: a depth-2 SGD tower; the default tower (AdamW
    learning its lr); the same with one lr per tensor; a tied tower; SGD at
    lr 50, which the first-step limit lowers by a factor measured over all
    shards; and the default tower with an infinite gradient entry on one
    rank's shard at the first step (where no hypergradient carries it to the
    other rank), which every rank skips."""
    ranks = torchrun.run_two_ranks(JOB, mode, tmp_path)
    single = torchrun.load_job(JOB).run(mode)
    assert_equals_one_process(ranks, single)
    assert [rank["nonfinite_steps"] for rank in ranks] == [single["nonfinite_steps"]] * 2
    assert single["nonfinite_steps"] == (1 if mode == "guard" else 0)
    learned = [value for name, value in single["hyper"].items() if name.startswith("0.") and name.endswith("lr")]
    assert learned and all(lr not in (0.1, 1e-3, 0.05, 50.0) for lr in learned)  # (it learned)


def test_rollback_on_fully_sharded_parameters_decides_on_the_whole_batch(tmp_path):
    """An Adam tower learning its lr from 1.0, under rc.Rollback: the ranks
    roll back together, where one process on the whole batch does (4 times),
    to the same end."""
    ranks = torchrun.run_two_ranks(JOB, "rollback", tmp_path)
    single = torchrun.load_job(JOB).run("rollback")
    assert single["rollbacks"] >= 2
    for rank in ranks:
        assert [(event["observation"], event["lr"]) for event in rank["events"]] == [
            (event["observation"], event["lr"]) for event in single["events"]]
        assert [event["loss"] for event in rank["events"]] == pytest.approx(
            [event["loss"] for event in single["events"]], rel=1e-10)  # (the whole batch's loss)
    assert_equals_one_process(ranks, single)


@pytest.mark.parametrize("tower", ["default", "per_tensor", "tied"])
def test_a_sharded_run_resumed_in_fresh_processes_continues_bit_for_bit(tmp_path, tower):
    """Saved at step 15 (the model's shards with torch.distributed.checkpoint,
    the optimizer with rc.distributed.save_optimizer), loaded by new processes.
    The default and the tied tower's level 0 hold one tensor per parameter,
    saved as DTensors sharded as the model, beside values the same on every
    rank: they load on one unsharded rank too (resharded), which ends where
    the two did. Several param groups hold
    level 0's state per rank: that is refused on one rank, naming why."""
    (tmp_path / "whole").mkdir()
    whole = torchrun.run_two_ranks(JOB, tower, tmp_path / "whole")
    torchrun.run_two_ranks(JOB, f"save:{tower}", tmp_path)
    resumed = torchrun.run_two_ranks(JOB, f"resume:{tower}", tmp_path)
    for mine, reference in zip(resumed, whole):
        assert all(torch.equal(a, b) for a, b in zip(mine["params"], reference["params"]))
        assert all(torch.equal(a, b) for a, b in zip(mine["raws"], reference["raws"]))
    if tower in ("default", "tied"):
        (one,) = torchrun.run_two_ranks(JOB, f"resume:{tower}", tmp_path, ranks=1)
        assert_equals_one_process(whole, one)
    elif tower == "per_tensor":
        with pytest.raises(AssertionError, match=r"was saved on 2 sharded rank\(s\), and level 0's state holds "
                                                 r"per-rank tensors .* not 1 unsharded"):
            torchrun.run_two_ranks(JOB, f"resume:{tower}", tmp_path, ranks=1)


def test_bad_shardings_get_a_clear_error_naming_them(tmp_path):
    ranks = torchrun.run_two_ranks(JOB, "refusals", tmp_path)
    assert ranks[0]["other_rank"] is None  # (rank 0 loads its own state dict)
    assert "taken with the parameters sharded (rank 0 of 2, its shards" in ranks[1]["other_rank"]
    assert "here they are sharded (rank 1 of 2" in ranks[1]["other_rank"]
    for errors in ranks:
        assert "parameters 0, 1 are DTensors (sharded, on DeviceMesh((2,)" in errors["mixed"]
        assert "but parameters 2, 3, 4, 5 are plain tensors" in errors["mixed"]
        assert "parameter 2 is sharded on DeviceMesh((2,), 'cpu', stride=(1,)) (ranks [1, 0]) but parameter 0 on " \
               "DeviceMesh((2,), 'cpu', stride=(1,)) (ranks [0, 1])" in errors["meshes"]
        assert "sharded on the 2-dimensional mesh DeviceMesh((replicate=1, shard=2)" in errors["hsdp"]
        assert "normalises the model's gradient, which reads every shard" in errors["normalised"]
        assert "hypergradient_loss=HeldOut(every=1) differentiates another loss" in errors["held_out"]
        assert "no torch.distributed process group is initialised" in errors["uninitialised"]
        assert "rc.Newton(lr=1, damping=0) evaluates the loss again in its step" in errors["newton"]
        assert "rc.VSGD(lr=1) evaluates the loss again in its step" in errors["vsgd"]
        assert "node 'adam' steps sharded (fully_shard) parameters" in errors["graph"]
        assert "parameter 0 has placements (Replicate(),)" in errors["replicate"]
