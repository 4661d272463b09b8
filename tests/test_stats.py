"""stats.py: one standard deviation for every reported ``*_std``, and its callers use it; the intervals,
verdicts and crowns every comparison states, checked against numbers worked out by hand."""

from __future__ import annotations

import math
import re

import pytest

from gatesearch.evaluate import EvalResult, evaluate_stochastic
from gatesearch.evaluate import passes as evaluate_module
from gatesearch.selection.pareto import build_menu
from gatesearch.stats import (
    Crown,
    crown,
    holm,
    p_value,
    paired_difference,
    sample_std,
    single_run_difference,
    t_interval,
    verdict,
    verdict_kind,
    wilson_interval,
)


def test_sample_std_written_out():
    # mean 0.6; squared deviations 0.01 + 0.01 + 0 = 0.02; / (n - 1) = 0.01; sqrt -> 0.1
    assert sample_std([0.5, 0.7, 0.6]) == pytest.approx(0.1)
    assert sample_std([0.42]) == 0.0 and sample_std([]) == 0.0


def test_stochastic_evaluation_reports_the_sample_std(monkeypatch: pytest.MonkeyPatch):
    runs = iter([0.5, 0.7, 0.6])
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: EvalResult(next(runs), 1.0, 0, 0, 10))
    mean, std = evaluate_stochastic(None, [], None, "cpu", runs=3)
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)


def test_menu_std_over_patterns_is_the_sample_std():
    rows = [{"pattern": p, "strategy": "pattern", "top1": a, "latency_ms": 1.0 + i, "latency_source": "model"}
            for i, (p, a) in enumerate([("FF", 0.5), ("FT", 0.7), ("TF", 0.6)])]
    menu = build_menu(rows, model="m", dataset="d", device="x", checkpoint="c", bn_mode="plain", search="exhaustive",
                      batch=1)
    assert menu.top1_std == pytest.approx(0.1)


# --- intervals, verdicts and crowns (issue 24, part 2) -------------------------------------------------------------
# Every reference below is worked out by hand from the textbook formula, never by calling gatesearch.stats.
#
# Student's t quantiles in closed form (no scipy in the reference):
#   1 degree of freedom (Cauchy):  F(t) = 1/2 + atan(t)/pi          -> t_p = tan(pi (p - 1/2))
#   2 degrees of freedom:          F(t) = 1/2 + t / (2 sqrt(2 + t^2)) -> t_p = a sqrt(2 / (1 - a^2)), a = 2p - 1
T975_DF2 = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # sqrt(18.5128...) = 4.3026527...
T950_DF2 = 0.90 * math.sqrt(2 / (1 - 0.90**2))  # 90% two-sided -> p = 0.95: 2.9199856...
T975_DF1 = math.tan(0.475 * math.pi)  # 12.7062047...
Z975 = 1.959964  # standard normal 97.5% quantile, from a table


def test_t_quantiles_written_out_match_the_tables():
    # guards the references themselves against a slip: the printed t table gives 4.303, 2.920, 12.706
    assert T975_DF2 == pytest.approx(4.303, abs=5e-4)
    assert T950_DF2 == pytest.approx(2.920, abs=5e-4)
    assert T975_DF1 == pytest.approx(12.706, abs=5e-4)


def test_paired_differences_of_one_to_three_hundredths_detect_no_difference():
    # differences 0.01, 0.02, 0.03: mean 0.02; squared deviations 1e-4 + 0 + 1e-4 = 2e-4; / 2 -> s = 0.01
    # half-width 4.3027 * 0.01 / sqrt(3) = 0.024841 -> [-0.004841, 0.044841], which straddles 0
    diff = paired_difference([0.81, 0.82, 0.83], [0.80, 0.80, 0.80])
    half = T975_DF2 * 0.01 / math.sqrt(3)
    assert diff.n == 3
    assert diff.mean == pytest.approx(0.02) and diff.std == pytest.approx(0.01)
    assert diff.low == pytest.approx(0.02 - half) and diff.high == pytest.approx(0.02 + half)
    assert diff.low == pytest.approx(-0.0048, abs=5e-5) and diff.high == pytest.approx(0.0448, abs=5e-5)
    assert verdict_kind(diff) == "no_difference"
    assert verdict(diff) == "no difference detected with 3 seeds (interval [-0.0048, +0.0448])"


def test_a_clear_gain_is_better_and_a_clear_loss_is_worse():
    # 0.10, 0.11, 0.12: mean 0.11, s 0.01, half 0.024841 -> [0.085159, 0.134841], all above 0
    better = paired_difference([0.60, 0.61, 0.62], [0.50, 0.50, 0.50])
    assert better.low == pytest.approx(0.11 - T975_DF2 * 0.01 / math.sqrt(3))
    assert better.low == pytest.approx(0.0852, abs=5e-5)
    assert verdict_kind(better) == "better" and verdict(better) == "better"
    # the same numbers with the sides swapped: [-0.134841, -0.085159], all below 0
    worse = paired_difference([0.50, 0.50, 0.50], [0.60, 0.61, 0.62])
    assert worse.high == pytest.approx(-0.0852, abs=5e-5)
    assert verdict_kind(worse) == "worse" and verdict(worse) == "worse"


