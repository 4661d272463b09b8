"""ViT / Swin as gated models: switchable LayerNorm, gate paths, skipping, every method, export, cost."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _training import one_thread, quick_cfg
from torch import nn

from gatesearch.cost import count_macs, count_params
from gatesearch.devices.roofline import trace_layers
from gatesearch.evaluate.walk import evaluate_patterns_naive, evaluate_patterns_trie
from gatesearch.export import export, prune
from gatesearch.methods import METHODS
from gatesearch.models import create_model
from gatesearch.models.norm import PlainLayerNorm, SwitchableLayerNorm
from gatesearch.models.vit import SelfAttention
from gatesearch.patterns import SkipPattern, all_patterns

_threads = pytest.fixture(autouse=True)(one_thread)
SMALL = ("vit_ti_4", "swin_nano_2")
X_SHAPE = (2, 3, 32, 32)


def _randomize_ln(model: nn.Module, seed: int = 1) -> nn.Module:
    """Distinct affine weights in every LayerNorm (both switchable sets differ), and a non-zero head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        model.fc.weight.copy_(0.05 * torch.randn(model.fc.weight.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=SMALL)
def small(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_ln(create_model(request.param, 10, stem="cifar")).eval()


# ----------------------------------------------------------------- switchable LayerNorm


@pytest.mark.parametrize("training", [True, False])
def test_switchable_ln_against_two_layernorms(training: bool) -> None:
    """Reference: two plain ``nn.LayerNorm``s; int picks one, a [B] tensor k gives k*on + (1-k)*off
    per sample (0/1 routes each sample to one set), with the same gradients."""
    torch.manual_seed(0)
    on, off = nn.LayerNorm(6), nn.LayerNorm(6)
    for ln in (on, off):
        nn.init.normal_(ln.weight)
        nn.init.normal_(ln.bias)
    sw = SwitchableLayerNorm(6)
    sw.lns[0].load_state_dict(on.state_dict())
    sw.lns[1].load_state_dict(off.state_dict())
    sw.train(training)
    x = torch.randn(4, 5, 6)
    torch.testing.assert_close(sw(x, 0), on(x))
    torch.testing.assert_close(sw(x, 1), off(x))
    for keep in (torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0.25, 0.5, 0.9, 0.0])):
        k = keep.view(-1, 1, 1)
        xa, ka = x.clone().requires_grad_(), keep.clone().requires_grad_()
        xb, kb = x.clone().requires_grad_(), keep.clone().requires_grad_()
        y = sw(xa, ka)
        ref = kb.view(-1, 1, 1) * on(xb) + (1 - kb.view(-1, 1, 1)) * off(xb)
        torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
        if keep.eq(1).logical_or(keep.eq(0)).all():  # 0/1: each sample exactly its own set's output
            torch.testing.assert_close(y, torch.where(k.bool(), on(x), off(x)), atol=1e-6, rtol=1e-5)
        g = torch.randn_like(y)
        sw.zero_grad(), on.zero_grad(), off.zero_grad()
        y.backward(g)
        ref.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ka.grad, kb.grad, atol=1e-5, rtol=1e-5)
        for mine, theirs in ((sw.lns[0], on), (sw.lns[1], off)):
            torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mine.bias.grad, theirs.bias.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SMALL)
def test_switchable_ln_only_in_mandatory_blocks(name: str) -> None:
    model = create_model(name, 10)
    for stage in model.stages:
        assert all(isinstance(m, SwitchableLayerNorm) for b in stage.base for m in b.children()
                   if isinstance(m, (SwitchableLayerNorm, nn.LayerNorm)))
        assert not any(isinstance(m, SwitchableLayerNorm) for u in stage.units for m in u.modules())
    plain = create_model(name, 10, switchable_bn=False)
    assert not any(isinstance(m, SwitchableLayerNorm) for m in plain.modules())
    assert any(isinstance(m, PlainLayerNorm) for m in plain.modules())
    with pytest.raises(ValueError, match="switchable_bn needs gating='stage'"):
        create_model(name, 10, gating="block", switchable_bn=True)


@pytest.mark.parametrize("name, units", [("vit_ti_4", (4, 12)), ("swin_nano_2", (4, 8))])
def test_split_as_adn(name: str, units: tuple[int, int]) -> None:
    """Stage gating: one unit per stage (ViT: the last of each 3 blocks; Swin: the last half of each
    stage, patch merging mandatory); block gating: every shape-keeping block its own unit."""
    stage, block = create_model(name, 10), create_model(name, 10, gating="block")
    assert (stage.n_units, block.n_units) == units
    assert all(len(s.units) == 1 and len(s.units[0]) == 1 for s in stage.stages)
    if name == "vit_ti_4":
        assert [len(s.base) for s in stage.stages] == [2, 2, 2, 2]
    else:  # [merging?] + 1 of 2 Swin blocks
        assert [type(b).__name__ for b in stage.stages[1].base] == ["PatchMerging", "SwinBlock"]
        assert [len(s.base) for s in block.stages] == [0, 1, 1, 1]


