"""The recommended tower: what ``rc.HyperOptimizer(params)`` runs when it
is given no optimizer, in one place.

    AdamW(lr, weight_decay=0.01) learning its lr (log space),
    under SGD(0.05) and SGD(0.01), each normalising what it receives by its running RMS.

Why: the RMS normalisation makes a level's step a fraction of the
hypergradient's usual size, so the hyper lrs need no tuning to the model's
scale (without it the hypergradient of log lr, lr * g_t . g_{t-1}, is tiny
and a tower barely moves); learning only the lr keeps a step's cost near
torch.optim's (each further knob adds inner products over the parameters);
AdamW at torch.optim's defaults is what users run untuned. The figures
behind it are in ``studies/tuning_free.py``'s output (docs/results.md).

>>> rc.defaults.tower()
rc.AdamW(lr=0.001, ..., hyper=rc.SGD(lr=0.05, ..., hyper=rc.SGD(lr=0.01, ...)))
"""

from __future__ import annotations

from recurse.optim.adam import AdamW
from recurse.optim.base import Optimizer
from recurse.optim.sgd import SGD
from recurse.tower import stack

HYPER_LRS = (0.05, 0.01)  # level 1, level 2


def tower(lr: float = 1e-3) -> Optimizer:
    """The recommended tower, with level 0 starting at ``lr``."""
    return stack(AdamW(lr, learn="lr"), *(SGD(hyper_lr, normalize="rms") for hyper_lr in HYPER_LRS))
