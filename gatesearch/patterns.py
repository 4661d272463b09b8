"""Skip patterns: which gated units of a network are skipped.

A pattern is written as a string of ``T``/``F``, one letter per unit, where **T means
skipped** (the Adaptive Depth Networks convention): ``FFFF`` is the super-net, ``TTTT`` the
base-net. This module is the only place that parses or prints that notation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import torch

from gatesearch.errors import UserError


@dataclass(frozen=True)
class SkipPattern:
    """One flag per unit; ``skipped[i]`` is True when unit ``i`` is not computed."""

    skipped: tuple[bool, ...]

    @classmethod
    def parse(cls, text: str, n_units: int | None = None) -> SkipPattern:
        """Parse ``"TFFT"``; raise ``ValueError`` on a bad letter or a wrong length."""
        letters = text.strip().upper()
        bad = sorted({c for c in letters if c not in "TF"})
        if bad:
            raise ValueError(f"skip pattern {text!r} has letters {bad}; use only T (skipped) and F (kept)")
        if n_units is not None and len(letters) != n_units:
            raise ValueError(f"skip pattern {text!r} has {len(letters)} units; this model has {n_units}")
        return cls(tuple(c == "T" for c in letters))

    @classmethod
    def super_net(cls, n_units: int) -> SkipPattern:
        return cls((False,) * n_units)

    @classmethod
    def base_net(cls, n_units: int) -> SkipPattern:
        return cls((True,) * n_units)

    @classmethod
    def from_keep(cls, keep: torch.Tensor | list[float]) -> SkipPattern:
        """From a ``[n_units]`` 0/1 keep vector (1 = computed)."""
        values = keep.tolist() if isinstance(keep, torch.Tensor) else list(keep)
        return cls(tuple(float(v) < 0.5 for v in values))

    def __len__(self) -> int:
        return len(self.skipped)

    def __str__(self) -> str:
        return "".join("T" if s else "F" for s in self.skipped)

    def __repr__(self) -> str:
        return f"SkipPattern('{self}')"

    @property
    def n_kept(self) -> int:
        return sum(not s for s in self.skipped)

    def keep_tensor(self, batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """The matching ``[batch, n_units]`` tensor of keep factors (1.0 = run, 0.0 = skip)."""
        row = torch.tensor([0.0 if s else 1.0 for s in self.skipped], device=device)
        return row.expand(batch, len(self.skipped)).contiguous()


ALL_PATTERNS_MAX_UNITS = 16  # 2^16 = 65,536 patterns, a few tens of MB: the most a list of all of them may hold


def all_patterns(n_units: int) -> list[SkipPattern]:
    """All 2^n patterns, super-net first, base-net last (lexicographic in F < T), as a list; a model with
    more than ``ALL_PATTERNS_MAX_UNITS`` units is a ``UserError`` (2^27 patterns exhaust memory): walk
    ``iter_patterns`` instead, which yields them one at a time."""
    if n_units > ALL_PATTERNS_MAX_UNITS:
        raise UserError(f"{n_units} units have 2^{n_units} skip patterns, too many to list "
                        f"(at most {ALL_PATTERNS_MAX_UNITS} units); use stage gating or a smaller model")
    return list(iter_patterns(n_units))


def iter_patterns(n_units: int) -> Iterator[SkipPattern]:
    """The patterns of ``all_patterns`` in the same order, one at a time (``itertools.islice`` to take a few)."""
    for flags in itertools.product((False, True), repeat=n_units):
        yield SkipPattern(tuple(flags))
