"""export.py: pruned sub-networks match the gated model, in torch, TorchScript and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _training import one_thread

from gatesearch.cost import count_params
from gatesearch.errors import UserError
from gatesearch.export import PrunedResNet, export, prune
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern, all_patterns

_one_thread = pytest.fixture(autouse=True)(one_thread)  # tiny convs: one thread is faster


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet20", 10, gating="stage").eval()  # switchable BN: both sets must differ
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(1 + 0.3 * torch.randn(mod.num_features, generator=g))
    return m


@pytest.mark.parametrize("pattern", [str(p) for p in all_patterns(3)])
def test_pruned_matches_and_counts(model: torch.nn.Module, pattern: str) -> None:
    p = SkipPattern.parse(pattern)
    net = prune(model, p)
    assert isinstance(net, PrunedResNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x, p), atol=1e-5)
    assert sum(t.numel() for t in net.parameters()) == count_params(model, p, (1, 3, 32, 32))
    n_blocks = sum(len(s.base) + sum(len(u) for j, u in enumerate(s.units) if not p.skipped[s.unit_offset + j])
                   for s in model.stages)
    assert len(net.blocks) == n_blocks


@pytest.mark.parametrize("pattern", ["FFFTFFFFF", "FFFTFFTFF", "TTTTTTTTT", "FTFTTFTFT"])
def test_pruned_skipping_a_downsampling_unit_matches(pattern: str) -> None:
    """Block gating gates each stage's first block (units 3 and 6 of resnet20 change the shape): the
    pruned network keeps a skipped one's shortcut and matches the gated model; params match too."""
    torch.manual_seed(0)
    m = create_model("resnet20", 10, gating="block").eval()
    g = torch.Generator().manual_seed(2)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
            mod.weight.data.copy_(1 + 0.3 * torch.randn(mod.num_features, generator=g))
    p = SkipPattern.parse(pattern)
    net = prune(m, p)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), m(x, p), atol=1e-5, rtol=1e-5)
    assert sum(t.numel() for t in net.parameters()) == count_params(m, p, (1, 3, 32, 32))
    assert len(net.blocks) == p.skipped.count(False) + sum(p.skipped[u] for u in (3, 6))


def test_onnx_every_pattern_matches_onnxruntime(model: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(3, 3, 32, 32)
    for p in all_patterns(3):
        path = export(model, p, "onnx", tmp_path / f"{p}.onnx", (3, 32, 32))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x.numpy()})  # batch 3 through a batch-1 export: the axis is dynamic
        with torch.no_grad():
            ref = model(x, p).numpy()
        assert np.abs(y - ref).max() <= 1e-4, str(p)


def test_base_net_onnx_param_count(model: torch.nn.Module, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    base = SkipPattern.base_net(3)
    expected = count_params(model, base, (1, 3, 32, 32))
    net = prune(model, base)
    assert sum(t.numel() for t in net.parameters()) == expected < count_params(model, None, (1, 3, 32, 32))
    path = export(model, base, "onnx", tmp_path / "base.onnx", (3, 32, 32))
    n_onnx = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    # eval-mode export folds each BN into its conv: the BN's 2C affine parameters become the
    # conv's C-element bias, so the graph holds exactly C fewer numbers per BN.
    folded = sum(m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert n_onnx == expected - folded


def test_torchscript(model: torch.nn.Module, tmp_path: Path) -> None:
    p = SkipPattern.parse("FTF")
    path = export(model, p, "torchscript", tmp_path / "m.pt", (3, 32, 32))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x, p), atol=1e-5)


def test_errors(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has 2 units"):
        prune(model, SkipPattern.parse("TF"))
    with pytest.raises(UserError, match="unknown export format"):
        export(model, SkipPattern.parse("TFF"), "tflite", tmp_path / "x", (3, 32, 32))
