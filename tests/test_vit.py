"""ViT: torchvision state dicts load and give torchvision's logits; ADN Table 1 MACs and params."""

from __future__ import annotations

import pytest
import torch
from _training import one_thread
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import VisionTransformer

from gatesearch.cost import count_macs, count_params
from gatesearch.models import create_model
from gatesearch.models.norm import SwitchableLayerNorm
from gatesearch.models.vit import convert_torchvision_state_dict, load_torchvision
from gatesearch.patterns import SkipPattern, all_patterns

_threads = pytest.fixture(autouse=True)(one_thread)


def _randomized(ref: torch.nn.Module) -> torch.nn.Module:
    """torchvision's init zeroes the head (all logits 0): draw every parameter instead."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    return ref.eval()


@pytest.fixture(scope="module")
def b16() -> tuple[torch.nn.Module, torch.nn.Module]:
    ref = _randomized(vit_b_16(weights=None))
    model = create_model("vit_b_16", 1000, stem="imagenet").eval()
    load_torchvision(model, ref.state_dict())
    return ref, model


def test_vit_b_16_loads_torchvision_and_matches_its_logits(b16: tuple) -> None:
    ref, model = b16
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x, SkipPattern.super_net(4)), ref(x), atol=1e-5, rtol=0)
    ln = model.stages[0].base[0].ln_1
    assert isinstance(ln, SwitchableLayerNorm)  # both sets start from the pretrained LN
    theirs = ref.encoder.layers.encoder_layer_0.ln_1.weight
    assert torch.equal(ln.lns[0].weight, theirs) and torch.equal(ln.lns[1].weight, theirs)
    assert torch.equal(model.stages[0].units[0][0].ln_1.weight, ref.encoder.layers.encoder_layer_2.ln_1.weight)


def test_vit_b_16_matches_adn_table_1(b16: tuple) -> None:
    """ADN (Kang & Lee) Table 1, ViT-b/16-ADN: 86.59 M params, 17.58 G (super) / 11.76 G (base)
    "FLOPs" (MACs) at 224x224, 1000 classes; within 3 % (MACs) and 2 % (params)."""
    _, model = b16
    shape = (1, 3, 224, 224)
    assert count_macs(model, SkipPattern.super_net(4), shape) / 1e9 == pytest.approx(17.58, rel=0.03)
    assert count_macs(model, SkipPattern.base_net(4), shape) / 1e9 == pytest.approx(11.76, rel=0.03)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(86.59, rel=0.02)
    # the switchable LN's second sets: 8 mandatory blocks x 2 LNs x (weight + bias) x 768
    assert sum(p.numel() for p in model.parameters()) - count_params(model, None, shape) == 8 * 2 * 2 * 768


@pytest.mark.parametrize("gating", ["stage", "block", "none"])
def test_small_vit_loads_torchvision_in_every_layout(gating: str) -> None:
    """A torchvision ``VisionTransformer`` of vit_ti_4's shape loads into each gating layout."""
    ref = _randomized(VisionTransformer(32, 4, 12, 3, 192, 768, num_classes=10))
    model = create_model("vit_ti_4", 10, gating=gating).eval()
    load_torchvision(model, ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
        if gating == "stage":  # the base-net equals torchvision's net without the skippable blocks
            for i in (11, 8, 5, 2):
                del ref.encoder.layers[i]
            torch.testing.assert_close(model(x, SkipPattern.base_net(4)), ref(x), atol=1e-5, rtol=0)
    assert len(all_patterns(model.n_units)) == 2 ** {"stage": 4, "block": 12, "none": 0}[gating]


def test_conversion_rejects_a_foreign_state_dict_and_keeps_gate_heads() -> None:
    ref = VisionTransformer(32, 4, 12, 3, 192, 768, num_classes=10)
    model = create_model("vit_ti_4", 10, gate_head="logit")
    heads = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("gate_heads.")}
    converted = convert_torchvision_state_dict(model, ref.state_dict())
    assert all(torch.equal(converted[k], v) for k, v in heads.items())
    with pytest.raises(ValueError, match="unexpected torchvision ViT key"):
        convert_torchvision_state_dict(model, {**ref.state_dict(), "extra.weight": torch.zeros(1)})
    partial = {k: v for k, v in ref.state_dict().items() if not k.startswith("heads.")}
    with pytest.raises(ValueError, match="leaves 2 keys unset"):
        convert_torchvision_state_dict(model, partial)
    wide = VisionTransformer(32, 4, 12, 3, 96, 768, num_classes=10)
    with pytest.raises(ValueError, match="has no place"):
        convert_torchvision_state_dict(model, wide.state_dict())
