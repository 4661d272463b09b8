"""Swin: torchvision state dicts load and give torchvision's logits; ADN / Gated Depth Table 1 figures."""

from __future__ import annotations

import pytest
import torch
from _training import one_thread
from torchvision.models import swin_t
from torchvision.models.swin_transformer import SwinTransformer

from gatesearch.cost import count_macs
from gatesearch.models import create_model
from gatesearch.models.norm import SwitchableLayerNorm
from gatesearch.models.swin import GatedSwin, load_torchvision
from gatesearch.patterns import SkipPattern

_threads = pytest.fixture(autouse=True)(one_thread)
SHAPE = (1, 3, 224, 224)


def _randomized(ref: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    return ref.eval()


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.nn.Module]:
    ref = _randomized(swin_t(weights=None))
    model = create_model("swin_t", 1000, stem="imagenet").eval()
    load_torchvision(model, ref.state_dict())
    return ref, model


def test_swin_t_loads_torchvision_and_matches_its_logits(tiny: tuple) -> None:
    ref, model = tiny
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
    merge = model.stages[1].base[0].norm  # patch merging opens stage 2, switched by stage 2's unit
    assert isinstance(merge, SwitchableLayerNorm)
    assert torch.equal(merge.lns[0].weight, ref.features[2].norm.weight)
    assert torch.equal(merge.lns[1].weight, ref.features[2].norm.weight)


def test_swin_t_matches_table_1(tiny: tuple) -> None:
    """ADN Table 1, Swin-T-ADN: 28.30 M params, super-net 4.49 G MACs. The official split [1, 1, 3, 1]
    (ADN's code, ``depths_base``) gives the base-net 2.34 G of the Gated Depth paper's Table 1
    (Swin-ADN (T)); ADN's own 2.69 G is the base-net of the split [1, 1, 4, 1]."""
    _, model = tiny
    assert count_macs(model, SkipPattern.super_net(4), SHAPE) / 1e9 == pytest.approx(4.49, rel=0.03)
    assert count_macs(model, SkipPattern.base_net(4), SHAPE) / 1e9 == pytest.approx(2.34, rel=0.03)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(28.30, rel=0.02)
    adn = GatedSwin(4, 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 1000, mandatory=(1, 1, 4, 1))
    assert count_macs(adn, SkipPattern.base_net(4), SHAPE) / 1e9 == pytest.approx(2.69, rel=0.03)


@pytest.mark.parametrize("gating", ["stage", "block", "none"])
def test_small_swin_loads_torchvision_in_every_layout(gating: str) -> None:
    ref = _randomized(SwinTransformer([2, 2], 32, [2, 2, 2, 2], [1, 2, 4, 8], [4, 4], stochastic_depth_prob=0.0,
                                      num_classes=10))
    model = create_model("swin_nano_2", 10, gating=gating).eval()
    load_torchvision(model, ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
        if gating == "stage":  # base-net: torchvision's net without each stage's second block
            for s in (1, 3, 5, 7):
                del ref.features[s][1]
            torch.testing.assert_close(model(x, SkipPattern.base_net(4)), ref(x), atol=1e-5, rtol=0)


def test_conversion_rejects_a_deeper_torchvision_swin() -> None:
    from gatesearch.models.swin import convert_torchvision_state_dict

    deeper = SwinTransformer([2, 2], 32, [2, 2, 3, 2], [1, 2, 4, 8], [4, 4], num_classes=10)
    with pytest.raises(ValueError, match="unexpected torchvision Swin key 'features.5.2"):
        convert_torchvision_state_dict(create_model("swin_nano_2", 10), deeper.state_dict())
