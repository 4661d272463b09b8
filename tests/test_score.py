"""evaluate/walk.py and evaluate/strategies.py: the prefix trie gives exactly the per-pattern numbers; beam search and
probgates strategies return well-formed scores."""

from __future__ import annotations

import pytest
import torch
from _training import one_thread

from gatesearch.evaluate.strategies import score_strategies
from gatesearch.evaluate.walk import beam_search, evaluate_patterns_naive, evaluate_patterns_trie
from gatesearch.models import create_model
from gatesearch.patterns import all_patterns

_one_thread = pytest.fixture(autouse=True)(one_thread)  # tiny convs: one thread is faster


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct BN statistics everywhere, so a wrong switchable set or a reused activation shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))


def _data(n_batches: int = 2, batch: int = 8, classes: int = 10, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


@pytest.mark.parametrize("gating", ["stage", "block"])
def test_trie_equals_naive(gating: str) -> None:
    """Block gating gates the downsampling blocks too (9 units): a skipped one is its shortcut."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating=gating).eval()
    assert model.n_units == (3 if gating == "stage" else 9)
    _randomise_bn(model)
    assert model.switchable_bn == (gating == "stage")
    data = _data(n_batches=8)  # 64 images: enough that the patterns' correct counts tell them apart
    patterns = all_patterns(model.n_units)
    trie = evaluate_patterns_trie(model, data, patterns)
    naive = evaluate_patterns_naive(model, data, patterns)
    assert [(s.pattern, s.correct1, s.correct5, s.n) for s in trie] == [(s.pattern, s.correct1, s.correct5, s.n) for s in naive]
    assert len({s.correct1 for s in trie}) > 1  # the patterns really differ


def test_trie_shares_prefix_work() -> None:
    """Stage gating, 3 units: the stem runs once per batch and a stage's base once per (prefix, switch)."""
    model = create_model("resnet20", 10, gating="stage").eval()
    calls = {"stem": 0, "last_base": 0}
    model.stem.register_forward_hook(lambda *a: calls.__setitem__("stem", calls["stem"] + 1))
    model.stages[2].base[0].register_forward_hook(lambda *a: calls.__setitem__("last_base", calls["last_base"] + 1))
    evaluate_patterns_trie(model, _data(n_batches=1), all_patterns(3))
    assert calls["stem"] == 1
    assert calls["last_base"] == 8  # 4 distinct two-unit prefixes x 2 switch states (naive: 8 too, but 8 stems)


def test_beam_search_keeps_width() -> None:
    model = create_model("resnet20", 10, gating="block", gate_downsample=False).eval()  # 7 units
    scores = beam_search(model, _data(n_batches=1), width=1)
    # width 1: one pattern per level, each level expands it by one unit -> 1 + sum_{k} (7 - k) evaluated
    assert len(scores) == 1 + sum(range(1, 8))


@pytest.mark.parametrize("gate_head,gating", [("logit", "stage"), ("aig", "block")])
def test_strategies(gate_head: str, gating: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", 10, gating=gating, gate_head=gate_head,
                         switchable_bn=None if gating == "stage" else False).eval()
    data = _data(n_batches=2)
    out = score_strategies(model, data, thresholds=(0.3, 0.95), runs=3, seed=0)
    names = [s.strategy for s in out]
    assert names == ["threshold:0.30", "threshold:0.95", "always_on", "stochastic", "ensemble"]
    for s in out:
        assert len(s.unit_rates) == model.n_units and all(0.0 <= r <= 1.0 for r in s.unit_rates)
        assert 0.0 <= s.top1 <= 1.0
    by = {s.strategy: s for s in out}
    assert by["always_on"].unit_rates == (1.0,) * model.n_units
    assert by["ensemble"].passes == 3 and by["stochastic"].top1_std >= 0.0
    # init keep prob is 0.9: a 0.95 threshold skips every unit of a data-independent gate
    if gate_head == "logit":
        assert by["threshold:0.95"].unit_rates == (0.0,) * model.n_units
    again = score_strategies(model, data, thresholds=(0.3, 0.95), runs=3, seed=0)
    assert [s.top1 for s in again] == [s.top1 for s in out]  # seeded
