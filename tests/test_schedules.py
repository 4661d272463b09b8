import pytest

from gatesearch.schedules import (
    annealed_target,
    ema,
    gated_depth_keep,
    geometric_temperature,
    linear_over_units,
    lr_factor,
    stepped_target,
    stochastic_depth_keep,
    variable_target,
)


def test_stochastic_depth_linear_decay():
    assert stochastic_depth_keep(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])  # 1 - l/L (1 - p_L)


def test_linear_over_units():
    assert linear_over_units(3, 1.0, 0.5) == pytest.approx([1.0, 0.75, 0.5])
    assert linear_over_units(1, 1.0, 0.5) == [0.5]


@pytest.mark.parametrize(
    "mode, progress, expected",
    [
        ("constant", 0.3, [0.5, 0.5, 0.5]),
        ("units", 0.3, [1.0, 0.75, 0.5]),
        ("time", 0.0, [1.0, 1.0, 1.0]),
        ("time", 0.5, [0.75, 0.75, 0.75]),
        ("time", 1.0, [0.5, 0.5, 0.5]),
        ("units_time", 0.0, [1.0, 1.0, 1.0]),
        ("units_time", 1.0, [1.0, 0.75, 0.5]),
    ],
)
def test_gated_depth_keep(mode, progress, expected):
    assert gated_depth_keep(3, 0.5, 1.0, mode, progress) == pytest.approx(expected)


def test_geometric_temperature():
    assert geometric_temperature(5.0, 0.5, 0.0) == pytest.approx(5.0)
    assert geometric_temperature(5.0, 0.5, 0.5) == pytest.approx(5.0 * 0.1 ** 0.5)
    assert geometric_temperature(5.0, 0.5, 1.0) == pytest.approx(0.5)
    assert geometric_temperature(5.0, 0.5, 2.0) == pytest.approx(0.5)


def test_annealed_target_holds_last():
    assert [annealed_target([1.0, 0.9, 0.8], e) for e in range(5)] == [1.0, 0.9, 0.8, 0.8, 0.8]


def test_stepped_target_is_the_papers_annealing():
    """002_...txt supplement S2.1: decrease by a = 0.05 after every k = 5 epochs, from 1 down to t."""
    got = [stepped_target(1.0, 0.8, 0.05, 5, e) for e in range(0, 30)]
    expected = [1.0] * 5 + [0.95] * 5 + [0.9] * 5 + [0.85] * 5 + [0.8] * 10
    assert got == pytest.approx(expected)


def test_variable_target_moving_average_and_ema():
    """Supplement S2.2: the target starts at the hyperparameter (0.5) and follows the batches' rates
    (0.8, 0.2, 0.9): moving average (0.5+0.8)/2, (0.5+0.8+0.2)/3, (0.5+0.8+0.2+0.9)/4; EMA with m=0.5."""
    t_ma, t_ema = 0.5, 0.5
    ma, em = [], []
    for n, a in enumerate([0.8, 0.2, 0.9], start=1):
        t_ma = variable_target(t_ma, a, n, "moving_average", 0.9)
        t_ema = variable_target(t_ema, a, n, "ema", 0.5)
        ma.append(t_ma)
        em.append(t_ema)
    assert ma == pytest.approx([0.65, 0.5, 0.6])
    assert em == pytest.approx([0.65, 0.425, 0.6625])
    with pytest.raises(ValueError):
        variable_target(0.5, 0.5, 1, "median", 0.9)


def test_ema():
    assert ema(0.7, 0.5, 0.9) == pytest.approx(0.68)


def test_lr_factor():
    assert lr_factor(0, 100, 0, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0)
    assert lr_factor(4, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(80, 100, 0, "step") == pytest.approx(0.01)
    assert lr_factor(80, 100, 0, "constant") == 1.0


def test_lr_factor_multistep_drops_by_gamma_at_each_milestone():
    # 002_...txt Sec. 4.1.1 / AIG: x0.1 after every 30 epochs of 100; here 10 steps per epoch
    ms = [300, 600, 900]
    expected = {0: 1.0, 299: 1.0, 300: 0.1, 599: 0.1, 600: 0.01, 899: 0.01, 900: 0.001, 999: 0.001}
    for step, f in expected.items():
        assert lr_factor(step, 1000, 0, "multistep", ms, 0.1) == pytest.approx(f), step
    assert lr_factor(2, 1000, 5, "multistep", ms, 0.1) == pytest.approx(3 / 5)  # warm-up first
    assert lr_factor(650, 1000, 0, "multistep", ms, 0.5) == pytest.approx(0.25)
