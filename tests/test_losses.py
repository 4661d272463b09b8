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


def _kl_reference(t: torch.Tensor, s: torch.Tensor, dim: int) -> torch.Tensor:
    """The formula through plain autograd: sum p (log p - log q) along ``dim``, mean over the rest."""
    log_p, log_q = t.detach().log_softmax(dim), s.log_softmax(dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim).mean()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_kl_features_value_and_gradient_equal_autograd_in_both_layouts(layout):
    """The closed-form backward (softmax(s) - softmax(t), scaled) is autograd's gradient of the formula."""
    torch.manual_seed(0)
    t = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=layout) * 2
    s = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    value = kl_features(t, s)
    (grad,) = torch.autograd.grad(3.0 * value, s)
    ref = _kl_reference(t, s, 1)
    (grad_ref,) = torch.autograd.grad(3.0 * ref, s)
    torch.testing.assert_close(value, ref)
    torch.testing.assert_close(grad, grad_ref)
    assert torch.autograd.gradcheck(lambda x: kl_features(t, x), (s,))


def test_kl_logits_gradient_equals_autograd():
    torch.manual_seed(0)
    t, s = torch.randn(4, 2, 7, dtype=torch.float64), torch.randn(4, 2, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kl_logits(t, s), s)
    (grad_ref,) = torch.autograd.grad(_kl_reference(t, s, -1), s)
    torch.testing.assert_close(grad, grad_ref)


def test_rate_losses_follow_their_formulas():
    # unit 0 always on, unit 1 always off: the batch mean is exactly the target 0.5
    keep = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # 002_...txt Sec. 2.1: L_G = 1/|G| sum_g (t - 1/|B| sum_i z_gi)^2 = ((1 - .5)^2 + (0 - .5)^2) / 2
    assert float(rate_per_gate(keep, 0.5)) == pytest.approx(((1 - 0.5) ** 2 + (0 - 0.5) ** 2) / 2)
    assert float(rate_per_batch(keep, 0.5)) == pytest.approx(0.0)
    assert float(rate_const_quad(keep, 0.5)) == pytest.approx(0.0)


def test_const_quad_is_zero_below_and_quadratic_above():
    below = torch.full((4, 3), 0.3)
    above = torch.full((4, 3), 0.9)
    assert float(rate_const_quad(below, 0.5)) == 0.0
    assert float(rate_per_batch(below, 0.5)) == pytest.approx(0.04)
    assert float(rate_const_quad(above, 0.5)) == pytest.approx(0.16)
    assert float(rate_per_batch(above, 0.5)) == pytest.approx(0.16)


def test_per_gate_is_the_mean_over_gates_per_batch_the_overall_rate():
    """Sampled 0/1 gates z [B=3, 3 units]: unit rates 2/3, 1/3, 1; overall rate 2/3."""
    z = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    t = 0.5
    per_gate = ((t - 2 / 3) ** 2 + (t - 1 / 3) ** 2 + (t - 1) ** 2) / 3  # 1/|G| sum_g (t - E_B z_g)^2
    assert float(rate_per_gate(z, t)) == pytest.approx(per_gate)
    assert float(rate_per_batch(z, t)) == pytest.approx((t - 2 / 3) ** 2)  # (t - E_{G,B} z)^2
    assert set(RATE_LOSSES) == {"per_gate", "per_batch", "const_quad"}
    assert not math.isnan(float(rate_per_gate(z, 1.0)))


def test_per_gate_with_unit_targets_leaves_the_units_at_one_out():
    """AIG's schedules (ConvNet-AIG train_img.py): per-unit targets; a unit whose target is 1 is not in
    the sum, which is still divided by the number of all gates."""
    z = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # unit rates 1, 0.5, 0.5, 0
    t = torch.tensor([1.0, 0.8, 1.0, 0.4])
    expected = ((0.8 - 0.5) ** 2 + (0.4 - 0.0) ** 2) / 4
    assert float(rate_per_gate(z, t, active=t < 1)) == pytest.approx(expected)
    all_in = ((1 - 1) ** 2 + (0.8 - 0.5) ** 2 + (1 - 0.5) ** 2 + (0.4 - 0) ** 2) / 4
    assert float(rate_per_gate(z, t)) == pytest.approx(all_in)


def test_rate_losses_pass_the_straight_through_gradient():
    """On z = hard + (soft - soft.detach()) the gradient of L_B w.r.t. the relaxed sample is
    2 (rate - t) / (|G||B|) per entry, the formula's derivative."""
    soft = torch.tensor([[0.8, 0.3], [0.6, 0.1]], requires_grad=True)
    z = (soft > 0.5).float() + soft - soft.detach()  # forward values [[1, 0], [1, 0]]
    (g,) = torch.autograd.grad(rate_per_batch(z, 0.25), soft)
    torch.testing.assert_close(g, torch.full((2, 2), 2 * (0.5 - 0.25) / 4))
