"""``torch.utils.flop_counter`` with the attention kernels it leaves out.

torch's flop counter registers the CUDA attention kernels (flash / memory-efficient / cuDNN)
but not the fused CPU kernel that ``F.scaled_dot_product_attention`` dispatches to on CPU
(``aten._scaled_dot_product_flash_attention_for_cpu``, and its backward), so a ViT's attention
would count 0 MACs there. Its formula is torch's own ``sdpa_flop_count`` (two matmuls,
``QK^T`` and ``PV``: ``4 * B * heads * N_q * N_k * d`` FLOPs), registered here as a custom mapping.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as fc

_aten = torch.ops.aten


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,  # noqa: ANN001
                       **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


EXTRA_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> fc.FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU fused attention (module docstring)."""
    return fc.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
