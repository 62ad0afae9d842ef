"""Where Optuna studies live: a SQLite file by default, any SQLAlchemy URL
(PostgreSQL, MySQL) for several workers.

Heartbeats are on: a worker that dies mid-trial (killed, out of memory)
leaves a RUNNING trial whose heartbeat stops. The next worker that starts a
trial after ``grace_period`` seconds marks it FAIL and Optuna's
``RetryHeartbeatStaleTrialCallback`` queues it again with its parameters and its
sampler's system attributes (a grid sampler's cell, which is all a trial
killed before its first ``suggest`` has), so an interrupted study resumes with
no trial lost and none counted twice. ``retried_trial_number`` names the
trial a rerun replaces.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial


def sqlite_url(folder: Path) -> str:
    """The default storage: ``sqlite:///<folder>/optuna.db``.

    >>> from pathlib import Path
    >>> rc.baselines.sqlite_url(Path("/tmp/results/search"))
    'sqlite:////tmp/results/search/optuna.db'
    """
    return f"sqlite:///{Path(folder).resolve() / 'optuna.db'}"


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The number of the stale trial that ``trial`` reruns, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback()


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue ``trial`` (stale: its worker died) to run again, through Optuna's
    RetryHeartbeatStaleTrialCallback, without its user attributes: they are
    the killed run's partial results (the gradient evaluations it had spent
    stay counted once, on the stale trial, not again on the rerun)."""
    fresh = copy.copy(trial)
    fresh.user_attrs = {}
    _RETRY(study, fresh)


def open_storage(url: str, *, heartbeat_interval: int = 60, grace_period: int | None = None
                 ) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage at ``url`` with heartbeats every
    ``heartbeat_interval`` seconds (stale after ``grace_period``, default
    twice that). A SQLite file's folder is created. Raises ValueError naming
    the URL when the database cannot be opened.

    >>> from pathlib import Path
    >>> storage = rc.baselines.open_storage(rc.baselines.sqlite_url(Path("results")))
    >>> type(storage).__name__
    'RDBStorage'
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage must be a SQLAlchemy URL such as 'sqlite:///results/optuna.db' or "
                         f"'postgresql+psycopg://user@host:5432/db', got {url!r}")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                              heartbeat_stale_trial_callback=requeue_stale_trial)
        except Exception as error:  # SQLAlchemy and drivers raise many types; the user needs the URL and cause
            raise ValueError(f"cannot open Optuna storage {url!r}: {type(error).__name__}: {error}") from error
