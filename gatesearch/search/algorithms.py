"""The study's search algorithm and scheduler: Ray's OptunaSearch and ASHA, adapted in two ways.

**Multi-fidelity hygiene.** Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna
``TrialState.COMPLETE`` with the trial's last reported value whenever a result exists, and Tune
calls it with the last result for a trial ASHA stopped early (``TuneController.stop_trial``), so
TPE would take an epoch-1 score as a final one. ``StudySearch`` tells Optuna ``PRUNED`` for a
trial that did not reach the epoch budget, after reporting the result it was stopped at as an
intermediate value (Tune passes a stopping result to ``on_trial_complete`` only, never to
``on_trial_result``); Optuna keeps that last intermediate value as the pruned trial's value. TPE
ranks pruned trials below every complete one (by the step they reached, then that value), NSGA-II
ignores them. Errored trials stay ``FAIL``.

**Paper baselines.** ``StudySearch`` enqueues the space's baselines (``search/baselines.py``) as
the study's first Optuna trials, each with user attribute ``baselines.OPTUNA_ATTR``, once, when
the study is created: ``Tuner.restore`` unpickles the searcher with its study and never enqueues
again. ``BaselineASHA`` lets a baseline run its full epoch budget (it still reports into the
rungs, so it sets the bar for the others): the study compares its best trial with the best
baseline at the same fidelity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from gatesearch.search.baselines import TRIAL_KEY


class StudySearch(OptunaSearch):
    """``OptunaSearch`` over a define-by-run space that enqueues baselines and prunes short trials.

    ``epochs``: the study's epoch budget; a trial whose last result has ``epochs_done < epochs``
    is told to Optuna as pruned. ``baselines``: ``(params, user_attrs)`` pairs for
    ``optuna.Study.enqueue_trial``, in the order they should run.
    """

    def __init__(self, *args: Any, epochs: int, baselines: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
                 **kwargs: Any) -> None:
        self._epochs = epochs
        self._baselines = list(baselines)
        self._reported: dict[str, int] = {}  # trial id -> the last step told to Optuna by on_trial_result
        super().__init__(*args, **kwargs)  # creates the Optuna study (the space is given): see _setup_study

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        for params, user_attrs in self._baselines:
            self._ot_study.enqueue_trial(params, user_attrs=user_attrs)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._reported[trial_id] = result.get(TRAINING_ITERATION, 0)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        short = (result is not None and not error and trial_id in self._ot_trials
                 and trial_id not in self._completed_trials and int(result.get("epochs_done", 0)) < self._epochs)
        if not short:
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        # Tune never hands the searcher the result a scheduler stopped the trial on: report it here, so
        # the pruned trial's value and step are those it was stopped at (single objective only, as above)
        step = result.get(TRAINING_ITERATION)
        if isinstance(self.metric, str) and self.metric in result and step is not None \
                and step > self._reported.get(trial_id, 0):
            ot_trial.report(result[self.metric], step)
        # PRUNED takes no value: Optuna records the last intermediate value as the trial's
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class BaselineASHA(ASHAScheduler):
    """ASHA that never stops a paper-baseline trial before ``max_t`` (see module docstring), and that
    writes down every trial it stops early: ``<stops_dir>/<trial id>.json`` holds the rung (epoch) it was
    stopped at, so the runner records *why* a trial ended (``stop_reason``) instead of guessing it from
    the epoch count; the file outlives a ``Tuner.restore``, which unpickles the scheduler."""

    def __init__(self, *args: Any, stops_dir: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stops_dir = stops_dir

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        early = result.get(self._time_attr, self._max_t) < self._max_t
        if action == TrialScheduler.STOP and early and trial.config.get(TRIAL_KEY):
            self._num_stopped -= 1  # counted as stopped by the parent
            return TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP and early and self._stops_dir:
            record_stop(Path(self._stops_dir), trial.trial_id, int(result.get(self._time_attr, 0)))
        return action


def record_stop(stops_dir: Path, trial_id: str, rung: int) -> None:
    stops_dir.mkdir(parents=True, exist_ok=True)
    (stops_dir / f"{trial_id}.json").write_text(json.dumps({"scheduler": "asha", "rung": rung}))


def stop_of(stops_dir: Path, trial_id: str) -> dict[str, Any] | None:
    """What ``BaselineASHA`` wrote when it stopped ``trial_id`` early, else None."""
    path = stops_dir / f"{trial_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None
