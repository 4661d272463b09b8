"""Summary statistics of repeated measurements, one definition for every reported ``*_std``
(stochastic-inference runs in ``evaluate.passes`` and ``evaluate.strategies``, patterns in ``selection.pareto``),
and the uncertainty every comparison states (STYLE.md habit 13; DESIGN.md "Flow" step 5):

- ``t_interval``: Student's t interval of a mean over seeds;
- ``paired_difference``: the same interval on per-seed differences of two recipes trained on the same
  seeds (Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021:
  pairing by seed removes the variance the two runs share);
- ``single_run_difference``: one run of each of two recipes, against seed noise measured on one of them;
- ``verdict`` / ``verdict_kind``: "better", "worse" or "no difference detected with N seeds", from
  one rule;
- ``p_value`` / ``holm``: the two-sided p of a difference's t test, and Holm's step-down correction when one
  question is asked of many pairs (e.g. "do six recipes' frontiers separate?": 15 paired comparisons);
- ``wilson_interval``: the interval of a top-1 measured on a finite evaluation split (Wilson 1927);
- ``crown``: the finalist with the best mean, or a tie.

Floor 1 (pure pieces): the standard library, scipy and ``gatesearch.errors`` only. ``scipy.stats`` is
imported where a quantile is taken, not at module level: it costs about a second per process, and every
Ray trial worker and DDP rank imports this module (through ``evaluate``) without ever needing a quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from gatesearch.errors import UserError

VerdictKind = Literal["better", "worse", "no_difference", "single_run"]


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation ``sqrt(sum (v - mean)^2 / (n - 1))`` (Bessel's correction: the runs
    are a sample of the gates' randomness; 002_...txt Fig. 4 reports the std over 5 runs without saying
    which estimator), 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` runs with its sample std and a two-sided confidence interval ``[low, high]``
    (same unit as the values, e.g. top-1 as a fraction). For ``n == 1`` the std is 0.0 and ``low`` /
    ``high`` are NaN: one run gives no interval, so no verdict."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    se: float = math.nan  # the standard error behind the interval: its half-width is t_{(1+c)/2, n-1} * se


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student's t interval of the mean of ``values`` (one value per seed): ``mean +- t_{(1+c)/2, n-1} *
    s / sqrt(n)``, with ``s`` the Bessel-corrected ``sample_std`` and the quantile from
    ``scipy.stats.t.ppf`` (Student, "The probable error of a mean", Biometrika 6:1-25, 1908). Assumes
    the values are independent draws of a roughly normal quantity; with few seeds the t quantile (12.71
    for n=2, 4.30 for n=3 at 95%) is what keeps the interval honest.

    ``n == 1`` gives std 0.0 and NaN bounds; all-equal values give a zero-width interval. Raises
    ``UserError`` (a ``ValueError``) for no values, a non-finite value or a confidence outside (0, 1).
    """
    _check_confidence(confidence)
    n = len(values)
    if n < 1:
        raise UserError("t_interval needs at least one value, got none")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"t_interval needs finite values (a diverged run?), got {list(values)!r}")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean=mean, std=0.0, low=math.nan, high=math.nan, n=1)
    std = sample_std(values)
    from scipy.stats import t as student_t  # lazy: module docstring

    se = std / math.sqrt(n)
    half = float(student_t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
    return Interval(mean=mean, std=std, low=mean - half, high=mean + half, n=n, se=se)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """``t_interval`` of the per-seed differences ``a[i] - b[i]``, where ``a[i]`` and ``b[i]`` were trained
    on the same seed ``i``. Pairing follows Bouthillier et al., "Accounting for Variance in Machine
    Learning Benchmarks" (MLSys 2021): the variance the two recipes share through the seed (init, data
    order, augmentation) cancels in the difference, so fewer seeds tell the recipes apart.

    Raises ``UserError`` when the two sequences differ in length (they are not paired by seed)."""
    if len(a) != len(b):
        raise UserError(f"paired_difference needs one value per seed on both sides, got {len(a)} and {len(b)} "
                        "values: the runs are not paired by seed")
    return t_interval([x - y for x, y in zip(a, b)], confidence)


def single_run_difference(a: float, b: float, noise: Sequence[float], confidence: float = 0.95) -> Interval:
    """The interval of ``a - b`` when ``a`` and ``b`` are one run each (different recipes, not paired), judged
    against seed noise measured elsewhere: ``noise`` holds ``k >= 2`` runs of one recipe that differ only in
    seed (or init), whose sample std ``s`` stands for every recipe's. Two independent runs of std ``s`` differ
    with std ``s * sqrt(2)``, so the interval is ``a - b +- t_{(1+c)/2, k-1} * s * sqrt(2)``: the two-sample t
    interval with one run per side and the variance estimated from the ``k`` noise runs (``k - 1`` degrees
    of freedom). The assumption that both recipes vary with the seed as the noise runs do is the caller's to
    state. ``n`` of the result is ``k``, the runs behind the interval, so ``verdict_kind`` reads it as usual.

    Raises ``UserError`` for fewer than two noise runs or a non-finite value."""
    if len(noise) < 2:
        raise UserError(f"single_run_difference needs at least two noise runs, got {len(noise)}")
    if not all(math.isfinite(v) for v in (a, b, *noise)):
        raise UserError(f"single_run_difference needs finite values, got a={a!r}, b={b!r}, noise={list(noise)!r}")
    _check_confidence(confidence)
    from scipy.stats import t as student_t  # lazy: module docstring

    std = sample_std(noise) * math.sqrt(2.0)
    half = float(student_t.ppf((1.0 + confidence) / 2.0, len(noise) - 1)) * std
    return Interval(mean=a - b, std=std, low=a - b - half, high=a - b + half, n=len(noise), se=std)


def _no_interval(diff: Interval) -> bool:
    """One run (or a NaN bound): no interval, so no verdict and no test."""
    return diff.n < 2 or math.isnan(diff.low) or math.isnan(diff.high)


def verdict_kind(diff: Interval) -> VerdictKind:
    """The one rule behind every verdict on a difference ``a - b`` (higher is better): "better" when the
    whole interval lies above 0, "worse" when it lies below 0, "single_run" when there is no interval
    (``n == 1``), else "no_difference". Machine-readable, for MLflow tags."""
    if _no_interval(diff):
        return "single_run"
    if diff.low > 0.0:
        return "better"
    if diff.high < 0.0:
        return "worse"
    return "no_difference"


def verdict(diff: Interval) -> str:
    """``verdict_kind`` in words: "better", "worse", "single run: no interval (n=1)", or
    "no difference detected with N seeds (interval [-0.0048, +0.0448])" (bounds signed, 4 decimals).
    A "better"/"worse" is printed by the caller next to its interval and ``n``."""
    kind = verdict_kind(diff)
    if kind == "single_run":
        return f"single run: no interval (n={diff.n})"
    if kind == "no_difference":
        return f"no difference detected with {diff.n} seeds (interval [{diff.low:+.4f}, {diff.high:+.4f}])"
    return kind


def p_value(diff: Interval) -> float:
    """The two-sided p-value of the t test behind ``diff``'s interval: ``t = mean / se`` on ``n - 1`` degrees
    of freedom, ``p = 2 P(T > |t|)`` (``scipy.stats.t.sf``), where ``se`` is the standard error the interval
    was built on (``std / sqrt(n)`` for ``t_interval`` and ``paired_difference``, ``s * sqrt(2)`` for
    ``single_run_difference``). It agrees with the interval: ``p < 1 - c`` exactly when the ``c`` interval
    excludes 0. NaN without an interval (one run); with ``se == 0`` it is 0 for a non-zero mean, else 1."""
    if _no_interval(diff) or math.isnan(diff.se):
        return math.nan
    if diff.se == 0.0:
        return 0.0 if diff.mean != 0.0 else 1.0
    from scipy.stats import t as student_t  # lazy: module docstring

    return float(2.0 * student_t.sf(abs(diff.mean) / diff.se, diff.n - 1))


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> list[str]:
    """Holm's step-down procedure (S. Holm, "A simple sequentially rejective multiple test procedure",
    Scand. J. Statist. 6:65-70, 1979): the keys whose hypothesis of no difference is rejected with a
    family-wise error rate of at most ``alpha`` over all ``m`` comparisons. Sort the p-values
    ``p_(1) <= ... <= p_(m)``; reject while ``p_(i) <= alpha / (m - i + 1)``; stop at the first that is not.
    A NaN p-value (a pair with no interval) is no test: it is left out of ``m`` and never rejected. Returned
    in the order of their p."""
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    ranked = sorted(((k, p) for k, p in p_values.items() if not math.isnan(p)), key=lambda kv: kv[1])
    rejected = []
    for i, (key, p) in enumerate(ranked):
        if p > alpha / (len(ranked) - i):
            break
        rejected.append(key)
    return rejected


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a binomial proportion, e.g. top-1 = ``correct / total``
    over an evaluation split (E. B. Wilson, "Probable inference, the law of succession, and statistical
    inference", JASA 22:209-212, 1927). With ``p = correct / total``, ``n = total`` and
    ``z = norm.ppf((1 + confidence) / 2)``::

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not zero-width at 0 or all correct.
    Raises ``UserError`` for ``total <= 0`` or ``correct`` outside ``[0, total]``."""
    _check_confidence(confidence)
    if total <= 0:
        raise UserError(f"wilson_interval needs a positive number of samples, got total={total}")
    if not 0 <= correct <= total:
        raise UserError(f"wilson_interval needs 0 <= correct <= total, got correct={correct}, total={total}")
    p, n = correct / total, float(total)
    from scipy.stats import norm  # lazy: module docstring

    z = float(norm.ppf((1.0 + confidence) / 2.0))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # on paper centre - half = 0 at p = 0 and centre + half = 1 at p = 1; rounding misses by an ulp
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Crown:
    """The finalist with the best mean (``winner``, ``tied == ()``), or a tie: ``winner is None`` and
    ``tied`` names every finalist within the tolerance of the best mean, sorted by name."""

    winner: str | None
    tied: tuple[str, ...]


def crown(means: Mapping[str, float], *, tolerance: float = 0.0) -> Crown:
    """Crown the finalist with the highest mean (e.g. the mean frontier score over re-evaluation seeds).
    Every finalist whose mean is within ``tolerance`` (absolute, same unit as the means) of the best
    shares the best: more than one such finalist is a tie, reported rather than broken by dict order.
    Raises ``UserError`` for no finalists, a non-finite mean or a negative tolerance."""
    if not means:
        raise UserError("crown needs at least one finalist, got none")
    if not (math.isfinite(tolerance) and tolerance >= 0.0):
        raise UserError(f"crown needs a finite tolerance >= 0, got {tolerance!r}")
    bad = sorted(name for name, m in means.items() if not math.isfinite(m))
    if bad:
        raise UserError(f"crown needs finite means; not finite: {', '.join(bad)}")
    best = max(means.values())
    top = tuple(sorted(name for name, m in means.items() if m >= best - tolerance))
    if len(top) == 1:
        return Crown(winner=top[0], tied=())
    return Crown(winner=None, tied=top)
