"""Tasks to optimize, all generated offline or shipped by a package."""

from recurse.problems.digits import MNIST1D, Digits
from recurse.problems.images import DigitsCNN
from recurse.problems.landscapes import Cubic, XCosPiX
from recurse.problems.quadratic import Quadratic, QuadraticBatch, QuadraticFamily
from recurse.problems.regression import LinearRegression, SyntheticRegression
from recurse.problems.rosenbrock import Rosenbrock
from recurse.problems.supervised import SupervisedTask
from recurse.problems.text import CharLM

TASKS = {"digits": Digits, "digits_cnn": DigitsCNN, "mnist1d": MNIST1D, "char_lm": CharLM,
         "regression": SyntheticRegression, "linear": LinearRegression}


def make_task(name: str, **options) -> SupervisedTask:
    """The supervised task called ``name`` (one of ``TASKS``).

    >>> sorted(rc.problems.TASKS)
    ['char_lm', 'digits', 'digits_cnn', 'linear', 'mnist1d', 'regression']
    >>> type(rc.problems.make_task("linear")).__name__
    'LinearRegression'
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](**options)


__all__ = ["MNIST1D", "TASKS", "CharLM", "Cubic", "Digits", "DigitsCNN", "LinearRegression", "Quadratic", "QuadraticBatch", "QuadraticFamily", "Rosenbrock",
           "SupervisedTask", "SyntheticRegression", "XCosPiX", "make_task"]
