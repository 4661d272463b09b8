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


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    """The formula: KL(p || q) = sum_c p_c log(p_c / q_c)."""
    return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))


def test_kl_logits_temperature_scales_inputs_and_result():
    # ADN official code: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T^2
    t = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    s = [[0.0, 1.0, 0.0], [1.0, -1.0, 0.0]]
    for temp in (1.0, 2.0, 4.0):
        expected = temp**2 * sum(_kl(_softmax(a, temp), _softmax(b, temp)) for a, b in zip(t, s)) / 2
        got = float(kl_logits(torch.tensor(t), torch.tensor(s), temperature=temp))
        assert got == pytest.approx(expected, rel=1e-6), temp


def test_kl_logits_top_k_uses_the_teachers_classes_per_sample():
    # official code: teacher.topk(k) -> indices; student.gather(indices); softmax over those k only
    t = [[3.0, 1.0, 0.0, -2.0], [-1.0, 0.0, 4.0, 2.0]]
    s = [[0.0, 2.0, 1.0, 5.0], [1.0, 1.0, 0.0, -3.0]]
    # row 0: teacher's top-2 classes are 0 and 1; row 1: classes 2 and 3
    expected = (_kl(_softmax([3.0, 1.0]), _softmax([0.0, 2.0])) + _kl(_softmax([4.0, 2.0]), _softmax([0.0, -3.0]))) / 2
    got = float(kl_logits(torch.tensor(t), torch.tensor(s), top_k=2))
    assert got == pytest.approx(expected, rel=1e-6)
    temp = 2.0
    expected_t = temp**2 * (_kl(_softmax([3.0, 1.0], temp), _softmax([0.0, 2.0], temp))
                            + _kl(_softmax([4.0, 2.0], temp), _softmax([0.0, -3.0], temp))) / 2
    assert float(kl_logits(torch.tensor(t), torch.tensor(s), temp, top_k=2)) == pytest.approx(expected_t, rel=1e-6)
    assert float(kl_logits(torch.tensor(t), torch.tensor(s), top_k=4)) == pytest.approx(float(kl_logits(
        torch.tensor(t), torch.tensor(s))), rel=1e-6)  # k = K is every class
    with pytest.raises(ValueError, match="top_k"):
        kl_logits(torch.tensor(t), torch.tensor(s), top_k=5)


# two samples, two channels, 2x2 positions, small numbers to check by hand
_T_FEAT = [[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 0.0], [1.0, 3.0]]],
           [[[0.5, 0.5], [0.5, 0.5]], [[2.0, 0.0], [0.0, 2.0]]]]
