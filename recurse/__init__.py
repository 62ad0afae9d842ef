"""recurse: recursive meta-optimization on PyTorch.

Any optimizer can learn another optimizer's hyperparameters, which can be
learned in turn, to any depth.
"""

from recurse import (baselines, checkpoint, constraints, defaults, distributed, estimators, exact, graph, problems,
                     transforms)
from recurse.baselines import compare
from recurse.hyper import HyperOptimizer
from recurse.learned import LSTMOptimizer
from recurse.meta import MetaTrainer
from recurse.param_group import per_tensor
from recurse.optim import SGD, Adagrad, Adam, AdamW, Hyperparameter, Newton, Optimizer, PerGroup, RMSprop, Rprop, VSGD
from recurse.rollback import Rollback
from recurse.tower import stack, tower
from recurse.unroll import UnrollResult, evaluate, evaluate_torch, model_objective, unroll, unroll_torch

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "HyperOptimizer",
    "LSTMOptimizer",
    "Hyperparameter",
    "MetaTrainer",
    "Newton",
    "Optimizer",
    "PerGroup",
    "RMSprop",
    "Rprop",
    "VSGD",
    "Rollback",
    "UnrollResult",
    "constraints",
    "defaults",
    "distributed",
    "estimators",
    "evaluate",
    "evaluate_torch",
    "exact",
    "graph",
    "model_objective",
    "per_tensor",
    "stack",
    "baselines",
    "checkpoint",
    "compare",
    "problems",
    "tower",
    "transforms",
    "unroll",
    "unroll_torch",
]
