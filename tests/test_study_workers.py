"""Optuna studies that outlive their worker processes: a SIGKILLed search
resumes exactly, and two workers share one PostgreSQL study."""

import os
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from postgres_cluster import postgres_cluster, server_binary

from recurse.baselines.search import FAIL_REASON, SEARCH_SPACES, gradient_evaluations, make_sampler, search_space
from recurse.baselines.storage import open_storage, retried_trial_number

optuna.logging.set_verbosity(optuna.logging.WARNING)
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


def search_command(storage, study_name, *extra):
    # Adam on the linear task converges for every lr in its range: no trial fails by divergence.
    return [sys.executable, "-m", "recurse", "search", "--task", "linear", "--optimizer", "adam", "--sampler", "grid",
            "--steps", "2000", "--storage", storage, "--study-name", study_name, *extra]


def load_trials(storage, study_name):
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()
    except KeyError:  # the worker has not created the study yet
        return []
    except sqlalchemy.exc.OperationalError:  # SQLite busy with the worker's write
        return []


def test_a_killed_search_resumes_with_every_grid_cell_run_once(tmp_path):
    storage, name = f"sqlite:///{tmp_path / 'optuna.db'}", "killed"
    command = search_command(storage, name, "--trials", "8", "--heartbeat", "1")
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(t.state == RUNNING and t.number >= 3 for t in load_trials(storage, name)):
        assert worker.poll() is None, "the worker finished before it could be killed"
        assert time.monotonic() < deadline, "no trial 3 started within 120 s"
        time.sleep(0.05)
    worker.kill()  # SIGKILL: no cleanup, the running trial stays RUNNING
    worker.wait()
    assert [t.state for t in load_trials(storage, name)].count(RUNNING) == 1

    time.sleep(2.5)  # past the grace period (2 heartbeats): the trial is stale
    rerun = subprocess.run(command, timeout=300, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr

    trials = load_trials(storage, name)
    completed = [t for t in trials if t.state == COMPLETE]
    assert len(completed) == 8
    grid = SEARCH_SPACES["adam"]["lr"].grid(8)
    assert sorted(t.params["lr"] for t in completed) == sorted(grid)  # every cell once: none lost, none twice
    # The killed trial was either heard from (a heartbeat): failed as stale and its parameters rerun; or
    # killed before Optuna's first heartbeat: then Optuna never fails it and it stays RUNNING, while the
    # grid reruns its cell. Either way the completed trials are exact.
    stale = [t for t in trials if t.state == FAIL]
    orphans = [t for t in trials if t.state == RUNNING]
    assert len(stale) + len(orphans) == 1
    retried = [retried_trial_number(t) for t in completed if retried_trial_number(t) is not None]
    if stale:
        assert FAIL_REASON not in stale[0].user_attrs and retried == [stale[0].number]
    else:
        assert retried == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_grid_trial_killed_before_its_first_suggest_reruns_its_own_cell(tmp_path):
    # A worker can die after Optuna started a trial (the grid sampler chose its cell, a heartbeat went
    # out) but before the objective asked for a parameter: the stale trial has no parameters, only its cell.
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=1)
    space = search_space("adam", "lr")
    study = optuna.create_study(study_name="early", storage=storage, sampler=make_sampler("grid", space, 4, seed=0))
    killed = study.ask()
    killed.set_user_attr("gradient_evaluations", 700)  # (spent before the kill: counted once, on this trial)
    storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)  # past the grace period, on a database clock that counts whole seconds

    def objective(trial):
        return trial.suggest_float("lr", space[0].low, space[0].high, log=True)

    study.optimize(objective, n_trials=4)  # Optuna fails the stale trial before the first new one
    trials = study.get_trials()
    assert trials[killed.number].state == FAIL and trials[killed.number].params == {}
    completed = [t for t in trials if t.state == COMPLETE]
    assert sorted(t.params["lr"] for t in completed) == sorted(space[0].grid(4))
    rerun = [t for t in completed if retried_trial_number(t) == killed.number]
    assert len(rerun) == 1 and rerun[0].system_attrs["grid_id"] == trials[killed.number].system_attrs["grid_id"]
    assert "gradient_evaluations" not in rerun[0].user_attrs and gradient_evaluations(study) == 700


def test_two_workers_share_one_postgresql_study():
    if server_binary("initdb") is None or server_binary("pg_ctl") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL test, but initdb/pg_ctl are not installed")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    with postgres_cluster() as url:
        open_storage(url)  # create the schema once, before the workers race to
        command = search_command(url, "shared", "--trials", "8", "--worker-trials", "4")
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        for worker in workers:
            _, errors = worker.communicate(timeout=300)
            assert worker.returncode == 0, errors.decode()[-2000:]
        trials = optuna.load_study(study_name="shared", storage=url).get_trials()
    assert len(trials) == 8 and all(t.state == COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(8))
    assert sorted(t.params["lr"] for t in trials) == sorted(SEARCH_SPACES["adam"]["lr"].grid(8))
