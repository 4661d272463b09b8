"""The study's searcher and scheduler without a Ray cluster: the Optuna study's trial states for a
trial that stopped early, ran its budget or errored; baselines enqueued first and only once;
ASHA never stopping a baseline early."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")
import optuna  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402

from gatesearch.search.algorithms import BaselineASHA, StudySearch  # noqa: E402
from gatesearch.search.baselines import OPTUNA_ATTR, TRIAL_KEY  # noqa: E402
from gatesearch.search.space import parse  # noqa: E402

EPOCHS = 3


def _space():
    return parse({"study": {"name": "t", "objective": {"metric": "top1_super", "mode": "max"},
                            "budget": {"trials": 6, "epochs": EPOCHS}},
                  "fixed": {"data.name": "digits"},
                  "search": {"method.name": {"choice": ["adn", "gated_depth"]},
                             "optim.lr": {"loguniform": [0.01, 0.2]},
                             "method.adn.alpha": {"uniform": [0.3, 0.9], "when": {"method.name": "adn"}}}})


def _searcher(space) -> StudySearch:
    return StudySearch(space=space.suggest, metric="top1_super", mode="max", epochs=EPOCHS,
                       sampler=optuna.samplers.RandomSampler(seed=0), baselines=space.baseline_trials())


def _run(searcher: StudySearch, trial_id: str, scores: list[float], error: bool = False) -> None:
    """What Tune's controller does: each epoch's result goes to on_trial_result, except the one the
    scheduler stops the trial on (ASHA's rung, or max_t), which only on_trial_complete receives; an
    errored trial gets on_trial_complete(error=True) without a result."""
    searcher.suggest(trial_id)
    results = [{"top1_super": s, "training_iteration": i + 1, "epochs_done": i + 1} for i, s in enumerate(scores)]
    for result in results if error else results[:-1]:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=None if error else results[-1], error=error)


def test_baselines_come_first_then_searched_trials():
    space = _space()
    searcher = _searcher(space)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c.get(TRIAL_KEY) for c in configs] == ["adn", "gated_depth", None]
    assert configs[0]["method.adn.alpha"] == 0.5 and configs[0]["method.adn.feature_kl"] is True
    assert configs[1]["method.gated_depth.k"] == 10 and configs[1]["method.gated_depth.p_max"] == 0.9
    attrs = [t.user_attrs.get(OPTUNA_ATTR) for t in searcher._ot_study.trials]
    assert attrs == ["adn", "gated_depth", None]


def test_optuna_states_stopped_early_pruned_full_budget_complete_errored_fail():
    searcher = _searcher(_space())
    _run(searcher, "stopped", [0.31])  # ASHA stopped it after one of three epochs
    _run(searcher, "full", [0.2, 0.4, 0.6])
    _run(searcher, "errored", [0.5], error=True)
    _run(searcher, "stopped_later", [0.3, 0.45])
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED]
    # a pruned trial holds the value and step it was stopped at (what TPE ranks it by, below complete ones)
    assert trials[0].value == 0.31 and trials[0].intermediate_values == {1: 0.31}
    assert trials[3].value == 0.45 and trials[3].intermediate_values == {1: 0.3, 2: 0.45}
    assert trials[1].value == 0.6
    assert trials[2].value is None


def test_restored_searcher_does_not_enqueue_the_baselines_again(tmp_path):
    space = _space()
    searcher = _searcher(space)
    at_start = pickle.dumps(searcher)  # what Tuner.restore unpickles from tuner.pkl
    _run(searcher, "a", [0.1, 0.2, 0.3])
    searcher.suggest("b")  # the second baseline is running when the study is interrupted
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = pickle.loads(at_start)
    restored.restore(str(tmp_path / "searcher.pkl"))  # Tune's restore_from_dir
    assert restored.suggest("c").get(TRIAL_KEY) is None
    attrs = [t.user_attrs.get(OPTUNA_ATTR) for t in restored._ot_study.trials]
    assert attrs == ["adn", "gated_depth", None]


def test_asha_never_stops_a_baseline_before_the_budget():
    asha = BaselineASHA(time_attr="training_iteration", metric="m", mode="max", max_t=4, grace_period=1,
                        reduction_factor=2)
    good, weak, paper = (SimpleNamespace(trial_id=i, config=c) for i, c in (
        ("good", {}), ("weak", {}), ("paper", {TRIAL_KEY: "adn"})))
    for t in (good, weak, paper):
        asha.on_trial_add(None, t)

    def report(trial: SimpleNamespace, it: int, m: float) -> str:
        return asha.on_trial_result(None, trial, {"training_iteration": it, "m": m})

    assert report(good, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(weak, 1, 0.1) == TrialScheduler.STOP  # below the rung's cutoff
    assert report(paper, 1, 0.1) == TrialScheduler.CONTINUE  # the same score, but a baseline
    assert report(paper, 2, 0.1) == TrialScheduler.CONTINUE
    assert report(paper, 4, 0.2) == TrialScheduler.STOP  # max_t stops every trial
    assert asha._num_stopped == 2
