"""Baselines: Optuna searches, and recurse side by side with them on one budget."""

from recurse.baselines.comparison import compare
from recurse.baselines.search import (
    OPTIMIZERS,
    SAMPLERS,
    SEARCH_SPACES,
    Knob,
    finished_trials,
    gradient_evaluations,
    run_search,
)
from recurse.baselines.storage import open_storage, sqlite_url
from recurse.baselines.training import Diverged, TrainingResult, train

__all__ = ["OPTIMIZERS", "SAMPLERS", "SEARCH_SPACES", "Diverged", "Knob", "TrainingResult", "compare", "finished_trials",
           "gradient_evaluations", "open_storage", "run_search", "sqlite_url", "train"]
