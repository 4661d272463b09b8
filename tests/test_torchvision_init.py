"""Model initialisation: ``model.init_from`` (a torchvision ResNet state dict loads strictly into a
GatedResNet and gives torchvision's logits at full depth, under every gating layout) and
``model.zero_init_residual``."""

import pytest
import torch
import torchvision
from _training import one_thread, quick_cfg

from gatesearch.config import ConfigError
from gatesearch.errors import UserError
from gatesearch.models import create_model
from gatesearch.models.norm import SwitchableBatchNorm2d
from gatesearch.models.torchvision_init import (
    TORCHVISION_RESNETS,
    load_torchvision_file,
    load_torchvision_state,
    torchvision_key_map,
)
from gatesearch.patterns import SkipPattern

_threads = pytest.fixture(autouse=True)(one_thread)


def _torchvision(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """A torchvision ResNet (weights=None) with non-trivial BN statistics and affines, so a BN left
    unmapped or mapped to the wrong place changes the logits."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return tv.eval()


@pytest.mark.parametrize("name", TORCHVISION_RESNETS)
@pytest.mark.parametrize("gating", ["stage", "block", "none"])
def test_key_map_covers_both_state_dicts_exactly(name, gating):
    tv_keys = set(getattr(torchvision.models, name)(weights=None).state_dict())
    model = create_model(name, 1000, gating=gating, stem="imagenet")
    mapping = torchvision_key_map(model)
    assert set(mapping) == tv_keys
    targets = [t for ts in mapping.values() for t in ts]
    assert len(targets) == len(set(targets)) and set(targets) == set(model.state_dict())


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
@pytest.mark.parametrize("gating", ["stage", "block", "none"])
def test_torchvision_state_dict_gives_torchvisions_logits_at_full_depth(name, gating):
    tv = _torchvision(name)
    model = create_model(name, 1000, gating=gating, stem="imagenet")
    load_torchvision_state(model, tv.state_dict())
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x, SkipPattern.super_net(model.n_units)), expected, rtol=1e-5, atol=1e-5)
    # both switchable-BN sets start from the pretrained BN
    switchable = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    assert bool(switchable) == (gating == "stage")
    stage = model.stages[0]
    first = (list(stage.base) + [b for unit in stage.units for b in unit])[0].bn1  # torchvision's layer1.0
    tv_bn1 = tv.layer1[0].bn1
    for bn in getattr(first, "bns", [getattr(first, "bn", None)]):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            torch.testing.assert_close(getattr(bn, attr), getattr(tv_bn1, attr))


def test_torchvision_file_via_config_and_fit(tmp_path):
    from gatesearch.train import fit

    tv = _torchvision("resnet18", num_classes=10)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = quick_cfg(str(tmp_path), "plain", model__name="resnet18", model__stem="imagenet", model__init_from=str(path),
                    data__name="synthetic", data__synthetic_size=8, data__batch_size=4, train__epochs=1,
                    train__max_steps_per_epoch=1, optim__lr=1e-9, optim__weight_decay=0.0, train__channels_last=False)
    model = fit(cfg).model  # lr ~0: the one step leaves the loaded weights where they were
    ours, theirs = model.state_dict(), tv.state_dict()
    for tv_key, targets in torchvision_key_map(model).items():
        if "running_" in tv_key or "num_batches" in tv_key:
            continue  # the training step moved the BN statistics
        for t in targets:
            torch.testing.assert_close(ours[t], theirs[tv_key], rtol=0, atol=1e-6)


def test_init_from_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model.init_from"):
        quick_cfg(str(tmp_path), "plain", model__init_from="x.pth")  # resnet20, cifar stem: no torchvision layout
    model = create_model("resnet50", 1000, stem="imagenet")
    with pytest.raises(UserError, match="does not exist"):
        load_torchvision_file(model, tmp_path / "missing.pth")
    wrong = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="model.init_from: .*not a torchvision state dict") as e:
        load_torchvision_file(model, wrong)
    assert "\n" not in str(e.value)
    classes = tmp_path / "r50_10.pth"
    torch.save(torchvision.models.resnet50(weights=None, num_classes=10).state_dict(), classes)
    with pytest.raises(UserError, match="fc.weight has shape"):
        load_torchvision_file(model, classes)


@pytest.mark.parametrize("zero", [False, True])
def test_zero_init_residual_switch(tmp_path, zero):
    """model.zero_init_residual: every residual branch's last BN weight starts at 0 (Goyal et al. 2017)
    or at 1 (default, as torchvision, ADN's official code and ConvNet-AIG)."""
    from gatesearch.checkpoint import build_model

    model = build_model(quick_cfg(str(tmp_path), "plain", model__zero_init_residual=zero), 10, (1, 8, 8))
    for stage in model.stages:
        for block in list(stage.base) + [b for unit in stage.units for b in unit]:
            for bn in getattr(block.bn2, "bns", [getattr(block.bn2, "bn", None)]):
                assert torch.all(bn.weight == (0.0 if zero else 1.0))
            assert torch.all(getattr(block.bn1, "bns", [getattr(block.bn1, "bn", None)])[0].weight == 1.0)
