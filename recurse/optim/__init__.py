"""Built-in optimizers, one file each, all on the :class:`Optimizer` protocol."""

from recurse.optim.adagrad import Adagrad
from recurse.optim.adam import Adam, AdamW
from recurse.optim.base import Hyperparameter, Optimizer
from recurse.optim.newton import Newton
from recurse.optim.per_group import PerGroup
from recurse.optim.rmsprop import RMSprop
from recurse.optim.rprop import Rprop
from recurse.optim.sgd import SGD
from recurse.optim.vsgd import VSGD

__all__ = ["Adagrad", "Adam", "AdamW", "Hyperparameter", "Newton", "Optimizer", "PerGroup", "RMSprop", "Rprop", "SGD", "VSGD"]
