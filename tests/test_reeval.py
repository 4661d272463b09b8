"""search/reeval.py: which trials are re-evaluated, and the verdict from their per-seed values, checked
against intervals worked out by hand (Student's t with n - 1 degrees of freedom)."""

from __future__ import annotations

import math

import pytest

from gatesearch.search import reeval
from gatesearch.search.space import Reeval

T_975_2 = 4.302652729749464  # t(0.975, 2 d.o.f.): a * sqrt(2 / (1 - a^2)) with a = 2 * 0.975 - 1


def _trial(tid: str, value: float | None, baseline: str | None = None, state: str = "COMPLETE",
           method: str = "adn") -> dict:
    return {"trial_id": tid, "name": f"t{tid}", "method": method, "baseline": baseline, "state": state,
            "objectives": {"frontier_score": value}, "config": {"method.name": method}}


def _summary(trials: list[dict], mode: str = "max") -> dict:
    return {"objective": [{"metric": "frontier_score", "mode": mode}], "trials": trials}


def test_finalists_are_the_best_full_budget_searched_trials_then_the_best_baseline():
    trials = [_trial("a", 0.80, "adn"), _trial("b", 0.82, "gated_depth", method="gated_depth"),
              _trial("c", 0.90), _trial("d", 0.95, state="STOPPED"), _trial("e", 0.85), _trial("f", 0.70)]
    chosen, note = reeval.finalists(_summary(trials), Reeval(finalists=2, seeds=3))
    assert [t["trial_id"] for t in chosen] == ["c", "e", "b"] and note == ""  # d was stopped early: not a finalist
    both, _ = reeval.finalists(_summary(trials), Reeval(finalists=1, seeds=3, baselines="all"))
    assert [t["trial_id"] for t in both] == ["c", "b", "a"]  # each method's best baseline
    lower, _ = reeval.finalists(_summary(trials, mode="min"), Reeval(finalists=1, seeds=3))
    assert [t["trial_id"] for t in lower] == ["f", "a"]  # mode min: lower is better
    few, note = reeval.finalists(_summary(trials), Reeval(finalists=5, seeds=3))
    assert len([t for t in few if not t["baseline"]]) == 3 and "re-evaluating all 3" in note
    stopped = [dict(t, state="STOPPED") if not t["baseline"] else t for t in trials]
    only, note = reeval.finalists(_summary(stopped), Reeval(finalists=1, seeds=3))  # ASHA stopped every searched one
    assert [t["trial_id"] for t in only] == ["b"] and note.endswith("only the paper baselines are re-evaluated")


def _runs(tid: str, values: list[float], tests: list[float] | None = None) -> dict:
    return {reeval.key(tid, i + 1): {"frontier_score": v, "state": "COMPLETE", "mlflow_run_id": f"{tid}{i}",
                                     **({"test_top1_FF": tests[i], "test_frontier_score": tests[i]} if tests else {})}
            for i, v in enumerate(values)}


