"""recurse: recursive meta-optimization on PyTorch.

Any optimizer can learn another optimizer's hyperparameters, which can be
learned in turn, to any depth.
"""

from recurse import baselines, checkpoint, constraints, graph, problems, transforms
from recurse.hyper import HyperOptimizer
from recurse.meta import MetaTrainer
from recurse.optim import SGD, Adagrad, Adam, AdamW, Hyperparameter, Optimizer, RMSprop
from recurse.tower import stack, tower
from recurse.unroll import UnrollResult, model_objective, unroll, unroll_torch

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "HyperOptimizer",
    "Hyperparameter",
    "MetaTrainer",
    "Optimizer",
    "RMSprop",
    "UnrollResult",
    "constraints",
    "graph",
    "model_objective",
    "stack",
    "baselines",
    "checkpoint",
    "problems",
    "tower",
    "transforms",
    "unroll",
    "unroll_torch",
]
