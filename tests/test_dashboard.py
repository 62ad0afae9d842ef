"""The Optuna studies recurse writes open in optuna-dashboard (in the test
extra): its WSGI app, asked as a browser would, lists a task comparison's and
an objective comparison's studies, with their trials and what each spent."""

import json
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard

import recurse as rc
from test_compare_objective import objective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def get(app, path):
    environ = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    statuses = []
    body = b"".join(app(environ, lambda status, headers, error=None: statuses.append(status)))
    assert statuses == ["200 OK"], (path, statuses, body[:300])
    return json.loads(body)


def test_the_dashboard_lists_every_study_with_its_trials(tmp_path):
    rc.compare("regression", methods=["random"], budget=40, steps=20, seeds=[0], out=tmp_path, quiet=True)
    rc.compare(objective, towers={}, space={"lr": (1e-3, 1.0, "log")}, samplers=("random",), trials=2, seeds=[0],
               out=tmp_path, quiet=True)
    app = optuna_dashboard.wsgi(rc.baselines.sqlite_url(tmp_path))
    studies = {study["study_name"]: study["study_id"] for study in get(app, "/api/studies")["study_summaries"]}
    assert set(studies) == {"regression-sgd-random-seed0", "objective-random-seed0"}
    for name, study_id in studies.items():
        trials = get(app, f"/api/studies/{study_id}")["trials"]
        assert len(trials) == 2 and all(trial["state"] == "Complete" for trial in trials), name
        spent = [attr["value"] for trial in trials for attr in trial["user_attrs"]
                 if attr["key"] == "gradient_evaluations"]
        assert spent == ["20", "20"], name
