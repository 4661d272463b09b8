"""The search clock (``gatesearch/search/clock.py``): the time a study's search has spent, counted the way
Tune's own time budget counts it, across ``--resume``."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("ray")
from gatesearch.search import clock  # noqa: E402


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_clock_counts_time_between_steps_and_nothing_before_the_first():
    now = FakeTime()
    c = clock.SearchClock(now)
    assert not c.seen  # Tune has not driven it: a study without the clock in its callbacks
    c.on_step_begin(0, [])  # t = 1000: the first step starts the count
    assert c.spent_s == 0.0 and c.seen
    now.t = 1010.0
    c.on_step_begin(1, [])
    now.t = 1025.5
    c.on_step_begin(2, [])
    assert c.spent_s == pytest.approx(25.5)  # 10 + 15.5


def test_a_restored_clock_goes_on_from_the_saved_count_without_the_pause():
    now = FakeTime()
    first = clock.SearchClock(now)
    first.on_step_begin(0, [])
    now.t = 1040.0
    first.on_step_begin(1, [])
    saved = first.get_state()
    assert saved == {"spent_s": 40.0}

    now.t = 9000.0  # the study waited 2 h between its runs
    resumed = clock.SearchClock(now)
    resumed.set_state(saved)
    assert resumed.seen and resumed.spent_s == 40.0
    resumed.on_step_begin(0, [])  # the resumed run's first step: the pause is not counted
    now.t = 9012.0
    resumed.on_step_begin(1, [])
    assert resumed.spent_s == pytest.approx(52.0)  # 40 saved + 12 in this run


def test_a_pickled_clock_comes_back_as_this_processs_clock():
    """Tuner.restore unpickles the first run's callbacks: the restored list must hold the clock the runner reads."""
    first = clock.start()
    first.spent_s = 7.0
    now = clock.start()
    assert pickle.loads(pickle.dumps(first)) is now is clock.current()


@pytest.mark.parametrize(("budget", "spent", "used"), [
    (100.0, 95.0, True),   # 0.95 x 100 = 95: the budget is used
    (100.0, 94.9, False),
    (7200.0, 7000.0, True),  # 0.95 x 7200 = 6840
    (7200.0, 6800.0, False),
    (None, 1e9, False),    # no time budget: never used up
])
def test_budget_spent_at_95_percent_of_the_time_budget(budget, spent, used):
    assert clock.budget_spent(budget, spent) is used
