"""A study whose MLflow server stops answering stops the way Ctrl+C stops it, and ``--resume`` continues it.

The decision (issue #27 item 5): stop cleanly, not buffer. Tracking calls are bounded
(``tracking.HTTP_ENV``: a 10 s timeout, 2 retries with backoff); the driver probes an ``http(s)://`` server
every ``PROBE_EVERY_S`` while trials run, and once it has not answered for ``DOWN_AFTER_S`` (or one of the
driver's own tracking calls gave up) it stops the study through Tune's own interrupt: the experiment state
is saved, unfinished trials stay unfinished and resume from their last checkpoint. A trial that meets the
dead server meanwhile keeps retrying (``tracking.set_patience``, 120 s in a worker), so it is interrupted,
not failed, and the epoch whose metrics it could not send is trained again on resume. The runner then
writes ``summary.json`` and ``best.json`` locally and ends with one line naming the server. Buffering the
calls locally would need a second store, its replay and its own crash story; a resumable stop has all of
that already.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from ray.tune import Callback

from gatesearch import tracking

PROBE_EVERY_S = 5.0
DOWN_AFTER_S = 30.0  # a server restart (seconds) is ridden out; a dead one stops the study within a minute


class TrackingWatch(Callback):
    """Driver-side Tune callback that stops the study when its tracking server stays silent (module doc)."""

    def __init__(self, uri: str = "") -> None:
        self.uri, self.reason = uri, None
        self._down_since: float | None = None
        self._next_probe = 0.0

    def __reduce__(self) -> tuple[Any, tuple]:
        # Tuner.restore unpickles its RunConfig's callbacks: a resumed study gets this run's watch, not a copy
        return current, ()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self.reason is not None or not self.uri.startswith(("http://", "https://")) or now < self._next_probe:
            return
        self._next_probe = now + PROBE_EVERY_S
        why = tracking.server_down_reason(self.uri)
        if why is None:
            self._down_since = None
            return
        self._down_since = self._down_since or now
        if now - self._down_since >= DOWN_AFTER_S:
            self.stop(f"{why}, for {now - self._down_since:.0f} s")

    def stop(self, reason: str) -> None:
        """Stop the study as Ctrl+C does: Tune's handler (for SIGINT and SIGUSR1, installed by ``Tuner.fit`` in
        the main thread) saves the experiment state and ends the run with unfinished trials resumable."""
        if self.reason is not None:
            return
        self.reason = reason
        if callable(signal.getsignal(signal.SIGUSR1)):  # else no Tuner.fit runs here: the runner checks reason
            signal.raise_signal(signal.SIGUSR1)

    def message(self) -> str:
        return (f"tracking server {self.uri} stopped answering ({self.reason}); the study stopped with its state "
                "saved: start the server again and run the same command with --resume")


_WATCH = {"now": TrackingWatch()}


def current() -> TrackingWatch:
    """This process's watch (an inert one before ``start``)."""
    return _WATCH["now"]


def start(uri: str) -> TrackingWatch:
    """A fresh watch for a study logging to ``uri``; this process (the driver) gives a silent server no
    patience of its own, the watch decides."""
    tracking.set_patience(0.0)
    _WATCH["now"] = TrackingWatch(uri)
    return _WATCH["now"]


class Guarded(Callback):
    """``inner``'s trial hooks, with a tracking call that found no server (``TrackingUnavailable``, or MLflow's
    own error where a call bypasses ``tracking``'s retries) stopping the study instead of raising inside Tune's
    loop, which would end it without saving its state."""

    def __init__(self, inner: Callback) -> None:
        self.inner = inner

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._call(self.inner.on_trial_complete, iteration, trials, trial, **info)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._call(self.inner.on_trial_error, iteration, trials, trial, **info)

    @staticmethod
    def _call(hook: Any, *args: Any, **info: Any) -> None:
        try:
            hook(*args, **info)
        except Exception as e:
            reason = e.reason if isinstance(e, tracking.TrackingUnavailable) else tracking.unavailable_reason(e)
            if reason is None:
                raise
            current().stop(reason)


def close_ended_runs(uri: str, experiment_id: str, parent_run_id: str, summary: dict[str, Any]) -> int:
    """What a stopped study could not close. A trial that Tune saw end while the server was down keeps its
    MLflow run RUNNING; the next run of the study (``--resume``) closes it as the trial ended. A study stopped
    by Ctrl+C or SIGTERM (``summary["interrupted"]``) leaves the runs of its unfinished trials and
    re-evaluation seeds RUNNING, since Tune ended their actors before they could close them; nothing runs once
    ``Tuner.fit`` has returned, so each ends KILLED with the stop reason ``interrupted``, and ``--resume``
    reopens it and goes on in the same run (``trainable._open_run``). Returns how many."""
    running = {r.info.run_id for r in tracking.study_trial_runs(uri, experiment_id, parent_run_id)
               if r.info.status == "RUNNING"}
    ended = {t["mlflow_run_id"]: t for t in summary["trials"] if t["stop_reason"] != "interrupted"}
    closed = 0
    for run_id in sorted(running):
        t = ended.get(run_id)
        if t is not None:
            tracking.set_run_tags(uri, run_id, {"gatesearch.epochs_done": t["epochs_done"],
                                                "gatesearch.stop_reason": t["stop_reason"],
                                                "gatesearch.full_budget": t["state"] == "COMPLETE"})
            failed = t["state"] == "ERROR"
            tracking.end_run(uri, run_id, "FAILED" if failed else "FINISHED", error=t["error"] if failed else None)
        elif summary.get("interrupted"):
            tracking.set_run_tags(uri, run_id, {"gatesearch.stop_reason": "interrupted"})
            tracking.end_run(uri, run_id, "KILLED")
        else:
            continue
        closed += 1
    return closed