# ----------------------------------------------------------------- gate paths


@pytest.mark.parametrize("gating", ["stage", "block"])
def test_pattern_path_equals_tensor_path(small: nn.Module, gating: str) -> None:
    """Every pattern (stage gating, and swin_nano_2's 256 block-gated ones; a seeded sample of 24 of
    vit_ti_4's 4096 block-gated ones) through a 0/1 tensor gives the pattern path's logits."""
    model = small if gating == "stage" else _randomize_ln(create_model(_name(small), 10, gating="block")).eval()
    patterns = all_patterns(model.n_units)
    if len(patterns) > 256:
        patterns = random.Random(0).sample(patterns, 24)
    x = torch.randn(*X_SHAPE)
    with torch.no_grad():
        for p in patterns:
            torch.testing.assert_close(model(x, p.keep_tensor(2)), model(x, p), atol=1e-5, rtol=1e-5, msg=str(p))


def _name(model: nn.Module) -> str:
    return "vit_ti_4" if type(model).__name__ == "GatedViT" else "swin_nano_2"


def test_soft_keep_scales_both_residual_branches(small: nn.Module) -> None:
    """The documented rule written out: each unit block computes h + k*attn(n1(h)), then + k*mlp(n2(h));
    a stage's base blocks use, per sample, LN set "on" where its unit's k > 0 and "off" where k = 0."""
    x = torch.randn(*X_SHAPE)
    keep = torch.rand(2, small.n_units)
    keep[0, 1] = keep[1, 3] = 0.0  # two samples skip a unit: their base blocks use the other LN set
    with torch.no_grad():
        h = small.stem(x)
        for stage in small.stages:
            k = keep[:, stage.unit_offset].view(-1, *([1] * (h.dim() - 1)))
            for b in stage.base:
                if type(b).__name__ == "PatchMerging":
                    h = torch.where(k > 0, b(h, 0), b(h, 1))
                    continue
                n1, n2, attn, mlp = _parts(b)
                h = h + attn(_route(n1, h, k))
                h = h + mlp(_route(n2, h, k))
            for b in stage.units[0]:
                n1, n2, attn, mlp = _parts(b)
                h = h + k * attn(n1(h))
                h = h + k * mlp(n2(h))
        ref = small.head(h)
        torch.testing.assert_close(small(x, keep), ref, atol=1e-5, rtol=1e-5)