_S_FEAT = [[[[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]],
           [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]]


def _pooled(x: list) -> list[list[float]]:
    """Average pooling to [B, C] (the official code's adaptive_avg_pool2d(x, 1))."""
    return [[sum(sum(row) for row in ch) / 4 for ch in sample] for sample in x]


def test_kl_features_pooled_is_the_official_codes_reduction():
    t, s = torch.tensor(_T_FEAT, dtype=torch.float64), torch.tensor(_S_FEAT, dtype=torch.float64)
    pt, ps = _pooled(_T_FEAT), _pooled(_S_FEAT)  # e.g. sample 0: teacher channels (1.0, 1.0)
    assert pt[0] == [1.0, 1.0] and ps[1] == [0.25, 0.25]
    for temp in (1.0, 3.0):
        expected = temp**2 * sum(_kl(_softmax(a, temp), _softmax(b, temp)) for a, b in zip(pt, ps)) / 2
        assert float(kl_features(t, s, temp)) == pytest.approx(expected, rel=1e-6)
        assert float(kl_features(t, s, temp, "pooled")) == pytest.approx(expected, rel=1e-6)


def test_kl_features_per_position_sums_positions_and_averages_the_batch():
    t, s = torch.tensor(_T_FEAT, dtype=torch.float64), torch.tensor(_S_FEAT, dtype=torch.float64)
    for temp in (1.0, 2.0):
        total = 0.0
        for b in range(2):
            for h in range(2):
                for w in range(2):
                    p = _softmax([_T_FEAT[b][c][h][w] for c in range(2)], temp)
                    q = _softmax([_S_FEAT[b][c][h][w] for c in range(2)], temp)
                    total += _kl(p, q)
        expected = temp**2 * total / 2  # summed over positions, mean over the 2 samples
        assert float(kl_features(t, s, temp, "per_position")) == pytest.approx(expected, rel=1e-6)
        cl = kl_features(t.contiguous(memory_format=torch.channels_last),
                         s.contiguous(memory_format=torch.channels_last), temp, "per_position")
        assert float(cl) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        kl_features(t, s, 1.0, "mean")


def test_kl_features_teacher_is_detached():
    t = torch.randn(2, 3, 4, 5, requires_grad=True)
    s = torch.randn(2, 3, 4, 5, requires_grad=True)
    for reduction in ("pooled", "per_position"):
        kl_features(t, s, 2.0, reduction).backward()
        assert t.grad is None and s.grad is not None


def _kl_reference(t: torch.Tensor, s: torch.Tensor, dim: int, temp: float = 1.0, teacher_grad: bool = False
                  ) -> torch.Tensor:
    """The formula through plain autograd: T^2 sum p (log p - log q) along ``dim``, summed over the rest."""
    t = t if teacher_grad else t.detach()
    log_p, log_q = (t / temp).log_softmax(dim), (s / temp).log_softmax(dim)
    return temp**2 * (log_p.exp() * (log_p - log_q)).sum()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_kl_features_value_and_gradient_equal_autograd_in_both_layouts(layout, temp):
    """The closed-form backward (softmax(s) - softmax(t), scaled) is autograd's gradient of the formula."""
    torch.manual_seed(0)
    t = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=layout) * 2
    s = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    refs = {"per_position": lambda: _kl_reference(t, s, 1, temp) / 3,
            "pooled": lambda: _kl_reference(t.mean((2, 3)), s.mean((2, 3)), 1, temp) / 3}
    for reduction, ref_fn in refs.items():
        value = kl_features(t, s, temp, reduction)
        (grad,) = torch.autograd.grad(3.0 * value, s)
        ref = ref_fn()
        (grad_ref,) = torch.autograd.grad(3.0 * ref, s)
        torch.testing.assert_close(value, ref)
        torch.testing.assert_close(grad, grad_ref)
        assert torch.autograd.gradcheck(lambda x, r=reduction: kl_features(t, x, temp, r), (s,))


@pytest.mark.parametrize("top_k", [0, 3])
def test_kl_logits_gradient_equals_autograd(top_k):
    torch.manual_seed(0)
    t, s = torch.randn(4, 2, 7, dtype=torch.float64), torch.randn(4, 2, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kl_logits(t, s, 2.0, top_k), s)
    tt, ss = (t, s) if not top_k else (t.topk(top_k, -1).values, s.gather(-1, t.topk(top_k, -1).indices))
    (grad_ref,) = torch.autograd.grad(_kl_reference(tt, ss, -1, 2.0) / 8, s)
    torch.testing.assert_close(grad, grad_ref)


def test_kl_logits_teacher_grad_equals_autograd_on_both_sides():
    """Gated Depth's Eq. 7 differentiates the full network's side too: the closed form for t,
    p * (d - sum p d), against autograd of the written-out formula."""
    torch.manual_seed(0)
    t = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    for temp in (1.0, 3.0):
        gt, gs = torch.autograd.grad(kl_logits(t, s, temp, teacher_grad=True), (t, s))
        rt, rs = torch.autograd.grad(_kl_reference(t, s, -1, temp, teacher_grad=True) / 5, (t, s))
        torch.testing.assert_close(gt, rt)
        torch.testing.assert_close(gs, rs)
        assert torch.autograd.gradcheck(lambda a, b, tt=temp: kl_logits(a, b, tt, teacher_grad=True), (t, s))
    (g_detached,) = torch.autograd.grad(kl_logits(t, s), (s,))  # default: the teacher gets none
    assert kl_logits(t, s).grad_fn is not None and g_detached.shape == s.shape
    t.grad = None
    kl_logits(t, s).backward()
    assert t.grad is None


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
