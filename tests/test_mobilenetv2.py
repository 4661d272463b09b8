"""models/mobilenetv2.py: ADN's split, torchvision weights, and every consumer of the GatedNet
protocol (trie, export, latency, methods) on the small variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from _training import one_thread

from gatesearch.config import from_flat
from gatesearch.cost import count_params
from gatesearch.devices.roofline import trace_layers
from gatesearch.devices.timing import profile_rows
from gatesearch.evaluate import candidate_table
from gatesearch.evaluate.walk import evaluate_patterns_naive, evaluate_patterns_trie
from gatesearch.export import export, prune
from gatesearch.methods import METHODS
from gatesearch.models import create_model
from gatesearch.models.mobilenetv2 import InvertedResidual, convert_torchvision_state_dict
from gatesearch.models.norm import PlainNorm, SwitchableBatchNorm2d
from gatesearch.patterns import SkipPattern, all_patterns

_one_thread = pytest.fixture(autouse=True)(one_thread)  # small convs: one thread is faster
SMALL = "mobilenet_v2_x0_5"


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct BN statistics and affines everywhere, so a wrong set or a reused activation shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(SMALL, 10, gating="stage", stem="cifar")
    _randomise_bn(m)
    return m.eval()


def test_adn_split_of_the_inverted_residual_stages() -> None:
    """ADN (papers/001 Sec. 4.1) / official code: the stages of n = 2, 3, 4, 3, 3 blocks keep
    1, 2, 2, 2, 2 mandatory blocks; the base-net drops torchvision's features.3, 6, 9, 10, 13, 16."""
    m = create_model("mobilenet_v2", 1000, stem="imagenet")
    assert [(len(s.base), [len(u) for u in s.units]) for s in m.stages] == [
        (1, [1]), (2, [1]), (2, [2]), (2, [1]), (2, [1])]
    assert m.unit_channels == (24, 32, 64, 96, 160) and m.n_units == 5
    blocks = [b for s in m.stages for b in list(s.base) + [b for u in s.units for b in u]]
    unit_blocks = {id(b) for s in m.stages for u in s.units for b in u}
    assert [i + 2 for i, b in enumerate(blocks) if id(b) in unit_blocks] == [3, 6, 9, 10, 13, 16]
    # switchable BN in every mandatory block of a gated stage, plain BN in the units
    norms = (SwitchableBatchNorm2d, PlainNorm)
    for s in m.stages:
        assert {type(n) for b in s.base for n in b.modules() if isinstance(n, norms)} == {SwitchableBatchNorm2d}
        assert {type(n) for u in s.units for b in u for n in b.modules() if isinstance(n, norms)} == {PlainNorm}
    block = create_model("mobilenet_v2", 1000, gating="block", stem="imagenet")
    assert block.n_units == 1 + 2 + 3 + 2 + 2  # every block with an identity shortcut
    assert all(b.use_res_connect for s in block.stages for u in s.units for b in u)


@pytest.mark.parametrize("name, width", [("mobilenet_v2", 1.0), (SMALL, 0.5)])
def test_torchvision_state_dict_loads_and_gives_its_logits(name: str, width: float) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(weights=None, width_mult=width, num_classes=17)
    _randomise_bn(tv)
    tv.eval()
    model = create_model(name, 17, stem="imagenet")
    model.load_state_dict(convert_torchvision_state_dict(model, tv.state_dict()), strict=True)
    model.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)
        assert torch.allclose(model(x, SkipPattern.super_net(5)), tv(x), atol=1e-5)
    # both switchable sets are copies of the pretrained BN: features.2.conv.0.1
    sw = model.stages[0].base[0].conv[0][1]
    ref = tv.features[2].conv[0][1]
    for bn in sw.bns:
        assert torch.equal(bn.weight, ref.weight) and torch.equal(bn.running_var, ref.running_var)


def test_torchvision_state_dict_of_another_width_is_rejected() -> None:
    tv = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    model = create_model("mobilenet_v2", 1000, stem="imagenet")
    with pytest.raises((ValueError, RuntimeError)):
        model.load_state_dict(convert_torchvision_state_dict(model, tv.state_dict()), strict=True)