def _route(ln: SwitchableLayerNorm, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.where(k > 0, ln.lns[0](t), ln.lns[1](t))


def _parts(block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    if hasattr(block, "ln_1"):
        return block.ln_1, block.ln_2, block.self_attention, block.mlp
    return block.norm1, block.norm2, block.attn, block.mlp


def test_skipped_units_run_no_code(small: nn.Module) -> None:
    called: list[int] = []
    for stage in small.stages:
        for j, unit in enumerate(stage.units):
            for m in unit.modules():
                m.register_forward_pre_hook(lambda mod, inp, u=stage.unit_offset + j: called.append(u))
    try:
        with torch.no_grad():
            small(torch.randn(*X_SHAPE), SkipPattern.parse("TFTT"))
        assert called and set(called) == {1}
    finally:
        for m in small.modules():
            m._forward_pre_hooks.clear()


def test_features_and_gate_inputs_are_channel_first_maps(small: nn.Module) -> None:
    _, feats = small(torch.randn(*X_SHAPE), None, return_features=True)
    assert all(f.dim() == 4 and f.shape[1] == c for f, c in zip(feats, small.unit_channels))
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)  # views, no copy
    seen = []

    def fn(u: int, h: torch.Tensor) -> torch.Tensor:
        seen.append((u, h.dim(), h.shape[1]))
        return torch.ones(h.shape[0])

    model = create_model(_name(small), 10, gating="block", gate_head="aig").eval()
    model(torch.randn(*X_SHAPE), fn)
    assert seen == [(u, 4, c) for u, c in enumerate(model.unit_channels)]


def test_forward_patterns_equals_separate_forwards(small: nn.Module) -> None:
    x = torch.randn(*X_SHAPE)
    pats = [SkipPattern.super_net(4), SkipPattern.base_net(4), SkipPattern.parse("FTFT")]
    with torch.no_grad():
        for (a, fa), p in zip(small.forward_patterns(x, pats, return_features=True), pats):
            b, fb = small(x, p, return_features=True)
            torch.testing.assert_close(a, b)
            for s, t in zip(fa, fb):
                torch.testing.assert_close(s, t)


def test_trie_equals_naive(small: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    loader = [(torch.randn(*X_SHAPE, generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(2)]
    pats = all_patterns(small.n_units)
    assert evaluate_patterns_trie(small, loader, pats) == evaluate_patterns_naive(small, loader, pats)


# ----------------------------------------------------------------- methods


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("method, extra", [
    ("plain", {}), ("stochastic_depth", {}), ("adn", {}), ("adn", {"method__adn__two_backward": True}),
    ("gated_depth", {"method__gated_depth__k": 1}), ("gated_depth", {}),
    ("probgates", {"model__gate_head": "logit"}),
    ("probgates", {"model__gate_head": "aig", "model__gating": "block"}),
])
def test_one_training_step_per_method(name: str, method: str, extra: dict, tmp_path: Path) -> None:
    # the 3x32x32 synthetic set: the shape the step below trains on (check_names refuses a ViT on 8x8 digits)
    cfg = quick_cfg(str(tmp_path), method, model__name=name, data__name="synthetic", **extra)
    m = cfg.model
    torch.manual_seed(0)
    model = create_model(name, 10, gating=m.gating, switchable_bn=m.switchable_bn,
                         gate_head=None if m.gate_head == "none" else m.gate_head).train()
    algo = METHODS.get(method)(cfg, model, 10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    res = algo.train_step(model, x, y, 0, 0, lambda loss: loss.backward())
    if res.loss is not None:
        assert torch.isfinite(res.loss)
        res.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if method == "probgates":
        assert all(p.grad is not None for p in model.gate_parameters())


# ----------------------------------------------------------------- export and cost


def test_pruned_every_pattern_matches_and_counts(small: nn.Module) -> None:
    x = torch.randn(*X_SHAPE)
    for p in all_patterns(small.n_units):
        net = prune(small, p)
        assert not any(isinstance(m, SwitchableLayerNorm) for m in net.modules())
        with torch.no_grad():
            torch.testing.assert_close(net(x), small(x, p), atol=1e-5, rtol=1e-5, msg=str(p))
        assert sum(t.numel() for t in net.parameters()) == count_params(small, p, (1, 3, 32, 32))


@pytest.mark.parametrize("which", [
    "FFFF TTTT TFFT", pytest.param("every", marks=pytest.mark.slow),  # ~4 s per export on a loaded CPU
])
def test_onnx_patterns_match_onnxruntime(small: nn.Module, which: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(3, 3, 32, 32)
    patterns = all_patterns(small.n_units) if which == "every" else [SkipPattern.parse(p) for p in which.split()]
    for p in patterns:
        path = export(small, p, "onnx", tmp_path / f"{p}.onnx", (3, 32, 32))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x.numpy()})  # batch 3 through a batch-1 export: dynamic axis
        with torch.no_grad():
            ref = small(x, p).numpy()
        assert np.abs(y - ref).max() <= 1e-4, str(p)


def test_count_macs_counts_attention() -> None:
    """One attention layer, written out: in-projection N*D*3D, QK^T and PV N*N*D each, out-projection
    N*D*D MACs (torch's fused CPU attention kernel must be counted)."""
    n, d, heads = 10, 12, 3

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = SelfAttention(d, heads)

        def forward(self, x: torch.Tensor, gates: object = None) -> torch.Tensor:
            return self.attn(x)

    assert count_macs(Wrap(), None, (1, n, d)) == n * d * 3 * d + 2 * n * n * d + n * d * d


def test_latency_trace_counts_attention_layernorm_and_gelu(small: nn.Module) -> None:
    """Every FLOP lands in a traced layer; each block contributes one attention layer, two LayerNorms,
    one GELU and two residual adds."""
    for p in (SkipPattern.super_net(4), SkipPattern.base_net(4)):
        layers = trace_layers(small, p, (1, 3, 32, 32))
        assert sum(layer.flops for layer in layers) == 2 * count_macs(small, p, (1, 3, 32, 32))
        kinds = [layer.kind for layer in layers]
        n_blocks = sum(1 for s in small.stages for b in list(s.base) + [b for j, u in enumerate(s.units)
                       if not p.skipped[s.unit_offset + j] for b in u] if type(b).__name__ != "PatchMerging")
        merges = sum(1 for s in small.stages for b in s.base if type(b).__name__ == "PatchMerging")
        stem_ln = 1 if _name(small) == "swin_nano_2" else 0
        assert kinds.count("attn") == kinds.count("act") == n_blocks
        assert kinds.count("add") == 2 * n_blocks
        assert kinds.count("layernorm") == 2 * n_blocks + merges + 1 + stem_ln  # + final norm
        assert all(layer.flops > 0 for layer in layers if layer.kind == "attn")


@pytest.mark.parametrize("name, method", [("vit_ti_4", "adn"), ("swin_nano_2", "probgates")])
def test_fit_evaluates_and_checkpoints_a_transformer(name: str, method: str, tmp_path: Path) -> None:
    """The trainer, the every-pattern evaluation and the checkpoint round trip on a transformer
    (synthetic 32x32 data, two steps)."""
    from gatesearch.checkpoint import load_checkpoint
    from gatesearch.train import fit

    cfg = quick_cfg(str(tmp_path), method, model__name=name, data__name="synthetic", data__synthetic_size=48,
                    data__batch_size=8, data__eval_batch_size=48, train__epochs=1, train__max_steps_per_epoch=2,
                    train__eval_every=1, optim__name="adamw", optim__lr=1e-3, optim__weight_decay=0.05)
    result = fit(cfg)
    assert {"top1_super", "top1_base", "top1_FTFT"} <= set(result.metrics)
    ck = load_checkpoint(tmp_path / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for p in (SkipPattern.super_net(4), SkipPattern.base_net(4)):
            torch.testing.assert_close(ck.model(x, p), result.model.eval()(x, p))
    if name != "swin_nano_2":
        return  # the CLI part once (the cheaper model): the selector (trie, latency model, menus), export
    from gatesearch.cli import main

    assert main(["select", "--checkpoint", str(tmp_path / "last.pt"), "--device", "jetson",
                 "--out", str(tmp_path / "menus")]) == 0
    menu = json.loads((tmp_path / "menus" / "jetson-orin-nano" / "menu.json").read_text())
    assert {e["pattern"] for e in menu["entries"] if e["strategy"] == "pattern"} == {str(p) for p in all_patterns(4)}
    assert main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--pattern", "TFTF", "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 0


def test_gate_options_reach_the_transformer_gates() -> None:
    model = create_model("vit_ti_4", 10, gate_head="logit", gate_init_keep=0.7)
    probs = [torch.softmax(h(torch.zeros(1)), -1)[0, 1].item() for h in model.gate_heads]
    assert probs == pytest.approx([0.7] * 4)
    with pytest.raises(ValueError, match="gate_downsample"):
        create_model("swin_nano_2", 10, gating="block", gate_downsample=True)


def test_torchscript_export_and_profile_rows(small: nn.Module, tmp_path: Path) -> None:
    """TorchScript export of the base-net traces and matches; ``profile`` rows cover every pattern and unit."""
    from gatesearch.devices.timing import profile_rows

    p = SkipPattern.base_net(4)
    path = export(small, p, "torchscript", tmp_path / "base.pt", (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), small(x, p), atol=1e-5, rtol=1e-5)
    rows = profile_rows(small, (3, 32, 32), batch=1, runs=1, warmup=0, device_name="host")
    assert {r.pattern for r in rows} == {str(q) for q in all_patterns(4)} | {f"unit:{u}" for u in range(4)}


def test_roofline_charges_attention_kernels_and_unfused_layernorm() -> None:
    """t = max(flops / (peak * eff), bytes / bw) + kernels * launch, summed; on a fusing profile a
    LayerNorm still costs a kernel while GELU (an activation) is folded and dropout costs nothing."""
    from dataclasses import replace

    from gatesearch.devices.profiles import get_device
    from gatesearch.devices.roofline import Layer, predict_ms

    prof = replace(get_device("jetson"), conv_overhead_us=0.0)
    assert prof.fused_elementwise
    peak, bw, launch = prof.peak_flops * prof.efficiency, prof.mem_bandwidth_gbs * 1e9, prof.launch_overhead_us * 1e-6
    attn = Layer("a", "attn", 4_000_000, 50_000, kernels=3)
    ln = Layer("n", "layernorm", 0, 20_000)
    expected = (max(4e6 / peak, 50_000 * prof.bytes_per_element / bw) + 3 * launch
                + max(0.0, 20_000 * prof.bytes_per_element / bw) + launch)
    layers = [attn, ln, Layer("g", "act", 0, 20_000), Layer("d", "noop", 0, 20_000)]
    assert predict_ms(layers, prof) == pytest.approx(1e3 * expected)
