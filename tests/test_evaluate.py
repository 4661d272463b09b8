import pytest
import torch

from gatesearch.config import DataConfig
from gatesearch.data import build_data
from gatesearch.evaluate import PerBatch, evaluate, evaluate_ensemble, evaluate_stochastic, kl_between, reestimate_bn
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern


@pytest.fixture(scope="module")
def data():
    return build_data(DataConfig(name="digits", batch_size=64, eval_batch_size=128), seed=0)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_model("resnet20", 10, in_channels=1)


def test_evaluate_counts_and_strategies(model, data):
    r = evaluate(model, data.test, None, "cpu")
    assert r.n == len(data.test.dataset) and 0 <= r.top1 <= r.top5 <= 1 and r.correct1 == round(r.top1 * r.n)
    assert evaluate_ensemble(model, data.test, None, "cpu", runs=1) == r
    draws = []
    gates = PerBatch(lambda x: draws.append(len(x)) or SkipPattern.parse("FTF"))
    assert evaluate(model, data.test, gates, "cpu").n == r.n and sum(draws) == r.n
    mean, std = evaluate_stochastic(model, data.test, SkipPattern.parse("TTT"), "cpu", runs=2)
    assert std == pytest.approx(0.0) and 0 <= mean <= 1
    assert model.training  # evaluation restores the mode


def test_kl_between_same_pattern_is_zero(model, data):
    p = SkipPattern.parse("FFT")
    assert kl_between(model, data.test, p, p, "cpu") == pytest.approx(0.0, abs=1e-7)


def test_reestimate_bn_only_touches_the_patterns_path(model, data):
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    reestimate_bn(model, data.train, SkipPattern.base_net(3), n_batches=2, device="cpu")
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert "stem.1.running_mean" in changed
    assert not any(".units." in k for k in changed)  # skipped units keep their statistics
    assert any("bns.1" in k for k in changed) and not any("bns.0" in k for k in changed)  # OFF set only
    bn = model.stem[1]
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2


# ----------------------------------------------------------------- candidate_table: the one path


def _tiny(n_batches: int = 2, batch: int = 8, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def test_candidate_table_exhaustive_and_beam(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatesearch.evaluate import table as ev
    from gatesearch.evaluate.walk import evaluate_patterns_naive

    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating="block", gate_downsample=False).eval()  # 7 units
    data = _tiny(n_batches=1)
    rows = ev.candidate_table(model, None, data, "cpu", input_shape=(3, 8, 8))
    assert len(rows) == 2**7 and {r.strategy for r in rows} == {"pattern"}
    monkeypatch.setattr(ev, "EXHAUSTIVE_MAX_UNITS", 4)
    rows = ev.candidate_table(model, None, data, "cpu", input_shape=(3, 8, 8), beam_width=2)
    names = {r.pattern for r in rows}
    assert "F" * 7 in names and "T" * 7 in names and len(names) < 2**7
    direct = {s.pattern: s.correct1 for s in evaluate_patterns_naive(model, data, [SkipPattern.parse(p) for p in names])}
    assert all(direct[r.pattern] == r.correct1 for r in rows)


def test_candidate_table_costs_are_relative_macs() -> None:
    from gatesearch.cost import count_macs
    from gatesearch.evaluate import candidate_table

    model = create_model("resnet20", 10, gating="stage").eval()
    rows = {r.pattern: r for r in candidate_table(model, None, _tiny(1), "cpu", input_shape=(3, 8, 8))}
    full = count_macs(model, None, (1, 3, 8, 8))
    for p, r in rows.items():
        assert r.macs == count_macs(model, SkipPattern.parse(p), (1, 3, 8, 8))
        assert r.cost == pytest.approx(r.macs / full)
    assert rows["FFF"].cost == 1.0 and rows["TTT"].cost < rows["FTT"].cost < 1.0


def test_strategy_cost_is_the_expected_cost_of_its_rates() -> None:
    """A strategy that runs unit u for a fraction r_u of the samples costs, in expectation,
    base + sum_u r_u * (super - super-without-u) MACs (written out here from count_macs)."""
    from gatesearch.cost import count_macs
    from gatesearch.evaluate import candidate_table

    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating="stage", gate_head="logit").eval()
    rows = candidate_table(model, None, _tiny(2), "cpu", input_shape=(3, 8, 8), thresholds=(0.5,), runs=3)
    by = {r.strategy: r for r in rows}
    assert set(by) == {"pattern", "threshold:0.50", "always_on", "stochastic", "ensemble"}
    m = {p: count_macs(model, SkipPattern.parse(p), (1, 3, 8, 8)) for p in ("FFF", "TTT", "TFF", "FTF", "FFT")}
    r = by["stochastic"].unit_rates
    want = m["TTT"] + r[0] * (m["FFF"] - m["TFF"]) + r[1] * (m["FFF"] - m["FTF"]) + r[2] * (m["FFF"] - m["FFT"])
    assert by["stochastic"].macs == pytest.approx(want)
    assert by["ensemble"].macs == pytest.approx(3 * want) and by["ensemble"].cost == pytest.approx(3 * want / m["FFF"])
    assert by["always_on"].cost == pytest.approx(1.0)


def test_candidate_table_reestimated_bn_restores_model() -> None:
    from gatesearch.evaluate import candidate_table

    model = create_model("resnet20", 10, gating="stage", gate_head="logit").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = candidate_table(model, None, _tiny(1), "cpu", input_shape=(3, 8, 8), bn_loader=_tiny(2, seed=1),
                           bn_batches=1, thresholds=(0.5,), runs=2)
    assert len([r for r in rows if r.strategy == "pattern"]) == 8
    assert {r.strategy for r in rows} >= {"threshold:0.50", "always_on", "stochastic", "ensemble"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_calibrated_full_network_uses_unit_on_bn_and_scales_only_the_gated_residual() -> None:
    """Gated Depth Sec. 4 (000_...txt, "Inference-time Considerations"): the full network's gated
    sub-paths are scaled by p_s. Written out block by block: every mandatory block with its stage's
    "unit runs" BN set (index 0), every unit block as relu(h + p_s * F(h))."""
    from gatesearch.models.blocks import BasicBlock

    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating="stage").eval()
    for m in model.modules():  # distinct BN sets, so a blend of the two would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)
    p = [0.9, 0.7, 0.5]
    x = torch.randn(4, 3, 16, 16)

    def block_on(b: BasicBlock, h: torch.Tensor) -> torch.Tensor:  # the "unit runs" BN set, written out
        bn = lambda norm, t: norm.bns[0](t) if hasattr(norm, "bns") else norm.bn(t)  # noqa: E731
        idt = h if b.downsample is None else bn(b.downsample.bn, b.downsample.conv(h))
        out = torch.relu(bn(b.bn1, b.conv1(h)))
        return torch.relu(bn(b.bn2, b.conv2(out)) + idt)

    def unit_block(b: BasicBlock, h: torch.Tensor, ps: float) -> torch.Tensor:
        out = torch.relu(b.bn1.bn(b.conv1(h)))
        return torch.relu(h + ps * b.bn2.bn(b.conv2(out)))

    with torch.no_grad():
        h = model.stem(x)
        for s, stage in enumerate(model.stages):
            for b in stage.base:
                h = block_on(b, h)
            for b in stage.units[0]:
                h = unit_block(b, h, p[s])
        want = model.fc(torch.flatten(model.pool(h), 1))
        got = model(x, torch.tensor([p]))
    assert torch.allclose(got, want, atol=1e-5)
