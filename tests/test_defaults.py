"""rc.HyperOptimizer(params) with no tower: the recommended one
(recurse/defaults.py). Its design was chosen on studies/tuning_free.py's
four tasks and seeds 0-2; these tests use another task and other seeds."""

import pytest
import torch

import recurse as rc


def test_no_tower_means_the_recommended_one():
    opt = rc.HyperOptimizer(torch.nn.Linear(3, 1).parameters())
    assert [type(level.optimizer) for level in opt.levels] == [rc.AdamW, rc.Adam]
    assert opt.levels[0].optimizer.learnable == ("lr",) and not opt.levels[1].optimizer.is_learned
    assert sorted(opt.learned_hyperparameters()) == ["0.lr"] and opt.first_step_limit == 0.1
    assert opt.learned_hyperparameters()["0.lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("seed", [5, 6])
def test_the_default_climbs_from_a_start_far_too_small(seed):
    """Least squares, where AdamW's untuned 1e-3 crawls: in 300 steps the
    default tower lifts its lr more than 100x and ends more than 100x below
    AdamW's loss from the same start."""
    task = rc.problems.make_task("linear")
    losses, opts = {}, {}
    for name in ("default", "AdamW 1e-3"):
        model = task.model(1, seed=seed)
        opts[name] = (rc.HyperOptimizer(model.parameters(), record_history=True) if name == "default"
                      else torch.optim.AdamW(model.parameters()))
        task.fit(model, opts[name], steps=300, batch_size=64, seed=seed)
        losses[name] = task.valid_loss(model)
    assert losses["default"] < 0.01 * losses["AdamW 1e-3"]
    assert opts["default"].history()["0.lr"][-1] > 100 * 1e-3
