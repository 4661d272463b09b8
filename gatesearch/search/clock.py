"""How much of ``study.budget.time_budget_s`` a study's search has spent, counted across ``--resume``.

Tune keeps its own time budget across a restore: its ``TimeoutStopper`` is saved with the experiment's
state and counts only the time Tune's loop ran, in every run of the study. The runner used to judge the
budget by its own process's wall time instead. A study resumed after an interruption that then ran out
of budget with fewer trials than ``budget.trials`` therefore looked unfinished (time left by this
process's clock): it was reported interrupted, the re-evaluation never started, and every further
``--resume`` found Tune's budget spent and said the same again.

``SearchClock`` is a driver-side Tune callback that counts the same time as Tune's stopper (the time
between the starts of the loop's steps) and is saved and restored with the experiment's state
(``get_state``/``set_state``, in the same snapshot as the stopper), so the runner reads the budget as
Tune spent it. Like ``outage.TrackingWatch``, a pickled clock (``Tuner.restore`` unpickles the first
run's ``RunConfig`` callbacks) comes back as this process's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

SPENT_FRACTION = 0.95  # a search that used this much of its time budget ended by the budget


class SearchClock(Callback):
    """Seconds of Tune loop time the study's search has run, over all its runs (module doc)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.spent_s = 0.0
        self._now = now
        self._last: float | None = None  # as Tune's stopper: no time counted before the first step
        # whether Tune drove this clock (a step, or a restored state): a study created before the clock existed
        # keeps its pickled callbacks on --resume, so its search time is not known here
        self.seen = False

    def __reduce__(self) -> tuple[Any, tuple]:
        return current, ()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now, self.seen = self._now(), True
        if self._last is not None:
            self.spent_s += now - self._last
        self._last = now

    def get_state(self) -> dict[str, float]:
        return {"spent_s": self.spent_s}

    def set_state(self, state: dict[str, Any]) -> None:
        # a restored study goes on from what the saved runs spent; the pause between runs is not counted
        self.spent_s, self._last, self.seen = float(state["spent_s"]), None, True


def budget_spent(time_budget_s: float | None, spent_s: float) -> bool:
    """Whether a search that ran ``spent_s`` seconds used its time budget (``SPENT_FRACTION`` of it)."""
    return time_budget_s is not None and spent_s >= SPENT_FRACTION * time_budget_s


_CLOCK = {"now": SearchClock()}


def current() -> SearchClock:
    """This process's clock (an idle one before ``start``)."""
    return _CLOCK["now"]


def start() -> SearchClock:
    """A fresh clock for the study this process is about to run (or resume: Tune restores its count)."""
    _CLOCK["now"] = SearchClock()
    return _CLOCK["now"]