def test_skipped_units_run_no_code(small: torch.nn.Module) -> None:
    called: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda mod, inp, s=s: called.append(s))
             for s, stage in enumerate(small.stages) for u in stage.units for b in u]
    try:
        with torch.no_grad():
            small(torch.randn(1, 3, 32, 32), SkipPattern.parse("TFTTF"))
    finally:
        for h in hooks:
            h.remove()
    assert called == [1, 4]  # one block in stage 1's unit, one in stage 4's


@pytest.mark.parametrize("gating", ["stage", "block"])
def test_pattern_path_equals_tensor_path(gating: str) -> None:
    torch.manual_seed(0)
    model = create_model(SMALL, 10, gating=gating, stem="cifar")
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    patterns = all_patterns(model.n_units) if model.n_units <= 5 else \
        [SkipPattern(tuple(bool((i >> u) & 1) for u in range(model.n_units))) for i in range(0, 2**model.n_units, 37)]
    with torch.no_grad():
        for p in patterns:
            assert torch.allclose(model(x, p), model(x, p.keep_tensor(3)), atol=1e-5), str(p)


def test_soft_keep_scales_the_residual_branch(small: torch.nn.Module) -> None:
    """A unit block with keep k computes x + k * F(x) (MobileNetV2: no activation after the add)."""
    block = small.stages[2].units[0][0]
    assert isinstance(block, InvertedResidual) and block.use_res_connect
    x = torch.randn(2, block.conv[0][0].in_channels, 4, 4)
    k = torch.tensor([0.0, 0.3])
    with torch.no_grad():
        f = block.conv[3](block.conv[2](block.conv[1](block.conv[0](x))))
        assert torch.allclose(block(x, scale=k), x + k.view(-1, 1, 1, 1) * f, atol=1e-6)
        assert torch.equal(block(x, scale=torch.zeros(2)), x)


