import pytest
import torch
from _tolerance import layers, rounding_tol

from gatesearch.models import MODELS, create_model, mandatory_blocks
from gatesearch.models.blocks import BasicBlock
from gatesearch.models.gated_resnet import Stage
from gatesearch.models.gates import AIGGate, BernoulliGate, LogitGate, gumbel_gate
from gatesearch.models.norm import PlainNorm, SwitchableBatchNorm2d
from gatesearch.patterns import SkipPattern, all_patterns

SMALL_INPUT = {"cifar": (2, 3, 32, 32), "imagenet": (2, 3, 64, 64)}


@pytest.mark.parametrize("n, expected", [(2, 1), (3, 2), (4, 2), (6, 3), (9, 5), (18, 9), (23, 12)])
def test_adn_split(n, expected):
    assert mandatory_blocks(n) == expected


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("gating", ["stage", "block", "none"])
def test_every_model_builds_and_runs(name, gating):
    stem = "cifar" if name in ("resnet20", "resnet56", "resnet110", "vit_ti_4", "swin_nano_2") else "imagenet"
    model = create_model(name, 7, gating=gating, stem=stem).eval()
    transformer = name.startswith(("vit", "swin"))  # built for one input size (ViT: its position embeddings)
    x = torch.randn(2, 3, model.input_size, model.input_size) if transformer else torch.randn(SMALL_INPUT[stem])
    n_stages = len(model.stages)
    if gating == "stage":
        assert model.n_units == n_stages
    if gating == "none":
        assert model.n_units == 0
    with torch.no_grad():
        out = model(x, SkipPattern.base_net(model.n_units))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name, size, stem", [("resnet20", 32, "cifar"), ("resnet50", 64, "imagenet")])
def test_pattern_path_equals_tensor_path(name, size, stem):
    torch.manual_seed(0)
    model = create_model(name, 10, stem=stem)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        for p in all_patterns(model.n_units):
            a = model(x, p)
            b = model(x, p.keep_tensor(3))
            assert torch.allclose(a, b, atol=1e-5), str(p)


def _scaled_residual_reference(model, x, keep):
    """The documented tensor-gate rule written out: each unit block computes relu(shortcut(h) + k * F(h)); a
    switchable base uses the "unit runs" set for every sample whose unit runs at all (k > 0), the
    "unit skipped" set where k = 0 (ADN Sec. 3.4's switch is discrete; soft k only scales)."""
    h = model.stem(x)
    for stage in model.stages:
        k_sw = keep[:, stage.switch_unit] if stage.switch_unit is not None else None
        # value 1[k > 0], gradient that of k (straight-through)
        which = (k_sw > 0).float() + (k_sw - k_sw.detach()) if k_sw is not None else 0
        for block in stage.base:
            h = block(h, which)
        for j, unit in enumerate(stage.units):
            k = keep[:, stage.unit_offset + j].view(-1, 1, 1, 1)
            for b in unit:
                shortcut = h if b.downsample is None else b.downsample.bn(b.downsample.conv(h))
                h = torch.relu(shortcut + k * b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(h))))))
    return model.fc(torch.flatten(model.pool(h), 1))


@pytest.mark.parametrize("name, gating", [("resnet56", "stage"), ("resnet20", "block")])
def test_soft_keep_scales_each_unit_blocks_residual_branch(name, gating):
    """Soft keep factors (calibration, relaxed gates): values and the keep gradient follow
    relu(h + k * F(h)) per block of the unit (resnet56's stage units hold 4 blocks). Two float32
    computations of a 58-layer network: tolerances from the magnitude and depth (``_tolerance``)."""
    torch.manual_seed(0)
    model = create_model(name, 10, gating=gating)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    keep = torch.rand(3, model.n_units, requires_grad=True)
    ref_keep = keep.detach().clone().requires_grad_()
    out, ref = model(x, keep), _scaled_residual_reference(model, x, ref_keep)
    tol = rounding_tol(ref, layers(model))
    torch.testing.assert_close(out, ref, **tol)
    with torch.no_grad():  # the tolerance is far below what the keep factors change
        assert (model(x) - ref).abs().max() > 1e3 * tol["atol"]
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(keep.grad, ref_keep.grad, **rounding_tol(ref_keep.grad, layers(model)))


