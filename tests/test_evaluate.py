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