def test_trie_equals_naive(small: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    patterns = all_patterns(small.n_units)
    trie = evaluate_patterns_trie(small, data, patterns)
    naive = evaluate_patterns_naive(small, data, patterns)
    assert [(s.pattern, s.correct1, s.correct5) for s in trie] == [(s.pattern, s.correct1, s.correct5) for s in naive]


@pytest.mark.parametrize("gate_head", ["logit", "aig"])
def test_candidate_table_with_probgates_strategies(gate_head: str) -> None:
    torch.manual_seed(0)
    model = create_model(SMALL, 10, stem="cifar", gate_head=gate_head, switchable_bn=False).eval()
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    rows = candidate_table(model, None, data, "cpu", input_shape=(3, 32, 32), thresholds=(0.5,), runs=2)
    assert {s.strategy for s in rows} == {"pattern", "threshold:0.50", "always_on", "stochastic", "ensemble"}
    assert sum(s.strategy == "pattern" for s in rows) == 2**5


def test_forward_patterns_equals_separate_forwards(small: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    pats = [SkipPattern.super_net(5), SkipPattern.base_net(5)]
    with torch.no_grad():
        shared = small.forward_patterns(x, pats, return_features=True)
        for (lg, feats), p in zip(shared, pats):
            ref, ref_feats = small(x, p, return_features=True)
            assert torch.equal(lg, ref) and all(torch.equal(a, b) for a, b in zip(feats, ref_feats))
    assert [f.shape[1] for f in feats] == [16, 16, 32, 48, 80]  # x0.5 widths rounded to 8s


def test_export_every_pattern_matches_torch_and_onnxruntime(small: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 32, 32)
    for p in all_patterns(small.n_units):
        net = prune(small, p)
        n_blocks = sum(len(s.base) + sum(len(u) for j, u in enumerate(s.units) if not p.skipped[s.unit_offset + j])
                       for s in small.stages)
        assert len(net.blocks) == n_blocks
        assert sum(t.numel() for t in net.parameters()) == count_params(small, p, (1, 3, 32, 32))
        path = export(small, p, "onnx", tmp_path / f"{p}.onnx", (3, 32, 32))
        (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = small(x, p)
            assert torch.allclose(net(x), ref, atol=1e-5), str(p)
        assert np.abs(y - ref.numpy()).max() <= 1e-4, str(p)


def test_latency_trace_and_profile(small: torch.nn.Module) -> None:
    full = trace_layers(small, SkipPattern.super_net(5), (1, 3, 32, 32))
    base = trace_layers(small, SkipPattern.base_net(5), (1, 3, 32, 32))
    adds = lambda layers: sum(1 for layer in layers if layer.kind == "add")  # noqa: E731
    # residual blocks: super-net 10 (blocks with an identity shortcut), base-net 4 (6 skipped)
    assert adds(full) == 10 and adds(base) == 4
    assert sum(layer.flops for layer in base) < sum(layer.flops for layer in full)
    rows = profile_rows(small, (3, 32, 32), batch=1, runs=1, warmup=0, device_name="host")
    assert {r.pattern for r in rows} == {str(p) for p in all_patterns(5)} | {f"unit:{u}" for u in range(5)}


@pytest.mark.parametrize("method, extra", [
    ("plain", {}), ("stochastic_depth", {}), ("adn", {}), ("gated_depth", {"method.gated_depth.k": 1}),
    ("gated_depth", {}), ("probgates", {"model.gate_head": "logit"}),
    ("probgates", {"model.gate_head": "aig", "model.gating": "block"}),
])
def test_one_training_step_per_method(method: str, extra: dict) -> None:
    from gatesearch.checkpoint import build_model

    cfg = from_flat({"model.name": SMALL, "data.name": "digits", "method.name": method, "train.device": "cpu", **extra})
    torch.manual_seed(0)
    model = build_model(cfg, 10, (1, 8, 8)).train()
    m = METHODS.get(method)(cfg, model, steps_per_epoch=10)
    opt = torch.optim.SGD([p for g in m.param_groups(model) for p in g["params"]], lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    res = m.train_step(model, x, y, step=0, epoch=0, backward=lambda loss: loss.backward())
    if res.loss is not None:
        assert torch.isfinite(res.loss)
        res.loss.backward()
    opt.step()
    assert all(np.isfinite(v) for v in res.parts.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_evaluates_and_checkpoints(tmp_path: Path) -> None:
    """The trainer, its per-epoch evaluation of every pattern and the checkpoint round trip."""
    from _training import quick_cfg

    from gatesearch.checkpoint import load_checkpoint
    from gatesearch.train import fit

    cfg = quick_cfg(str(tmp_path), "adn", model__name=SMALL, train__epochs=1, train__max_steps_per_epoch=3,
                    train__eval_every=1, train__eval_all_patterns_max_units=5)
    metrics = fit(cfg).metrics
    assert {"top1_super", "top1_base", "top1_TFTFT"} <= set(metrics)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.model.n_units == 5 and ck.input_shape == (1, 8, 8) and ck.num_classes == 10


def test_cli_profile_export_and_patterns(small: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``gatesearch profile`` / ``export`` from a MobileNetV2 checkpoint; ``patterns`` at 224x224."""
    from gatesearch.checkpoint import save_checkpoint
    from gatesearch.cli import main

    cfg = from_flat({"model.name": SMALL, "model.stem": "cifar", "data.name": "cifar10"})
    ck = save_checkpoint(tmp_path / "mv2.pt", small, cfg, epoch=0, metrics={}, input_shape=(3, 32, 32), num_classes=10)
    assert main(["profile", "--checkpoint", str(ck), "--out", str(tmp_path / "lut.csv"), "--runs", "1",
                 "--warmup", "0"]) == 0
    assert main(["export", "--checkpoint", str(ck), "--pattern", "TFTFT", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file() and "wrote" in capsys.readouterr().out
    assert main(["patterns", "--model", "mobilenet_v2", "--image-size", "224", "--num-classes", "1000",
                 "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "stem=imagenet" in out and "FFFFF        300.77" in out and "all parameters 3.520 M" in out