def test_aggregate_intervals_paired_verdicts_and_crown_by_hand():
    chosen = [_trial("s", 0.80), _trial("q", 0.80), _trial("p", 0.70, "adn")]
    runs = {**_runs("p", [0.70, 0.72, 0.71], tests=[0.60, 0.62, 0.64]),
            **_runs("s", [0.71, 0.74, 0.74]),   # minus p: 0.01, 0.02, 0.03
            **_runs("q", [0.80, 0.83, 0.83])}   # minus p: 0.10, 0.11, 0.12
    seeds = [{"train.seed": 1}, {"train.seed": 2}, {"train.seed": 3}]
    out = reeval.aggregate(_summary(chosen), Reeval(finalists=2, seeds=3), chosen, runs, seeds)
    rows = {r["trial_id"]: r for r in out["finalists"]}
    # p: mean 0.71, s = 0.01, half-width 4.3027 * 0.01 / sqrt(3) = 0.024841
    assert rows["p"]["mean"] == pytest.approx(0.71) and rows["p"]["std"] == pytest.approx(0.01)
    assert rows["p"]["low"] == pytest.approx(0.71 - T_975_2 * 0.01 / math.sqrt(3), abs=1e-12)
    # s - p: mean 0.02, s 0.01 -> [-0.0048, 0.0448]: no difference detected
    d = rows["s"]["vs_baseline"]
    assert d["mean"] == pytest.approx(0.02) and d["low"] == pytest.approx(-0.004841, abs=1e-6)
    assert d["high"] == pytest.approx(0.044841, abs=1e-6) and d["kind"] == "no_difference"
    assert d["verdict"] == "no difference detected with 3 seeds (interval [-0.0048, +0.0448])"
    # q - p: 0.10, 0.11, 0.12 -> [0.0852, 0.1348]: better
    assert rows["q"]["vs_baseline"]["kind"] == "better" and rows["q"]["vs_baseline"]["low"] == pytest.approx(0.085159, abs=1e-6)
    assert rows["p"]["vs_baseline"] is None and out["best_baseline"] == "adn (paper baseline)"
    assert out["crowned"] == "tq (adn)" and out["tied"] == [] and out["complete"]
    # read together (2 comparisons, Holm): q - p has t = 0.11 sqrt 3 / 0.01 = 19.053 (df 2), p = 1 - t / sqrt(2 +
    # t^2) = 0.00274 <= 0.05 / 2: still apart; s - p has p = 0.0742 (test_stats)
    assert rows["q"]["vs_baseline"]["p"] == pytest.approx(0.002743, abs=1e-6)
    assert rows["q"]["vs_baseline"]["comparisons"] == 2 and rows["q"]["vs_baseline"]["holm"]
    assert not rows["s"]["vs_baseline"]["holm"]
    assert reeval.crowned_standing(out) == ("against adn (paper baseline): better (still apart with Holm's correction "
                                            "over the 2 comparisons)")
    # the baseline's test top-1 per candidate: 0.60, 0.62, 0.64 -> mean 0.62, s 0.02
    assert rows["p"]["test"]["FF"]["mean"] == pytest.approx(0.62) and rows["p"]["test"]["FF"]["std"] == pytest.approx(0.02)


def test_the_best_of_two_finalists_better_alone_is_not_apart_once_both_comparisons_are_read_together():
    """The crowned finalist is the best of K on the same seeds: its own 95 % verdict overstates the study's
    certainty, so the crown line also reads it with Holm's correction over the K comparisons."""
    chosen = [_trial("q", 0.80), _trial("s", 0.80), _trial("p", 0.70, "adn")]
    runs = {**_runs("p", [0.70, 0.72, 0.71]),
            **_runs("q", [0.74, 0.78, 0.79]),   # minus p: 0.04, 0.06, 0.08: t = 0.06 sqrt 3 / 0.02 = 5.196, p = 0.0351
            **_runs("s", [0.71, 0.74, 0.74])}   # minus p: 0.01, 0.02, 0.03: p = 0.0742
    out = reeval.aggregate(_summary(chosen), Reeval(finalists=2, seeds=3), chosen, runs, [{}] * 3)
    q = next(r for r in out["finalists"] if r["trial_id"] == "q")["vs_baseline"]
    # alone: [0.06 - 4.303 * 0.011547, 0.06 + ...] = [+0.0103, +0.1097], better; Holm: 0.0351 > 0.05 / 2, not apart
    assert q["kind"] == "better" and q["low"] == pytest.approx(0.010317, abs=1e-5) and not q["holm"]
    assert q["p"] == pytest.approx(0.0351, abs=5e-5)  # the differences carry float rounding
    assert out["crowned"] == "tq (adn)"
    assert reeval.crowned_standing(out) == ("against adn (paper baseline): better (not apart with Holm's correction "
                                            "over the 2 comparisons)")
    assert any(line.endswith("-> better (not apart with Holm's correction over the 2 comparisons)")
               for line in reeval.describe_lines(out))
    # one finalist: one comparison, nothing to correct for
    one = reeval.aggregate(_summary(chosen), Reeval(finalists=1, seeds=3), chosen[::2], runs, [{}] * 3)
    assert reeval.crowned_standing(one) == "against adn (paper baseline): better"


