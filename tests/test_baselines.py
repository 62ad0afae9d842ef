"""Optuna searches and the comparison: budgets, failures, pruning, reports."""

import math
from pathlib import Path

import optuna
import pytest

import recurse as rc
from recurse.baselines import Knob, finished_trials, gradient_evaluations, run_search, train
from recurse.baselines.comparison import compare, parse_method, summary_rows, tower_optimizer
from recurse.baselines.search import FAIL_REASON, grid_shape, make_sampler, search_space
from recurse.problems import LinearRegression

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def linear():
    return LinearRegression(seed=0)


def test_knob_grid_hits_both_ends_exactly_and_is_geometric():
    values = Knob("lr", 1e-3, 10.0).grid(5)
    assert values[0] == 1e-3 and values[-1] == 10.0
    ratios = [b / a for a, b in zip(values, values[1:])]
    assert ratios == pytest.approx([10.0] * 4, rel=1e-5)
    assert Knob("momentum", 0.0, 0.9, log=False).grid(4) == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_grid_needs_a_perfect_power_of_trials():
    assert grid_shape(16, 2) == 4
    with pytest.raises(ValueError, match="perfect 2-th power .* got trials=10"):
        grid_shape(10, 2)
    with pytest.raises(ValueError, match="cannot search \\['beta9'\\] of adam"):
        search_space("adam", ["beta9"])
    with pytest.raises(ValueError, match="unknown sampler 'cmaes'"):
        make_sampler("cmaes", search_space("sgd", ["lr"]), 4, 0)


def test_diverging_trial_is_marked_failed_and_the_study_goes_on(linear):
    # lr = 10 is far above 2 / L on this task: that grid cell must diverge.
    study = run_search(linear, sampler="grid", trials=4, steps=400)
    by_lr = {trial.params["lr"]: trial for trial in study.trials}
    assert sorted(by_lr) == Knob("lr", 1e-3, 10.0).grid(4)
    diverged = by_lr[10.0]
    assert diverged.state == optuna.trial.TrialState.FAIL
    assert diverged.user_attrs[FAIL_REASON].startswith("diverged: ")
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for lr, trial in by_lr.items() if lr != 10.0)
    assert len(finished_trials(study)) == 4
    # The failed trial's cost is counted up to where it stopped.
    assert 0 < diverged.user_attrs["gradient_evaluations"] < 400
    assert gradient_evaluations(study) == 3 * 400 + diverged.user_attrs["gradient_evaluations"]


def test_a_trial_reports_its_curve_and_a_pruner_can_stop_it(linear):
    study = run_search(linear, sampler="random", pruner="median", trials=12, steps=200, eval_every=20, seed=1)
    states = [trial.state for trial in study.trials]
    assert len(states) == 12
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert all(len(trial.intermediate_values) == 10 for trial in completed)
    pruned = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED]
    assert pruned, f"the median pruner stopped nothing: {states}"
    assert all(trial.user_attrs["gradient_evaluations"] < 200 for trial in pruned)


