import math

import pytest
import torch

from gatesearch.losses import RATE_LOSSES, kl_features, kl_logits, rate_const_quad, rate_per_batch, rate_per_gate


def test_kl_logits_matches_formula_and_direction():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = t.softmax(-1), s.softmax(-1)
    expected = float((p * (p.log() - q.log())).sum())  # KL(teacher || student)
    assert float(kl_logits(t, s)) == pytest.approx(expected, rel=1e-6)
    reverse = float((q * (q.log() - p.log())).sum())
    assert abs(expected - reverse) > 1e-3  # the direction matters for this pair
    assert float(kl_logits(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_kl_teacher_is_detached():
    t = torch.randn(4, 5, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    kl_logits(t, s).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kl_features_softmax_over_channels_per_position():
    torch.manual_seed(0)
    t, s = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    p, q = t.softmax(1), s.softmax(1)
    expected = (p * (p.log() - q.log())).sum(1).mean()  # sum over channels, mean over B, H, W
    assert float(kl_features(t, s)) == pytest.approx(float(expected), rel=1e-5)
    t.requires_grad_(True)
    s.requires_grad_(True)
    kl_features(t, s).backward()
    assert t.grad is None and s.grad is not None


def test_rate_losses_follow_their_formulas():
    # unit 0 always on, unit 1 always off: the batch mean is exactly the target 0.5
    keep = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(rate_per_gate(keep, 0.5)) == pytest.approx((1 - 0.5) ** 2 + (0 - 0.5) ** 2)
    assert float(rate_per_batch(keep, 0.5)) == pytest.approx(0.0)
    assert float(rate_const_quad(keep, 0.5)) == pytest.approx(0.0)


def test_const_quad_is_zero_below_and_quadratic_above():
    below = torch.full((4, 3), 0.3)
    above = torch.full((4, 3), 0.9)
    assert float(rate_const_quad(below, 0.5)) == 0.0
    assert float(rate_per_batch(below, 0.5)) == pytest.approx(0.04)
    assert float(rate_const_quad(above, 0.5)) == pytest.approx(0.16)
    assert float(rate_per_batch(above, 0.5)) == pytest.approx(0.16)


def test_per_gate_sums_over_units_per_batch_averages():
    keep = torch.tensor([[0.9, 0.5, 0.1], [0.7, 0.5, 0.3]])  # unit means 0.8, 0.5, 0.2
    assert float(rate_per_gate(keep, 0.5)) == pytest.approx(0.09 + 0.0 + 0.09)
    assert float(rate_per_batch(keep, 0.5)) == pytest.approx(0.0)
    assert set(RATE_LOSSES) == {"per_gate", "per_batch", "const_quad"}
    assert not math.isnan(float(rate_per_gate(keep, 1.0)))
