"""Tasks to optimize, all generated offline."""

from recurse.problems.quadratic import Quadratic, QuadraticFamily
from recurse.problems.regression import SyntheticRegression

__all__ = ["Quadratic", "QuadraticFamily", "SyntheticRegression"]
