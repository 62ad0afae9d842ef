"""The recommended tower: what ``rc.HyperOptimizer(params)`` runs when it
is given no optimizer, in one place.

    level 0: AdamW(lr, weight_decay=0.01) learning its lr (as its log);
    level 1: Adam(0.05) learning AdamW's log lr, at a fixed step.

Why, from ``studies/tuning_free.py`` (four tasks, three seeds, validation
loss over the best of two 16-trial Optuna searches, geometric mean; the
full table of designs is in docs/results.md):

- a hyper level must take steps of a fixed size in log lr, whatever the
  hypergradient's scale (without that, lr * g_t . g_(t-1) is tiny and a
  tower copied from level 0's lr barely moves: ``rc.tower(rc.Adam(1e-3),
  depth=2)`` scores 1.43, untuned Adam 1.46);
- Adam at level 1 (1.19 with an SGD level above it) beats RMS-normalised
  SGD levels at 0.05 / 0.01 (1.25): its momentum averages the noisy
  one-step hypergradient, so it climbs where the sign is steady and stays
  where it flips; larger steps (SGD at 0.2 / 0.05: 1.65) are noise; a
  decayed horizon (mu = 0.99: 1.25, 0.9: 1.26) helps the transformer and
  the MLPs but overshoots on the CNN;
- no level above Adam's: a second level (RMS-normalised SGD at 0.01) learns
  a larger step for it during a long climb and the climb does not stop
  (from lr 1e-6 on digits it raised Adam's lr from 0.05 to 0.29 and
  AdamW's to 0.11, 14x the tuned lr, and the network memorised its
  training set: spread over starts 1e-6..1 5.95x); with Adam at a fixed
  0.05 every task stays within 1.36x of its best start, for a geometric
  mean of 1.22 against 1.19 (the CNN, whose seeds differ by half the
  mean, accounts for the difference);
- learning only the lr keeps a step's cost near torch.optim's (each further
  knob adds inner products over the parameters); AdamW at torch.optim's
  defaults is what users run untuned;
- no level above can undo a first step that wrecks the network (a
  hypergradient needs two steps, and Adam's first moves every coordinate
  by about lr: from lr 1 the CNN ended at chance, 2.36), so
  ``rc.HyperOptimizer`` starts a learned lr lower where its first step
  would move the parameters by more than ``FIRST_STEP_LIMIT`` of their
  norm (Adam's first step at the default 1e-3 is 0.003-0.018 of it on the
  study's tasks, and at their best searched lrs 0.03-0.09, but 0.44 at the
  CNN's, which the limit would lower).

>>> rc.defaults.tower()
rc.AdamW(lr=0.001, ..., hyper=rc.Adam(lr=0.05, ...))
"""

from __future__ import annotations

from recurse.optim.adam import Adam, AdamW
from recurse.optim.base import Optimizer
from recurse.tower import stack

START_LR, LEVEL_1_LR = 1e-3, 0.05
# The largest first step of a learned lr, as a fraction of the parameters' norm (see rc.HyperOptimizer).
FIRST_STEP_LIMIT = 0.1


def tower(lr: float = START_LR) -> Optimizer:
    """The recommended tower, with level 0 starting at ``lr``."""
    return stack(AdamW(lr, learn="lr"), Adam(LEVEL_1_LR))