def test_gated_units_must_keep_their_shape():
    with pytest.raises(ValueError, match="keep their input shape"):
        Stage([], [[BasicBlock(16, 32, 2, PlainNorm)]], 0, False)


@pytest.mark.parametrize("name, stem, every_block, shape_preserving", [
    ("resnet20", "cifar", 9, 3 + 2 + 2),  # stage 1 keeps its shape from the first block on
    ("resnet110", "cifar", 54, 18 + 17 + 17),
    ("resnet50", "imagenet", 16, 2 + 3 + 5 + 2),  # every stage's first bottleneck changes shape
    ("resnet101", "imagenet", 33, 2 + 3 + 22 + 2),
])
def test_block_gating_unit_counts(name, stem, every_block, shape_preserving):
    """AIG and 002_...txt Sec. 4.2.1 ("ResNet-50 (16 gates)"): a gate on every block by default;
    ``gate_downsample=False`` keeps each stage's shape-changing first block mandatory."""
    assert create_model(name, 10, gating="block", stem=stem).n_units == every_block
    assert create_model(name, 10, gating="block", stem=stem, gate_downsample=False).n_units == shape_preserving
    with pytest.raises(ValueError, match="gate_downsample needs gating='block'"):
        create_model(name, 10, gating="stage", stem=stem, gate_downsample=True)


def _sample_patterns(n_units: int, k: int, seed: int = 0) -> list[SkipPattern]:
    g = torch.Generator().manual_seed(seed)
    drawn = [SkipPattern(tuple(bool(b) for b in torch.rand(n_units, generator=g) < 0.5)) for _ in range(k)]
    return [SkipPattern.super_net(n_units), SkipPattern.base_net(n_units), *drawn]


@pytest.mark.parametrize("name, size, stem", [("resnet20", 32, "cifar"), ("resnet50", 64, "imagenet")])
def test_gated_downsampling_unit_pattern_tensor_and_gate_fn_paths_agree(name, size, stem):
    """Block gating with downsampling units: a skipped unit is ``relu(shortcut(h))``; the pattern
    path, 0/1 keep tensors and a GateFn returning the same 0/1 decisions give the same logits."""
    torch.manual_seed(0)
    model = create_model(name, 10, gating="block", stem=stem)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        for p in _sample_patterns(model.n_units, 6):
            a = model(x, p)
            keep = p.keep_tensor(3)
            torch.testing.assert_close(model(x, keep), a, atol=1e-5, rtol=1e-5, msg=str(p))
            torch.testing.assert_close(model(x, lambda u, h, keep=keep: keep[:, u]), a, atol=1e-5, rtol=1e-5)


def test_skipped_downsampling_unit_runs_its_shortcut_only():
    model = create_model("resnet20", 10, gating="block").eval()
    stage = model.stages[1]
    block = stage.units[0][0]
    assert block.downsample is not None and len(stage.base) == 0
    called: list[str] = []
    block.conv1.register_forward_hook(lambda *_: called.append("conv1"))
    block.downsample.register_forward_hook(lambda *_: called.append("shortcut"))
    u = stage.unit_offset
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x, SkipPattern(tuple(i == u for i in range(model.n_units))))
        assert called == ["shortcut"]
        h = model.stages[0](model.stem(x), None)
        out = model.stages[1](h, SkipPattern(tuple(i == u for i in range(model.n_units))))
        ref = torch.relu(block.downsample(h))  # written out: shortcut(x) + 0 * F(x), then ReLU
        for b in stage.units[1:]:
            ref = b[0](ref)
    torch.testing.assert_close(out, ref)


