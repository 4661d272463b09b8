import pytest

from gatesearch.cost import count_macs, count_params
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern, all_patterns


@pytest.fixture(scope="module")
def resnet50():
    return create_model("resnet50", 1000, gating="stage", stem="imagenet")


def test_resnet50_macs_match_adn_table1(resnet50):
    """ADN (Kang & Lee), Table 1: ResNet-50 super-net 4.11 GMACs, base-net 2.58 GMACs at 224x224."""
    shape = (1, 3, 224, 224)
    full = count_macs(resnet50, SkipPattern.parse("FFFF"), shape)
    base = count_macs(resnet50, SkipPattern.parse("TTTT"), shape)
    assert full == pytest.approx(4.11e9, rel=0.02)
    assert base == pytest.approx(2.58e9, rel=0.02)
    for p in all_patterns(4):
        assert base <= count_macs(resnet50, p, shape) <= full


def test_resnet50_params_and_unused_bn_set_not_counted(resnet50):
    shape = (1, 3, 64, 64)
    full = count_params(resnet50, SkipPattern.parse("FFFF"), shape)
    total = sum(p.numel() for p in resnet50.parameters())
    switch_bn_affine = sum(
        2 * m.num_features for m in resnet50.modules() if type(m).__name__ == "BatchNorm2d"
    )  # rough upper bound check only
    assert full < total < full + switch_bn_affine
    assert full == pytest.approx(25.56e6, rel=0.01)  # torchvision resnet50: 25.557 M
    assert count_params(resnet50, SkipPattern.parse("TTTT"), shape) < full


def test_macs_scale_with_batch():
    m = create_model("resnet20", 10)
    one = count_macs(m, None, (1, 3, 32, 32))
    assert count_macs(m, None, (4, 3, 32, 32)) == 4 * one
    assert one == pytest.approx(40.8e6, rel=0.02)  # CIFAR ResNet-20: ~41 M MACs
