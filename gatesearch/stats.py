"""Summary statistics of repeated measurements, one definition for every reported ``*_std``
(stochastic-inference runs in ``evaluate`` and ``selection.score``, patterns in ``selection.pareto``)."""

from __future__ import annotations

import math
from typing import Sequence


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation ``sqrt(sum (v - mean)^2 / (n - 1))`` (Bessel's correction: the runs
    are a sample of the gates' randomness; 002_...txt Fig. 4 reports the std over 5 runs without saying
    which estimator), 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
