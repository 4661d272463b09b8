"""Cost of a sub-network: MACs and parameters, measured by running it.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2 for the matmul/conv/attention ops it
counts; ``gatesearch.flops`` adds CPU fused attention),
never from hand-kept tables; active parameters are those of the modules that actually ran,
so a skipped unit's weights and an unused switchable-BN set do not count.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from gatesearch.flops import flop_counter
from gatesearch.models import Gates


@torch.no_grad()
def count_macs(model: nn.Module, gates: Gates, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of an input ``[B, C, H, W]`` (``input_shape``) under ``gates``."""
    was_training = model.training
    model.eval()
    x = torch.zeros(input_shape, device=_device_of(model))
    with flop_counter() as counter:  # counts CPU fused attention too
        model(x, gates)
    model.train(was_training)
    return counter.get_total_flops() // 2


#: Modules that use their children's weights functionally (the children are never called, so no
#: hook sees them run): when one of these runs, all of its parameters count.
WHOLE_MODULES: tuple[type[nn.Module], ...] = (ShiftedWindowAttention,)


@torch.no_grad()
def count_params(model: nn.Module, gates: Gates, input_shape: tuple[int, ...]) -> int:
    """Parameters (and BN affine weights) of the modules that run under ``gates``.

    Gate heads are not counted: an exported sub-network has fixed gates and no heads.
    """
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(id(mod))) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_shape, device=_device_of(model)), gates)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    ran |= {id(d) for m in model.modules() if id(m) in ran and isinstance(m, WHOLE_MODULES) for d in m.modules()}
    return sum(p.numel() for m in model.modules() if id(m) in ran for p in m.parameters(recurse=False))


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