def test_single_runs_judged_against_measured_seed_noise():
    # noise runs 0.85, 0.86, 0.87: s = 0.01 (2 degrees of freedom); two single runs differ with std
    # 0.01 * sqrt(2) = 0.0141421; half-width 4.3027 * 0.0141421 = 0.060849
    half = T975_DF2 * 0.01 * math.sqrt(2)
    assert half == pytest.approx(0.060849, abs=5e-7)
    inside = single_run_difference(0.83, 0.80, [0.85, 0.86, 0.87])  # +0.03: [-0.030849, +0.090849]
    assert inside.mean == pytest.approx(0.03) and inside.std == pytest.approx(0.0141421, abs=5e-7)
    assert (inside.low, inside.high) == (pytest.approx(-0.030849, abs=5e-7), pytest.approx(0.090849, abs=5e-7))
    assert inside.n == 3 and verdict_kind(inside) == "no_difference"
    apart = single_run_difference(0.87, 0.80, [0.85, 0.86, 0.87])  # +0.07: [+0.009151, +0.130849]
    assert apart.low == pytest.approx(0.009151, abs=5e-7) and verdict_kind(apart) == "better"
    assert verdict_kind(single_run_difference(0.80, 0.87, [0.85, 0.86, 0.87])) == "worse"
    with pytest.raises(ValueError, match="at least two noise runs"):
        single_run_difference(0.8, 0.7, [0.85])


def test_t_interval_uses_n_minus_one_degrees_and_the_two_sided_quantile():
    # two seeds 1.0, 3.0: mean 2, s = sqrt(((-1)^2 + 1^2) / 1) = sqrt(2); half = 12.706 * sqrt(2) / sqrt(2)
    two = t_interval([1.0, 3.0])
    assert two.std == pytest.approx(math.sqrt(2))
    assert (two.low, two.high) == (pytest.approx(2 - T975_DF1), pytest.approx(2 + T975_DF1))
    # 90% on three values 1, 2, 3 (mean 2, s 1): half = 2.91999 / sqrt(3) = 1.685856
    ninety = t_interval([1.0, 2.0, 3.0], confidence=0.90)
    assert ninety.high - ninety.mean == pytest.approx(T950_DF2 / math.sqrt(3))
    assert ninety.high == pytest.approx(3.6859, abs=5e-5)


def test_equal_values_give_a_zero_width_interval():
    same = t_interval([0.5, 0.5, 0.5])
    assert (same.mean, same.std, same.low, same.high) == (pytest.approx(0.5), 0.0, pytest.approx(0.5), pytest.approx(0.5))
    tie = paired_difference([0.7, 0.8], [0.7, 0.8])
    assert (tie.low, tie.high) == (0.0, 0.0)
    assert verdict(tie) == "no difference detected with 2 seeds (interval [+0.0000, +0.0000])"


def test_one_run_gives_no_interval_and_no_verdict():
    one = t_interval([0.42])
    assert one.mean == 0.42 and one.std == 0.0 and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high)
    diff = paired_difference([0.9], [0.1])  # a large single-run gap is still not a verdict
    assert verdict_kind(diff) == "single_run"
    assert verdict(diff) == "single run: no interval (n=1)"


def test_p_value_of_the_t_test_behind_each_interval_from_closed_forms():
    """Student's t has closed-form tails for 1 and 2 degrees of freedom: P(|T| > t) = 1 - (2/pi) atan(t) (df 1,
    the Cauchy) and 1 - t / sqrt(2 + t^2) (df 2)."""
    # paired differences 0.01, 0.02, 0.03: mean 0.02, s 0.01, se 0.01/sqrt(3), t = 2 sqrt(3) = 3.4641 (df 2):
    # p = 1 - 3.4641 / sqrt(14) = 0.074180 > 0.05, as the interval [-0.0048, 0.0448] spans 0
    d = paired_difference([0.03, 0.04, 0.05], [0.02, 0.02, 0.02])
    assert d.se == pytest.approx(0.01 / math.sqrt(3))
    assert p_value(d) == pytest.approx(0.074180, abs=5e-7) and verdict_kind(d) == "no_difference"
    # differences 0.1 and 0.3: mean 0.2, s 0.141421, se 0.1, t = 2 (df 1): p = 1 - (2/pi) atan 2 = 0.295167
    assert p_value(paired_difference([0.6, 0.8], [0.5, 0.5])) == pytest.approx(0.295167, abs=5e-7)
    # one run each against noise 0.85, 0.86, 0.87: se = 0.01 sqrt(2), t = 0.07 / 0.0141421 = 4.94975 (df 2):
    # p = 1 - 4.94975 / sqrt(26.5) = 0.038476 < 0.05, as the interval [+0.0092, +0.1308] excludes 0
    apart = single_run_difference(0.87, 0.80, [0.85, 0.86, 0.87])
    assert p_value(apart) == pytest.approx(0.038476, abs=5e-7) and verdict_kind(apart) == "better"
    assert p_value(t_interval([0.25, 0.25, 0.25])) == 0.0 and p_value(t_interval([0.0, 0.0])) == 1.0  # se = 0
    assert math.isnan(p_value(t_interval([0.7])))  # one run: no test