def test_skipped_units_run_no_code():
    model = create_model("resnet56", 10).eval()
    called: list[tuple[int, int]] = []
    for s, stage in enumerate(model.stages):
        for unit in stage.units:
            for b, block in enumerate(unit):
                block.register_forward_pre_hook(lambda mod, inp, key=(s, b): called.append(key))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), SkipPattern.parse("TFT"))
    assert called and {s for s, _ in called} == {1}  # only stage 1's unit ran
    assert len(called) == len(model.stages[1].units[0]) == 4


def test_switchable_bn_uses_one_set_per_flag():
    model = create_model("resnet20", 10).train()
    bn = model.stages[0].base[0].bn1
    assert isinstance(bn, SwitchableBatchNorm2d)
    before = [b.running_mean.clone() for b in bn.bns]
    model(torch.randn(4, 3, 32, 32), SkipPattern.parse("TFF"))  # stage 0's unit skipped -> OFF set
    assert torch.equal(bn.bns[0].running_mean, before[0])
    assert not torch.equal(bn.bns[1].running_mean, before[1])


def test_switchable_bn_optional_and_rejected_for_block_gating():
    plain = create_model("resnet20", 10, switchable_bn=False)
    assert not any(isinstance(m, SwitchableBatchNorm2d) for m in plain.modules())
    with pytest.raises(ValueError, match="switchable_bn needs gating='stage'"):
        create_model("resnet20", 10, gating="block", switchable_bn=True)


def _mandatory_downsampling_blocks(model) -> list:
    return [b for stage in model.stages for b in stage.base if b.downsample is not None]


def test_mandatory_shortcut_bn_is_one_bn_shared_by_every_sub_network():
    """ADN's official ResNet (``wchkang/depth`` ``models/resnet.py``: ``downsample`` holds one
    ``norm_layer``): a mandatory block's residual branch switches BN sets, its downsampling shortcut
    keeps one BN that the super-net and the base-net both use and train."""
    model = create_model("resnet20", 10).train()
    blocks = _mandatory_downsampling_blocks(model)
    assert len(blocks) == 2  # stages 2 and 3 open with a stride-2 mandatory block
    for b in blocks:
        assert isinstance(b.bn1, SwitchableBatchNorm2d) and isinstance(b.downsample.bn, PlainNorm)
    shared = blocks[0].downsample.bn.bn
    for pattern in ("FFF", "TTT"):
        before = shared.running_mean.clone()
        model(torch.randn(4, 3, 32, 32), SkipPattern.parse(pattern))
        assert not torch.equal(shared.running_mean, before), pattern
    fresh = create_model("resnet20", 10)
    fresh.load_state_dict(model.state_dict())  # strict: the layout round-trips through a state dict
    with pytest.raises(RuntimeError, match=r"downsample\.bn\.bns\.0\.weight"):
        create_model("resnet20", 10, switchable_shortcut_bn=True).load_state_dict(model.state_dict())


def test_switchable_shortcut_bn_switches_the_shortcut_too():
    """``switchable_shortcut_bn=True`` (the layout before issue 23): the shortcut BN has the two
    sets of its block's residual branch; the base-net uses and trains only the "unit skipped" set."""
    model = create_model("resnet20", 10, switchable_shortcut_bn=True).train()
    bn = _mandatory_downsampling_blocks(model)[0].downsample.bn
    assert isinstance(bn, SwitchableBatchNorm2d)
    before = [b.running_mean.clone() for b in bn.bns]
    model(torch.randn(4, 3, 32, 32), SkipPattern.parse("TTT"))
    assert torch.equal(bn.bns[0].running_mean, before[0]) and not torch.equal(bn.bns[1].running_mean, before[1])
    with pytest.raises(ValueError, match="switchable_shortcut_bn needs switchable_bn"):
        create_model("resnet20", 10, switchable_bn=False, switchable_shortcut_bn=True)


