"""The gated-network protocol every backbone implements (ResNets, MobileNetV2, ViT, Swin).

A ``GatedNet`` is ``stem -> stages -> head``:

- ``stem`` (``nn.Module``): ``x -> h``; never gated and never switched, so every sub-network
  shares it (the trie, ADN's two sub-networks and gated depth's distillation step run it once).
- ``stages`` (``nn.ModuleList``): each stage has ``base`` (``nn.ModuleList`` of mandatory blocks),
  ``units`` (``nn.ModuleList`` of ``nn.ModuleList`` of blocks: the skippable units, in order),
  ``unit_offset`` (global index of its first unit), ``switch_unit`` (the unit whose on/off state
  picks the base's norm set, or ``None``) and ``forward(h, gates, first_out=None)``.
  ``gated_resnet.Stage`` implements all of it for any blocks that follow the block calls below.
- ``head(h) -> logits [B, num_classes]``: everything after the last stage; it uses no module
  inside ``stem``, ``stages`` or ``gate_heads`` (``export`` keeps a copy of the model without them).

Block calls (the trie in ``evaluate/walk.py`` and ``export`` make the same calls):
a base block is called ``block(h, which)`` (``which``: ``UNIT_ON``/``UNIT_OFF`` or a ``[B]``
keep tensor, for its switchable norms) and the first stage's first base block may get a third
argument, ``first_out = model.shared_prefix(h)``; a unit block is called ``block(h)`` or
``block(h, scale=keep)`` (``keep [B]`` scales its residual branch: ``k = 0`` returns ``h``).
A block with ``residual_adds = n`` makes ``n`` elementwise residual additions (latency trace).
An attention module with ``attention_kernels = n`` is traced as one layer launching ``n`` kernels,
all of its FLOPs inside it (``devices.roofline``); one with ``reads_children_weights = True`` uses its
children's weights functionally, so when it runs all of them count (``cost.count_params``). The
markers are class attributes, so the cost models need not import the backbones (and torchvision).

This class implements ``forward``, ``forward_from_stem``, ``forward_patterns`` and the gate
checks once; a backbone sets the attributes in ``GatedNet.__init__``'s docstring and ``head``.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import nn

from gatesearch.models.norm import UNIT_OFF, UNIT_ON, unit_switch
from gatesearch.patterns import SkipPattern

#: ``(unit_index, unit_input) -> keep [B]``: data-dependent gates decide per unit.
GateFn = Callable[[int, torch.Tensor], torch.Tensor]
Gates = Union[SkipPattern, torch.Tensor, GateFn, None]

Output = Union[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]


class GatedNet(nn.Module):
    """Base class of every gated backbone. A subclass sets, in its ``__init__``:

    ``stem``, ``stages`` (see the module docstring), ``n_units`` (int), ``unit_channels``
    (``tuple[int, ...]``, per unit: the channel / embedding width of the unit's input, what a gate
    head sees), ``gate_heads`` (``nn.ModuleList`` of one head per unit, or ``None``), ``gating``
    (``stage``/``block``/``none``), ``switchable_bn`` (bool: base blocks carry two norm sets),
    ``num_classes``, ``in_channels`` and ``input_size`` (the side of the input it is built for);
    and implements ``head``. ``shared_prefix`` is optional.
    """

    stem: nn.Module
    stages: nn.ModuleList
    n_units: int
    unit_channels: tuple[int, ...]
    gate_heads: nn.ModuleList | None
    gating: str
    switchable_bn: bool
    num_classes: int
    in_channels: int
    input_size: int

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last stage's output -> logits ``[B, num_classes]``."""
        raise NotImplementedError

    def shared_prefix(self, h: torch.Tensor) -> torch.Tensor | None:
        """What the first stage's first base block computes from the stem output before its first
        norm (ResNets: its ``conv1``), the same in every sub-network; ``None``: nothing to share."""
        return None

    def forward(self, x: torch.Tensor, gates: Gates = None, return_features: bool = False) -> Output:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``.

        ``gates``: ``None`` (all units on), a ``SkipPattern`` (skipped units are not computed),
        a ``[B or 1, n_units]`` tensor of keep factors, or a ``GateFn`` called with each unit's input.
        With ``return_features`` also returns each stage's output (CNNs: ``[B, C_s, H_s, W_s]``).
        """
        return self.forward_from_stem(self.stem(x), gates, return_features)

    def forward_from_stem(self, h: torch.Tensor, gates: Gates = None, return_features: bool = False,
                          conv1_out: torch.Tensor | None = None) -> Output:
        """``forward`` after the stem (``h = model.stem(x)``); ``conv1_out``: ``shared_prefix(h)``
        if already computed (see ``forward_patterns``)."""
        self._check_gates(gates)
        features = []
        for s, stage in enumerate(self.stages):
            h = stage(h, gates, conv1_out if s == 0 else None)
            features.append(h)
        logits = self.head(h)
        return (logits, features) if return_features else logits

    def forward_patterns(self, x: torch.Tensor, patterns: Sequence[Gates], return_features: bool = False) -> list[Output]:
        """``[forward(x, p, return_features) for p in patterns]``, sharing what sees the same input in
        every sub-network: the stem, and ``shared_prefix`` (the first convolution of the first
        stage's first base block; its norm already differs between switchable sets). Autograd sums
        their gradients, so each runs one forward and one backward for all patterns (ADN's step)."""
        h = self.stem(x)
        first = self.shared_prefix(h) if len(patterns) > 1 else None
        return [self.forward_from_stem(h, p, return_features, first) for p in patterns]

    def _check_gates(self, gates: Gates) -> None:
        if isinstance(gates, SkipPattern) and len(gates) != self.n_units:
            raise ValueError(f"skip pattern {gates} has {len(gates)} units; this model has {self.n_units}")
        if isinstance(gates, torch.Tensor) and (gates.dim() != 2 or gates.shape[1] != self.n_units):
            raise ValueError(f"gates tensor must be [B, {self.n_units}], got {list(gates.shape)}")

    def gate_parameters(self) -> list[nn.Parameter]:
        return [] if self.gate_heads is None else list(self.gate_heads.parameters())


GATINGS = ("stage", "block", "none")
STEMS = ("cifar", "imagenet")


def check_layout(gating: str, stem: str, switchable: bool | None, norm: str = "BN") -> bool:
    """Validate a backbone's ``gating`` / ``stem`` and resolve ``switchable`` (``None``: on for stage
    gating, the ADN layout); returns whether the mandatory blocks carry switchable ``norm`` sets."""
    if gating not in GATINGS:
        raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if switchable is None:
        switchable = gating == "stage"
    if switchable and gating != "stage":
        raise ValueError(f"switchable_bn needs gating='stage' (one {norm} set per state of the stage's unit)")
    return switchable


def stage_switch(gates: Gates, switch_unit: int | None, batch: int, norm: str = "BN") -> int | torch.Tensor:
    """Which norm set a stage's mandatory blocks use under ``gates``: ``UNIT_ON`` / ``UNIT_OFF`` for a
    pattern (one set, the other untouched), a ``[B]`` switch for keep tensors (``norm.unit_switch``:
    the set follows whether the unit runs, so a calibrated full network uses the "unit runs" set)."""
    if switch_unit is None or gates is None:
        return UNIT_ON
    if isinstance(gates, SkipPattern):
        return UNIT_OFF if gates.skipped[switch_unit] else UNIT_ON
    if isinstance(gates, torch.Tensor):
        return unit_switch(gates[:, switch_unit]).expand(batch)  # [B]
    raise ValueError(f"switchable {norm} needs the gate decision before the stage runs: pass a SkipPattern or a "
                     "[B, n_units] tensor, or build the model with switchable_bn=False for data-dependent gates")