def test_holm_rejects_step_down_and_leaves_untested_pairs_out():
    # m = 4, alpha 0.05: 0.005 <= 0.05/4 = 0.0125 yes; 0.01 <= 0.05/3 = 0.0167 yes; 0.03 <= 0.05/2 = 0.025 no:
    # stop (0.04 is not rejected either, although it is below 0.05 on its own)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}) == ["d", "a"]
    # a pair without an interval is no test: m = 2, so 0.02 <= 0.025 and 0.04 <= 0.05 are both rejected
    # (with it counted, m = 3 and 0.02 > 0.0167 would reject none)
    assert holm({"a": 0.02, "b": math.nan, "c": 0.04}) == ["a", "c"]
    assert holm({"a": 0.2, "b": 0.01}, alpha=0.01) == []  # 0.01 > 0.01 / 2
    assert holm({}) == []
    with pytest.raises(ValueError, match="alpha"):
        holm({"a": 0.01}, alpha=0.0)


@pytest.mark.parametrize("call, words", [
    (lambda: t_interval([]), "at least one value"),
    (lambda: t_interval([0.5, math.nan]), "finite"),
    (lambda: t_interval([0.5, 0.6], confidence=1.0), "confidence"),
    (lambda: t_interval([0.5, 0.6], confidence=0.0), "confidence"),
    (lambda: paired_difference([0.5, 0.6, 0.7], [0.5, 0.6]), "3 and 2"),
    (lambda: wilson_interval(0, 0), "total=0"),
    (lambda: wilson_interval(11, 10), "correct=11"),
    (lambda: wilson_interval(-1, 10), "correct=-1"),
    (lambda: crown({}), "at least one finalist"),
    (lambda: crown({"a": 0.5, "b": math.nan}), "not finite: b"),
    (lambda: crown({"a": 0.5}, tolerance=-0.1), "tolerance"),
])
def test_bad_inputs_raise_one_clear_value_error(call, words: str):
    with pytest.raises(ValueError, match=re.escape(words)):
        call()


def test_wilson_interval_85_of_100_from_the_closed_form():
    # p = 0.85, n = 100, z^2 = 3.841459: denominator 1 + z^2/n = 1.0384146
    # centre (0.85 + 0.0192073) / 1.0384146 = 0.837052
    # half   1.959964 * sqrt(0.001275 + 0.0000960365) / 1.0384146 = 0.069888  -> [0.767164, 0.906940]
    p, n = 0.85, 100
    denom = 1 + Z975**2 / n
    centre = (p + Z975**2 / (2 * n)) / denom
    half = Z975 * math.sqrt(p * (1 - p) / n + Z975**2 / (4 * n**2)) / denom
    low, high = wilson_interval(85, 100)
    assert low == pytest.approx(centre - half, rel=1e-6) and high == pytest.approx(centre + half, rel=1e-6)
    assert (low, high) == (pytest.approx(0.7672, abs=5e-5), pytest.approx(0.9069, abs=5e-5))


def test_wilson_interval_literal_values():
    # 8500 of 10000 (a CIFAR-10 test split at 85%): centre 0.849866, half 0.006999 -> [0.842867, 0.856864]
    assert wilson_interval(8500, 10000) == (pytest.approx(0.842867, abs=1e-6), pytest.approx(0.856864, abs=1e-6))
    # 0 of 10: centre = half = (z^2 / 2n) / (1 + z^2 / n), so low is exactly 0 and high = 0.38415 / 1.38415
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    # 10 of 10 mirrors it (a Wald interval would be [1, 1] here)
    assert wilson_interval(10, 10) == (pytest.approx(1 - 0.277533, abs=1e-6), 1.0)


def test_crown_names_the_best_mean_or_reports_a_tie():
    assert crown({"adn": 0.7976, "probgates": 0.8217, "gated_depth": 0.8086}) == Crown("probgates", ())
    assert crown({"b": 0.82, "a": 0.82, "c": 0.80}) == Crown(None, ("a", "b"))
    close = {"searched": 0.8200, "baseline": 0.8195, "adn": 0.8100}
    assert crown(close) == Crown("searched", ())  # exact comparison by default
    # within 0.001 of the best: 0.8195 >= 0.8190 ties, 0.8100 does not
    assert crown(close, tolerance=0.001) == Crown(None, ("baseline", "searched"))
    assert crown({"only": 0.5}) == Crown("only", ())