def test_resnet50_parameters_are_the_official_adn_count():
    """ADN's official ResNet-50 has 25,583,144 parameters (Table 1: 25.58 M): torchvision's
    25,557,032 plus a second set of bn1-bn3 in the 2 + 2 + 3 + 2 mandatory blocks, 26,112. Switching
    the four shortcut BNs too adds 2 * (256 + 512 + 1024 + 2048) = 7,680."""
    def count(**kw) -> int:
        return sum(p.numel() for p in create_model("resnet50", 1000, stem="imagenet", **kw).parameters())

    assert count() == 25_583_144
    assert count(switchable_shortcut_bn=True) == 25_583_144 + 7_680


def test_wrong_pattern_length_is_clear():
    model = create_model("resnet20", 10)
    with pytest.raises(ValueError, match="has 4 units; this model has 3"):
        model(torch.randn(1, 3, 32, 32), SkipPattern.parse("FFFF"))
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        model(torch.randn(1, 3, 32, 32), torch.ones(1, 4))


def test_features_per_stage():
    model = create_model("resnet20", 10).eval()
    logits, feats = model(torch.randn(2, 3, 32, 32), None, return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_gate_heads_start_at_the_configured_keep_rate():
    """ConvNet-AIG's head init (tiny final-layer weights, biases for the initial rate): on random
    input every gate of a freshly built model keeps with probability ~init_keep, nearly constant."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating="block", gate_head="aig", gate_init_keep=0.9).train()
    x = torch.randn(16, 3, 32, 32)
    probs = []

    def fn(u: int, h: torch.Tensor) -> torch.Tensor:
        probs.append(torch.softmax(model.gate_heads[u](h), -1)[:, 1])
        return torch.ones(h.shape[0])

    with torch.no_grad():
        model(x, fn)
    p = torch.stack(probs)  # [n_units, B]
    assert p.shape == (model.n_units, 16)
    assert (p.mean(1) - 0.9).abs().max() < 0.01  # every gate's mean
    assert p.std(1).max() < 0.01  # spread over inputs
    logit = create_model("resnet20", 10, gating="block", gate_head="logit", gate_init_keep=0.8)
    for head in logit.gate_heads:
        torch.testing.assert_close(torch.softmax(head(x[:1]), -1)[0, 1], torch.tensor(0.8))


def test_gate_fn_is_called_with_unit_input():
    model = create_model("resnet20", 10, gating="block", gate_head="aig").eval()
    seen = []

    def fn(u: int, h: torch.Tensor) -> torch.Tensor:
        seen.append((u, h.shape[1]))
        keep, _ = gumbel_gate(model.gate_heads[u](h), tau=1.0)
        return keep

    model(torch.randn(2, 3, 32, 32), fn)
    assert [u for u, _ in seen] == list(range(model.n_units))
    assert [c for _, c in seen] == list(model.unit_channels)


def test_gumbel_gate_hard_values_soft_gradient_and_temperature():
    torch.manual_seed(0)
    logits = torch.zeros(1000, 2, requires_grad=True)
    keep, prob = gumbel_gate(logits, tau=1.0)
    assert set(keep.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(prob, torch.full_like(prob, 0.5))
    keep.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the temperature is used: a low tau makes the relaxed sample nearly hard, a high tau nearly 0.5
    torch.manual_seed(1)
    soft_cold, _ = gumbel_gate(torch.zeros(2000, 2), tau=0.05, hard=False)
    torch.manual_seed(1)
    soft_hot, _ = gumbel_gate(torch.zeros(2000, 2), tau=50.0, hard=False)
    assert (soft_cold - 0.5).abs().mean() > 0.4 > 0.01 > (soft_hot - 0.5).abs().mean()
    with pytest.raises(ValueError):
        gumbel_gate(logits, tau=0.0)


def test_gate_modules_shapes_and_rates():
    torch.manual_seed(0)
    x = torch.randn(4000, 8, 4, 4)
    keep, prob = gumbel_gate(BernoulliGate(0.3)(x), tau=1.0)
    assert abs(keep.mean().item() - 0.3) < 0.03 and torch.allclose(prob, torch.full_like(prob, 0.3))
    assert LogitGate(init_keep=0.9)(x).shape == (4000, 2)
    assert AIGGate(8)(x[:16]).shape == (16, 2)
    with pytest.raises(ValueError):
        BernoulliGate(1.0)


def _randomize_bn(model: torch.nn.Module) -> None:
    """Give every BN non-trivial statistics and affine weights, so BN-set mix-ups would show."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _switchable_and_references(c: int, momentum: float | None = 0.1) -> tuple[SwitchableBatchNorm2d, list]:
    """A switchable BN with random affine and running statistics, and two plain BatchNorm2d copies of its sets."""
    sbn = SwitchableBatchNorm2d(c)
    for bn in sbn.bns:
        torch.nn.init.normal_(bn.weight)
        torch.nn.init.normal_(bn.bias)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.momentum = momentum
    ref = [torch.nn.BatchNorm2d(c, momentum=momentum) for _ in range(2)]
    for r, bn in zip(ref, sbn.bns):
        r.load_state_dict(bn.state_dict())
    return sbn, ref


def _bn_with(x: torch.Tensor, bn: torch.nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BatchNorm written out: ``w * (x - mean) / sqrt(var + eps) + b`` with the given ``[C]`` statistics."""
    c = (1, -1, 1, 1)
    return bn.weight.view(c) * (x - mean.view(c)) / torch.sqrt(var.view(c) + bn.eps) + bn.bias.view(c)


def _assert_same_buffers(sbn: SwitchableBatchNorm2d, ref: list) -> None:
    for r, bn in zip(ref, sbn.bns):
        torch.testing.assert_close(bn.running_mean, r.running_mean)
        torch.testing.assert_close(bn.running_var, r.running_var)
        assert int(bn.num_batches_tracked) == int(r.num_batches_tracked)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_switchable_bn_routes_each_sample_to_its_set(layout, momentum):
    """ADN Sec. 3.4: keep=1 samples use (and train) the "unit runs" set, keep=0 samples the "unit
    skipped" set. Reference: two plain BatchNorm2d, each run on its own sub-batch — outputs,
    gradients (input and affine), running statistics over two batches (momentum and cumulative)."""
    torch.manual_seed(0)
    sbn, ref = _switchable_and_references(8, momentum)
    sbn.train()
    # the last batch sends one sample to the ON set: a batch of 5x5 values, normalised with its own statistics
    for keep_list in ([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]):
        keep = torch.tensor(keep_list, requires_grad=True)
        on, off = keep.detach().bool().nonzero().flatten(), (~keep.detach().bool()).nonzero().flatten()
        x = torch.randn(6, 8, 5, 5).contiguous(memory_format=layout).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        gw = torch.randn(6, 8, 5, 5)  # a fixed upstream gradient
        y = sbn(x, keep)
        assert y.is_contiguous(memory_format=layout)
        y_on, y_off = ref[0](x_ref[on]), ref[1](x_ref[off])
        torch.testing.assert_close(y[on], y_on, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y[off], y_off, rtol=1e-5, atol=1e-5)
        params = [p for bn in sbn.bns for p in bn.parameters()]
        params_ref = [p for r in ref for p in r.parameters()]
        grads = torch.autograd.grad((y * gw).sum(), [x, *params])
        grads_ref = torch.autograd.grad((y_on * gw[on]).sum() + (y_off * gw[off]).sum(), [x_ref, *params_ref])
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
        _assert_same_buffers(sbn, ref)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_switchable_bn_keep_gradient_is_the_switch_of_one_sample(layout):
    """Straight-through keep gradient: ``dL/dk_b = sum g_b * (BN_on(x_b) - BN_off(x_b))`` with each
    set's statistics of this batch (its own sub-batch's) held fixed, written out here."""
    torch.manual_seed(1)
    sbn, _ = _switchable_and_references(4)
    sbn.train()
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], requires_grad=True)
    x = torch.randn(5, 4, 3, 3).contiguous(memory_format=layout)
    gw = torch.randn(5, 4, 3, 3)
    (g_keep,) = torch.autograd.grad((sbn(x, keep) * gw).sum(), keep)
    m = keep.detach().bool()
    var_on, mean_on = torch.var_mean(x[m], dim=(0, 2, 3), correction=0)
    var_off, mean_off = torch.var_mean(x[~m], dim=(0, 2, 3), correction=0)
    diff = _bn_with(x, sbn.bns[0], mean_on, var_on) - _bn_with(x, sbn.bns[1], mean_off, var_off)
    torch.testing.assert_close(g_keep, (gw * diff).sum((1, 2, 3)).detach(), rtol=1e-4, atol=1e-4)


def test_switchable_bn_set_without_batch_statistics_uses_its_running_ones():
    """A set that receives no sample (or one sample of a 1x1 map: one value per channel) is not
    trained by the batch: its buffers stay, and the keep gradient normalises with its running stats."""
    torch.manual_seed(2)
    sbn, ref = _switchable_and_references(4)
    sbn.train()
    before = {k: v.clone() for k, v in sbn.bns[1].state_dict().items()}
    keep = torch.ones(6, requires_grad=True)
    x, gw = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3)
    y = sbn(x, keep)
    torch.testing.assert_close(y, ref[0](x), rtol=1e-5, atol=1e-5)
    for k, v in sbn.bns[1].state_dict().items():
        assert torch.equal(v, before[k]), k
    (g_keep,) = torch.autograd.grad((y * gw).sum(), keep)
    var_on, mean_on = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    off = sbn.bns[1]
    diff = _bn_with(x, sbn.bns[0], mean_on, var_on) - _bn_with(x, off, off.running_mean, off.running_var)
    torch.testing.assert_close(g_keep, (gw * diff).sum((1, 2, 3)).detach(), rtol=1e-4, atol=1e-4)
    # 1x1 maps, one sample skipped: the OFF set has one value per channel
    x1 = torch.randn(4, 4, 1, 1, requires_grad=True)
    y1 = sbn(x1, torch.tensor([1.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(y1[[0, 1, 3]], ref[0](x1[[0, 1, 3]]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1[2:3], _bn_with(x1[2:3], off, off.running_mean, off.running_var))
    (g_x,) = torch.autograd.grad(y1[2].sum(), x1)  # eval-style normalisation: a per-channel factor only
    torch.testing.assert_close(g_x[2].flatten(), (off.weight / torch.sqrt(off.running_var + off.eps)).detach())
    for k, v in sbn.bns[1].state_dict().items():
        assert torch.equal(v, before[k]), k


def test_switchable_bn_soft_keep_is_fractional_membership():
    """Soft k (documented meaning): weighted per-set statistics (weights k and 1 - k), output
    ``k * BN_on + (1 - k) * BN_off``, running variance ``weighted var * n / (n - 1)``, n = H*W*sum(weights)."""
    torch.manual_seed(3)
    sbn, _ = _switchable_and_references(3)
    sbn.train()
    old = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in sbn.bns]
    keep = torch.tensor([0.2, 1.0, 0.0, 0.7])
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = sbn(x, keep)
    y_ref, k = 0.0, keep.view(-1, 1, 1, 1)
    for i, w in enumerate((k, 1 - k)):
        n = w.sum() * 4
        mean = (w * x).sum((0, 2, 3)) / n
        var = (w * (x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / n
        y_ref = y_ref + w * _bn_with(x, sbn.bns[i], mean, var)
        torch.testing.assert_close(sbn.bns[i].running_mean, 0.9 * old[i][0] + 0.1 * mean.detach())
        torch.testing.assert_close(sbn.bns[i].running_var, 0.9 * old[i][1] + 0.1 * var.detach() * n / (n - 1))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gw = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad((y * gw).sum(), x)[0], torch.autograd.grad((y_ref * gw).sum(), x)[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_switchable_bn_eval_tensor_path_mixes_the_two_sets(layout):
    """Eval: ``k * bn_on(x) + (1 - k) * bn_off(x)`` with running statistics (exact at 0/1)."""
    torch.manual_seed(0)
    sbn, ref = _switchable_and_references(8)
    sbn.eval()
    x = torch.randn(6, 8, 5, 5).contiguous(memory_format=layout)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0, 1.0])
    k = keep.view(-1, 1, 1, 1)
    torch.testing.assert_close(sbn(x, keep), k * ref[0].eval()(x) + (1 - k) * ref[1].eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gating", ["stage", "block"])
def test_forward_patterns_equals_separate_forwards_and_shares_the_first_conv(gating):
    """ADN's super + base step on one graph: same logits, features and gradients as two forwards,
    with the stem and (stage gating) the first base block's conv1 run once."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating=gating).train()
    _randomize_bn(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    n = model.n_units
    # stage gating: super + base; block gating: two patterns that both run unit 0 (stage 1's first block)
    patterns = [SkipPattern.super_net(n), SkipPattern.base_net(n) if gating == "stage" else SkipPattern.parse("F" * (n - 1) + "T")]
    calls = {"stem": 0, "conv1": 0}
    first = model.stages[0].base[0] if len(model.stages[0].base) else model.stages[0].units[0][0]
    model.stem.register_forward_hook(lambda *_: calls.__setitem__("stem", calls["stem"] + 1))
    first.conv1.register_forward_hook(lambda *_: calls.__setitem__("conv1", calls["conv1"] + 1))
    joint = model.forward_patterns(x, patterns, return_features=True)
    assert calls == {"stem": 1, "conv1": 1 if gating == "stage" else 2}  # only a base block's conv1 is shared
    loss = sum(torch.nn.functional.cross_entropy(logits, y) + feats[0].mean() for logits, feats in joint)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    separate = [model(x, p, return_features=True) for p in patterns]
    loss_ref = sum(torch.nn.functional.cross_entropy(logits, y) + feats[0].mean() for logits, feats in separate)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    for (logits, feats), (logits_ref, feats_ref) in zip(joint, separate):
        torch.testing.assert_close(logits, logits_ref)
        for f, f_ref in zip(feats, feats_ref):
            torch.testing.assert_close(f, f_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_gate_pooling_gradient_is_the_mean_gradient():
    torch.manual_seed(0)
    gate = AIGGate(8)
    x = torch.randn(5, 8, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(gate(x).square().sum(), x)
    pooled = x.mean((2, 3), keepdim=True)
    ref = gate.fc2(torch.nn.functional.relu(gate.bn(gate.fc1(pooled)))).flatten(1)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g, g_ref)


def test_binary_concrete_sample_is_the_two_class_gumbel_softmax():
    """keep ~ Bernoulli(softmax(logits)[1]); the relaxed sample's mean at tau=1 matches the two-class
    Gumbel-softmax's (drawn here with explicit Gumbel noise)."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, 1.4]]).expand(200_000, 2)
    keep, prob = gumbel_gate(logits, tau=1.0)
    soft, _ = gumbel_gate(logits, tau=1.0, hard=False)
    gumbel = -torch.log(-torch.log(torch.rand(200_000, 2)))
    soft_ref = torch.softmax(logits + gumbel, -1)[:, 1]
    p = torch.softmax(logits[0], -1)[1]
    torch.testing.assert_close(prob, p.expand(200_000))
    assert abs(keep.mean() - p) < 0.005 and abs(soft.mean() - soft_ref.mean()) < 0.005
    assert abs(soft.std() - soft_ref.std()) < 0.005
