"""One searched key of a space (``search:`` in ``search_spaces/*.yaml``): its distribution, the
conditions under which it applies, and how Optuna draws it. Below ``space`` (which parses the file)
and ``baselines`` (which fits the papers' recipes into the searched ranges)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class Param:
    """One searched key. ``when`` maps other keys to the values under which this one applies."""

    key: str
    kind: Literal["choice", "uniform", "loguniform", "int"]
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False  # int only
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(k in chosen and same_choice(chosen[k], vals) for k, vals in self.when)

    def probe_values(self) -> list[Any]:
        """The values whose validity implies the whole range's (endpoints, every choice)."""
        if self.kind == "choice":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this key can take (a choice, or inside the range)."""
        if self.kind == "choice":
            return same_choice(value, self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return (self.kind != "int" or isinstance(value, int)) and self.low <= value <= self.high

    def nearest(self, value: Any) -> Any:
        """The value in range closest to ``value`` (numbers), else the first choice."""
        if self.kind == "choice":
            return self.choices[0]
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else self.low
        clipped = min(max(number, self.low), self.high)
        return int(round(clipped)) if self.kind == "int" else float(clipped)

    def describe(self) -> str:
        """``search.KEY {kind: ...}`` as written in the space file (for error messages)."""
        bounds = [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]
        return f"search.{self.key} {{{self.kind}: {list(self.choices) if self.kind == 'choice' else bounds}}}"

    def trial_value(self, value: Any) -> Any:
        """``value`` as Optuna holds it (``enqueue_trial``): choices by their label."""
        return choice_label(value) if self.kind == "choice" else value

    def suggest(self, trial: Any) -> Any:
        """Draw a value with an Optuna ``Trial`` (define-by-run)."""
        if self.kind == "choice":
            labels = [choice_label(c) for c in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(self.key, labels))]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")


def choice_label(value: Any) -> Any:
    """Optuna categoricals hold scalars only; lists (e.g. annealed targets) travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def same_choice(value: Any, allowed: tuple[Any, ...]) -> bool:
    return choice_label(value) in [choice_label(a) for a in allowed]