def test_a_crowned_baseline_names_how_the_searched_finalists_compare_to_it():
    # the baseline has the best mean, 0.71 against 0.70 (s - p: -0.01, -0.02, 0.00 -> mean -0.01, s 0.01,
    # [-0.0348, +0.0148]): crowned by its mean, and the line says the difference is inside the noise
    chosen = [_trial("s", 0.80), _trial("p", 0.70, "adn")]
    runs = {**_runs("p", [0.70, 0.72, 0.71]), **_runs("s", [0.69, 0.70, 0.71])}
    out = reeval.aggregate(_summary(chosen), Reeval(finalists=1, seeds=3), chosen, runs, [{}] * 3)
    assert out["crowned"] == "adn (paper baseline)"
    assert reeval.crowned_standing(out) == ("ts (adn) against it: no difference detected with 3 seeds "
                                            "(interval [-0.0348, +0.0148])")
    assert any(line.startswith("  crowned: adn (paper baseline) (best mean over 3 seeds; ts (adn) against it: no "
                               "difference detected") for line in reeval.describe_lines(out))
    # no searched trial ran the full budget: the baseline alone is re-evaluated, crowned with no comparison
    alone = reeval.aggregate(_summary(chosen), Reeval(finalists=1, seeds=3), chosen[1:], runs, [{}] * 3)
    assert alone["crowned"] == "adn (paper baseline)" and alone["finalists"][0]["vs_baseline"] is None
    assert reeval.crowned_standing(alone) == ("the only finalist: no other config was re-evaluated on these seeds, so "
                                              "this is its interval, not a win")
    lines = reeval.describe_lines(alone)
    assert lines[0].startswith("  re-evaluation: 1 finalist x 3 seeds")
    assert lines[-1].startswith("  crowned: adn (paper baseline) (3 seeds; the only finalist: ")


def test_minimised_objective_calls_a_lower_value_better():
    chosen = [_trial("s", 0.5), _trial("p", 0.6, "adn")]
    runs = {**_runs("p", [0.60, 0.62, 0.61]), **_runs("s", [0.50, 0.51, 0.52])}
    out = reeval.aggregate(_summary(chosen, mode="min"), Reeval(1, 3), chosen, runs, [{}] * 3)
    s = next(r for r in out["finalists"] if r["trial_id"] == "s")
    # improvement = baseline - finalist: 0.10, 0.11, 0.09 -> mean 0.10 > 0 and the interval above 0
    assert s["vs_baseline"]["mean"] == pytest.approx(0.10) and s["vs_baseline"]["kind"] == "better"
    assert out["crowned"] == "ts (adn)"


def test_equal_means_are_a_tie_and_a_missing_seed_gives_no_interval():
    chosen = [_trial("s", 0.8), _trial("q", 0.8), _trial("p", 0.6, "adn")]
    runs = {**_runs("p", [0.6, 0.6, 0.6]), **_runs("s", [0.7, 0.8, 0.9]), **_runs("q", [0.9, 0.8, 0.7])}
    out = reeval.aggregate(_summary(chosen), Reeval(2, 3), chosen, runs, [{}] * 3)
    assert out["crowned"] is None and out["tied"] == ["tq (adn)", "ts (adn)"]
    del runs[reeval.key("q", 2)]
    out = reeval.aggregate(_summary(chosen), Reeval(2, 3), chosen, runs, [{}] * 3)
    q = next(r for r in out["finalists"] if r["trial_id"] == "q")
    assert not q["complete"] and "mean" not in q and q["states"][1] == "MISSING" and not out["complete"]
    lines = reeval.describe_lines(out)
    assert any("incomplete" in line for line in lines)


def test_a_study_without_reeval_says_its_comparison_is_from_single_runs():
    (line,) = reeval.describe_lines(None)
    assert "single runs" in line and "study.reeval" in line


def test_a_reevaluation_resumes_only_with_the_block_it_began_with(tmp_path):
    from gatesearch.errors import UserError
    from gatesearch.search.preflight import REEVAL_BLOCK_FILE, check_reeval_unchanged

    began = {"finalists": 1, "seeds": 3, "baselines": "best", "vary_split": True}
    check_reeval_unchanged(tmp_path, began)  # nothing recorded yet (a new study, or one from before the file)
    (tmp_path / REEVAL_BLOCK_FILE).write_text(
        '{"finalists": 1, "seeds": 3, "baselines": "best", "vary_split": true}')
    check_reeval_unchanged(tmp_path, dict(began))  # the same block
    check_reeval_unchanged(tmp_path, None)  # the space dropped reeval: no re-evaluation runs, nothing to restore
    with pytest.raises(UserError) as e:
        check_reeval_unchanged(tmp_path, {**began, "baselines": "all"})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("study.reeval: ")
    assert "{finalists: 1, seeds: 3, baselines: best, vary_split: true}" in msg
    assert "{finalists: 1, seeds: 3, baselines: all, vary_split: true}" in msg and "--storage" in msg