def test_resuming_a_study_with_another_search_is_refused(linear, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_search(linear, sampler="random", trials=2, steps=20, storage=storage, study_name="s")
    again = run_search(linear, sampler="random", trials=2, steps=20, storage=storage, study_name="s")
    assert len(again.trials) == 2  # nothing left to do, nothing run twice
    with pytest.raises(ValueError, match=r"different search .*'steps': \(20, 30\)"):
        run_search(linear, sampler="random", trials=2, steps=30, storage=storage, study_name="s")


def test_a_storage_that_cannot_be_opened_names_the_url():
    with pytest.raises(ValueError, match="storage must be a SQLAlchemy URL .* got 'optuna.db'"):
        run_search(LinearRegression(), trials=1, steps=2, storage="optuna.db")
    with pytest.raises(ValueError, match="cannot open Optuna storage 'nosuchdriver://x'"):
        run_search(LinearRegression(), trials=1, steps=2, storage="nosuchdriver://x")


def test_budget_is_counted_in_one_currency_for_every_method(linear, tmp_path):
    steps, budget = 30, 120
    runs = compare(linear, methods=["fixed", "depth1", "depth2", "unroll10", "grid", "random", "tpe"],
                   budget=budget, steps=steps, batch_size=64, seeds=[0], out=tmp_path, quiet=True)
    spent = {run.method: run.result.gradient_evaluations for run in runs}
    # The unrolled run: 3 unrolls of 10 inner steps, plus one meta-gradient each.
    assert spent == {"fixed": steps, "depth1": steps, "depth2": steps, "unroll10": steps + 3, "grid": budget,
                     "random": budget, "tpe": budget}
    for run in runs:  # the search curves end at the budget they report
        if run.search_curve:
            assert run.search_curve[-1][0] == budget
        assert math.isfinite(run.result.final_valid_loss)
    for name in ("summary.csv", "summary.md", "loss_vs_evaluations.png", "hyperparameters.png",
                 "optuna_history_grid.png", "optuna_history_tpe.png", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    header, _, *rows = (tmp_path / "summary.md").read_text().splitlines()
    assert "| failed runs | failed search trials |" in header  # (two counts, not one fraction)
    assert all(row.count("|") == header.count("|") for row in rows)


def test_compare_resumes_from_its_folder(linear, tmp_path):
    options = dict(methods=["depth1", "random"], budget=60, steps=20, batch_size=64, seeds=[0], out=tmp_path,
                   quiet=True)
    first = summary_rows(compare(linear, **options))
    second = summary_rows(compare(linear, **options))
    for row_first, row_second in zip(first, second):
        assert row_first["valid_loss_mean"] == row_second["valid_loss_mean"]
    study = optuna.load_study(study_name="linear-sgd-random-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3


def test_the_comparison_is_a_public_name_as_docs_api_states_it(linear):
    assert rc.compare is rc.baselines.compare is compare
    assert "## `recurse.compare`" in (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    runs = rc.compare(linear, methods=["fixed", "random"], budget=40, steps=20, seeds=[0], quiet=True)
    assert [(run.method, run.result.gradient_evaluations) for run in runs] == [("fixed", 20), ("random", 40)]


def test_tower_optimizer_learns_only_the_lr_from_the_same_start():
    base = tower_optimizer("adam", 0)
    towered = tower_optimizer("adam", 2)
    assert not base.is_learned
    assert towered.current_values() == pytest.approx(base.current_values(), rel=1e-12)
    assert towered.learnable == ("lr",)
    assert parse_method("depth3") == ("tower", 3) and parse_method("tpe") == ("search", None)
    assert parse_method("unroll20") == ("unroll", 20)
    with pytest.raises(ValueError, match="unknown method 'depthX'"):
        parse_method("depthX")


def test_train_counts_every_gradient_evaluation_and_flags_divergence(linear):
    result = train(linear, rc.SGD(0.01), steps=25, eval_every=10)
    assert result.gradient_evaluations == 25
    assert [point[0] for point in result.curve] == [10, 20, 25]
    with pytest.raises(rc.baselines.Diverged) as caught:
        train(linear, rc.SGD(50.0), steps=400)
    assert caught.value.result.gradient_evaluations < 400


def test_any_optuna_storage_object_works_and_resumes(linear, tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    def journal():
        return JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))

    run_search(linear, sampler="random", trials=2, steps=20, storage=journal(), study_name="j")
    study = run_search(linear, sampler="random", trials=3, steps=20, storage=journal(), study_name="j")
    assert len(study.trials) == 3


def test_newton_takes_part_with_its_hessian_products_counted(linear, tmp_path):
    runs = compare(linear, optimizer="newton", methods=["fixed", "depth1", "random"], budget=40, steps=10,
                   batch_size=64, seeds=[0], out=tmp_path, quiet=True)
    by_method = {run.method: run for run in runs}
    fixed = by_method["fixed"].result
    # Each step: one gradient plus two evaluations per Hessian-vector product (10 CG iterations at most).
    assert 10 * 3 <= fixed.gradient_evaluations <= 10 * (1 + 2 * 10)
    assert by_method["random"].result.gradient_evaluations > 4 * 10
    assert all(math.isfinite(run.result.final_valid_loss) for run in runs)
    assert fixed.final_valid_loss < 0.05  # damped Newton-CG fits the linear task in a few steps
