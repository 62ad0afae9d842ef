"""rc.compare on the user's own objective: equal budgets, failures recorded,
bad input refused, a rerun into the same folder running nothing twice."""

import math

import optuna
import pytest
import torch

import recurse as rc

STEPS = 20


def objective(make_optimizer, seed, steps=STEPS):
    """A linear model on generated data, trained by whatever make_optimizer gives."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 5, generator=generator)
    targets = inputs @ torch.randn(5, 1, generator=generator)
    torch.manual_seed(seed)
    model = torch.nn.Linear(5, 1)
    opt = make_optimizer(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(inputs), targets).item()


TOWERS = {"depth1": rc.Adam(1e-2, learn="lr", hyper=rc.SGD(0.05, normalize="rms"))}
SPACE = {"lr": (1e-3, 1.0, "log")}


def test_every_search_spends_exactly_trials_times_one_tower_run(tmp_path):
    rows = rc.compare(objective, towers=TOWERS, space=SPACE, samplers=("grid", "random", "tpe"), trials=4,
                      seeds=[0, 1], out=tmp_path, quiet=True)
    spent = {row["method"]: row["gradient_evaluations"] for row in rows}
    assert spent == {"depth1": STEPS, "grid": 4 * STEPS, "random": 4 * STEPS, "tpe": 4 * STEPS}
    assert all(math.isfinite(row["loss"]) and row["loss_std"] >= 0 and row["seconds"] > 0 for row in rows)
    for name in ("summary.csv", "summary.md", "loss_vs_evaluations.png", "hyperparameters.png",
                 "optuna_history_grid.png", "config.json", "optuna.db"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_a_rerun_into_the_same_folder_runs_no_trial_twice(tmp_path):
    rc.compare(objective, towers={}, space=SPACE, samplers=("random",), trials=3, seeds=[0], out=tmp_path,
               quiet=True)
    rc.compare(objective, towers={}, space=SPACE, samplers=("random",), trials=3, seeds=[0], out=tmp_path,
               quiet=True)
    study = optuna.load_study(study_name="objective-random-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3


def test_a_diverging_trial_is_recorded_as_failed_with_its_reason(tmp_path):
    """SGD over lr 1e-3..1e3: the large lrs blow the parameters up to NaN."""
    rows = rc.compare(objective, towers={}, space={"lr": (1e-3, 1e3, "log")}, optimizer=torch.optim.SGD,
                      samplers=("grid",), trials=4, seeds=[0], out=tmp_path, quiet=True)
    assert rows[0]["failed_trials"] >= 1 and math.isfinite(rows[0]["loss"])  # (some trials completed)
    study = optuna.load_study(study_name="objective-grid-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    failed = [trial for trial in study.trials if trial.state.name == "FAIL"]
    assert failed and all(trial.user_attrs["fail_reason"] in ("the objective returned nan",
                                                              "the objective returned inf") for trial in failed)
    assert all(trial.params["lr"] >= 10 for trial in failed)
    assert any(trial.state.name == "COMPLETE" for trial in study.trials)


def test_a_divergence_that_left_the_parameters_finite_is_returned_as_inf(tmp_path):
    def overflowing(make_optimizer, seed):
        value = objective(make_optimizer, seed)
        return math.inf if value > 0.5 else value  # (the small lrs of the grid end above 0.5)

    rows = rc.compare(overflowing, towers={}, space=SPACE, samplers=("grid",), trials=4, seeds=[0], out=tmp_path,
                      quiet=True)
    assert rows[0]["failed_trials"] >= 1 and math.isfinite(rows[0]["loss"])
    study = optuna.load_study(study_name="overflowing-grid-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert {trial.user_attrs.get("fail_reason") for trial in study.trials if trial.state.name == "FAIL"} == {
        "the objective returned inf"}


def never_builds(make_optimizer, seed):
    return 1.0


def returns_text(make_optimizer, seed):
    objective(make_optimizer, seed)
    return "low"


def nan_from_a_finite_model(make_optimizer, seed):
    objective(make_optimizer, seed)
    return math.nan  # (as an empty validation set's 0/0 gives)


def steps_with_the_seed(make_optimizer, seed):
    return objective(make_optimizer, seed, steps=STEPS + seed)


@pytest.mark.parametrize("call, error, message", [
    (lambda: rc.compare(never_builds, towers=TOWERS, space=SPACE, quiet=True), ValueError,
     r"the objective never called make_optimizer \(tower 'depth1', seed 0\)"),
    (lambda: rc.compare(returns_text, towers=TOWERS, space=SPACE, quiet=True), TypeError,
     r"the objective must return a number .* got builtins.str 'low'"),
    (lambda: rc.compare(nan_from_a_finite_model, towers=TOWERS, space=SPACE, quiet=True), ValueError,
     r"the objective returned nan \(tower 'depth1', seed 0\) although every parameter and gradient"),
    (lambda: rc.compare(nan_from_a_finite_model, towers={}, space=SPACE, quiet=True), ValueError,
     r"the objective returned nan \(grid trial 0, seed 0\) although"),
    (lambda: rc.compare(objective, towers=TOWERS, space={}, quiet=True), ValueError,
     r"space must name at least one keyword of the optimizer"),
    (lambda: rc.compare(objective, towers=TOWERS, space={"lr": (1.0, 1e-3, "log")}, quiet=True), ValueError,
     r"space\['lr'\] must be low < high"),
    (lambda: rc.compare(objective, towers=TOWERS, space=SPACE, samplers=("bayes",), quiet=True), ValueError,
     r"unknown sampler\(s\) \['bayes'\]"),
    (lambda: rc.compare(objective, towers={"adam": torch.optim.Adam}, space=SPACE, quiet=True), TypeError,
     r"towers\['adam'\] must be an rc optimizer \(a tower\), got the class torch.optim.adam.Adam"),
    (lambda: rc.compare(steps_with_the_seed, towers=TOWERS, space=SPACE, seeds=[0, 1], quiet=True), ValueError,
     r"tower 'depth1' \(seed 1\) took 21 optimizer steps, the first run 20"),
    (lambda: rc.compare(never_builds, towers=TOWERS, space={"lr": (1e-3, 1.0), "weight_decay": (1e-4, 1e-1)},
                        trials=5, quiet=True), ValueError,
     r"a grid over 2 knob\(s\) needs a trial count that is a perfect 2-th power"),  # (before any run)
    (lambda: rc.compare(never_builds, towers=TOWERS, space={"learning_rate": (1e-3, 1.0)}, quiet=True), ValueError,
     r"the space names \['learning_rate'\], which the class torch.optim.adam.Adam does not take"),
])
def test_bad_input_gets_a_clear_error_naming_it(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_failing_objective_loses_nothing_already_in_the_storage(tmp_path):
    rc.compare(objective, towers={}, space=SPACE, samplers=("random",), trials=2, seeds=[0], out=tmp_path,
               quiet=True)
    with pytest.raises(TypeError):
        rc.compare(returns_text, towers={}, space=SPACE, samplers=("random",), trials=3, seeds=[0], out=tmp_path,
                   quiet=True)
    study = optuna.load_study(study_name="objective-random-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sum(trial.state.name == "COMPLETE" for trial in study.trials) == 2


def test_a_worker_killed_mid_study_resumes_with_every_grid_cell_run_once(tmp_path):
    """SIGKILL a worker while its fourth trial runs; rerun after the trial
    turned stale (2 heartbeats): 8 completed trials, each grid cell once,
    and the gradient evaluations of the completed ones counted once each."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import sqlalchemy

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, str(Path(__file__).parent / "objective_job.py"), storage]

    def trials():
        try:
            return optuna.load_study(study_name="objective-grid-seed0", storage=storage).get_trials()
        except (KeyError, sqlalchemy.exc.OperationalError):  # (not created yet, or busy with the worker's write)
            return []

    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # (killed once the trial has its parameters: a heartbeat has then been recorded, so it turns stale)
    while not any(t.state.name == "RUNNING" and t.number >= 3 and t.params for t in trials()):
        assert worker.poll() is None and time.monotonic() < deadline, "no fourth trial started"
        time.sleep(0.05)
    worker.kill()
    worker.wait()
    time.sleep(2.5)
    rerun = subprocess.run(command, timeout=300, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    completed = [t for t in trials() if t.state.name == "COMPLETE"]
    grid = rc.baselines.Knob("lr", 1e-3, 1e-1).grid(8)
    assert sorted(t.params["lr"] for t in completed) == sorted(grid)
    assert all(t.user_attrs["gradient_evaluations"] == 10 for t in completed)
    stale = [t for t in trials() if t.state.name == "FAIL"]
    assert len(stale) == 1 and "gradient_evaluations" not in stale[0].user_attrs  # (killed before it counted)


def test_a_resumed_random_search_draws_new_points(tmp_path):
    for trials in (2, 4):
        rc.compare(objective, towers={}, space=SPACE, samplers=("random",), trials=trials, seeds=[0], out=tmp_path,
                   quiet=True)
    study = optuna.load_study(study_name="objective-random-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    lrs = [trial.params["lr"] for trial in study.trials]
    assert len(lrs) == 4 and len(set(lrs)) == 4


def test_a_grid_cell_whose_trial_failed_with_an_error_runs_once_the_objective_is_mended(tmp_path):
    broken = {"lr": None}

    def fragile(make_optimizer, seed):
        value = objective(make_optimizer, seed)
        if broken["lr"] is None:  # (the first trial raises: a bug in the user's loop)
            broken["lr"] = True
            raise RuntimeError("a bug in the loop")
        return value

    fragile.__name__ = "objective"
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        rc.compare(fragile, towers={}, space=SPACE, samplers=("grid",), trials=4, seeds=[0], out=tmp_path,
                   quiet=True)
    rc.compare(objective, towers={}, space=SPACE, samplers=("grid",), trials=4, seeds=[0], out=tmp_path, quiet=True)
    study = optuna.load_study(study_name="objective-grid-seed0", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    completed = sorted(trial.params["lr"] for trial in study.trials if trial.state.name == "COMPLETE")
    assert completed == sorted(rc.baselines.Knob("lr", 1e-3, 1.0).grid(4))  # (every cell once)


def test_two_objectives_share_a_storage_without_mixing_their_trials(tmp_path):
    def other(make_optimizer, seed):
        return objective(make_optimizer, seed + 100)

    for each in (objective, other):
        rc.compare(each, towers={}, space=SPACE, samplers=("random",), trials=2, seeds=[0], out=tmp_path, quiet=True)
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(names) == ["objective-random-seed0", "other-random-seed0"]


def test_a_tower_run_whose_guard_skipped_steps_diverged_even_with_finite_parameters():
    """rc.HyperOptimizer's guard keeps the parameters finite while the loss
    overflows (here exp(out) - exp(out) once out passes 88), and a loop that
    zeroes the gradients after the step leaves none to look at: the skipped
    steps say the run diverged, so its NaN is a failed run, not a bug."""
    from recurse.baselines.objective import _Run

    def overflowing(make_optimizer, seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 3)
        opt = make_optimizer(model.parameters())
        inputs = torch.randn(16, 4)

        def loss():
            out = model(inputs)
            return torch.nn.functional.mse_loss(out, torch.full_like(out, 100.0)) + (out.exp() - out.exp()).sum()

        for _ in range(30):
            loss().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            return loss().item()

    run = _Run(lambda params: rc.HyperOptimizer(params, rc.SGD(0.05, hyper=rc.SGD(1e-6)), first_step_limit=None))
    value, _ = run(overflowing, 0, "tower 'hot', seed 0")
    assert math.isnan(value) and run.optimizers[0].nonfinite_steps > 0
    assert all(torch.isfinite(p).all() for p in run.optimizers[0].param_groups[0]["params"])
