import pytest
import torch
from _tolerance import layers, rounding_tol
from _training import one_thread, quick_cfg

from gatesearch.config import ConfigError, GatedDepthConfig
from gatesearch.methods import METHODS
from gatesearch.methods.adn import ADN
from gatesearch.methods.gated_depth import GatedDepth
from gatesearch.methods.probgates import ProbGates, strategy_gates
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern
from gatesearch.train import fit

CHANCE = 0.1
_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.mark.parametrize("method", ["plain", "stochastic_depth", "adn", "gated_depth", "probgates"])
def test_method_trains_resnet20_on_digits(method, tmp_path):
    result = fit(quick_cfg(str(tmp_path), method))
    m = result.metrics
    assert m["top1_super"] > 5 * CHANCE, m
    assert set(m) >= {"train_loss", "lr", "top1_super", "top1_base", "top1_FTF", "frontier_score", "kl_full_base",
                      "epoch_time_s", "train_time_s"}
    if method in ("adn", "gated_depth"):  # the base-net is trained too
        assert m["top1_base"] > 4 * CHANCE, m
    if method == "probgates":
        assert {"gate_rate_0", "gate_rate_2", "gate_rate_mean", "top1_gated"} <= set(m)


def test_probgates_reaches_target_rate(tmp_path):
    # 250 steps instead of the paper's 100 epochs: a stronger pull than the paper's weight 1
    # zero-init residuals (on here, off by default) start every block as the identity, so 250 steps
    # are enough for the rate to settle (off: 0.67 at this budget, still falling)
    cfg = quick_cfg(str(tmp_path), "probgates", method__probgates__target=0.6, model__gating="block",
                    train__eval_all_patterns_max_units=2, method__probgates__gate_lr_mult=5.0,
                    method__probgates__weight=4.0, model__zero_init_residual=True)
    m = fit(cfg).metrics
    assert abs(m["gate_rate_mean"] - 0.6) <= 0.05, m["gate_rate_mean"]
    assert m["top1_gated"] > 5 * CHANCE


def _step_grads(method, model, x, y):
    model.zero_grad()
    res = method.train_step(model, x, y, 0, 0, lambda loss: loss.backward())
    if res.loss is not None:
        res.loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()], res


def test_adn_two_backward_matches_one_backward(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", 10, in_channels=1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    one = ADN(quick_cfg(str(tmp_path), "adn"), model, 10)
    two = ADN(quick_cfg(str(tmp_path), "adn", method__adn__two_backward=True), model, 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g1, r1 = _step_grads(one, model, x, y)
    model.load_state_dict(state)
    g2, r2 = _step_grads(two, model, x, y)
    assert r2.loss is None and r2.parts["loss"] == pytest.approx(r1.loss.item(), rel=1e-5)
    for a, b in zip(g1, g2):  # two float32 backwards of a 22-layer network in another order
        torch.testing.assert_close(b, a, **rounding_tol(a, layers(model)))


def _unit_ones(model):
    """Undo the residual BNs' zero-init where it is on, so that super != base."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    return model


def test_adn_output_only_kl_differs(tmp_path):
    torch.manual_seed(0)
    model = _unit_ones(create_model("resnet20", 10, in_channels=1))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with_f = ADN(quick_cfg(str(tmp_path), "adn"), model, 10)
    without = ADN(quick_cfg(str(tmp_path), "adn", method__adn__feature_kl=False), model, 10)
    model.eval()  # same BN statistics for both
    assert with_f.train_step(model, x, y, 0, 0, None).parts["kd"] > without.train_step(model, x, y, 0, 0, None).parts["kd"]


def _kl_rows(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    """T^2 * batch mean of sum_c p_c log(p_c / q_c), p = softmax(t / T), q = softmax(s / T), rows [B, C]."""
    p, q = (t / temp).softmax(-1), (s / temp).softmax(-1)
    return temp**2 * (p * (p.log() - q.log())).sum() / t.shape[0]


@pytest.mark.parametrize("stages,reduction", [((), "pooled"), ((0, 2), "pooled"), ((1,), "per_position")])
def test_adn_loss_base_is_algorithm1_step8_as_the_official_code(tmp_path, stages, reduction):
    """loss_base = sum_s KL(h_super^s || h_base^s) + KL(y_super || y_base), each at temperature T
    times T^2, output KL on the teacher's top-k classes, feature KL on the chosen stages."""
    torch.manual_seed(0)
    model = _unit_ones(create_model("resnet20", 10, in_channels=1)).eval()
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    model.double()
    cfg = quick_cfg(str(tmp_path), "adn", method__adn__temperature=2.0, method__adn__output_kl_top_k=5,
                    method__adn__feature_kl_stages=list(stages), method__adn__feature_kl_reduction=reduction)
    adn = ADN(cfg, model, 10)
    with torch.no_grad():
        (ls, fs), (lb, fb) = model(x, adn.super_net, True), model(x, adn.base_net, True)
        idx = ls.topk(5, -1).indices
        expected = _kl_rows(ls.gather(-1, idx), lb.gather(-1, idx), 2.0)
        for st in stages or range(3):
            if reduction == "pooled":
                expected = expected + _kl_rows(fs[st].mean((2, 3)), fb[st].mean((2, 3)), 2.0)
            else:  # every position a row, summed over positions: rows-mean times H*W
                hw = fs[st].shape[2] * fs[st].shape[3]
                rows = [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in (fs[st], fb[st])]
                expected = expected + _kl_rows(*rows, 2.0) * hw
        got = adn._distill(ls, fs, lb, fb)
    torch.testing.assert_close(got, expected)
    assert adn.train_step(model, x, y, 0, 0, None).parts["kd"] == pytest.approx(float(expected), rel=1e-6)


def test_adn_rejects_stages_and_top_k_the_model_lacks(tmp_path):
    """The method's own guard, behind ``resolve.check_names`` (which refuses both before any work, see
    tests/test_bad_inputs.py): a config built without that check still fails in one ConfigError line."""
    from gatesearch.config import from_flat

    model = create_model("resnet20", 10, in_channels=1)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    base = {"model.name": "resnet20", "data.name": "digits", "method.name": "adn", "train.out_dir": str(tmp_path)}
    adn = ADN(from_flat({**base, "method.adn.feature_kl_stages": [3]}), model, 10)
    with pytest.raises(ConfigError, match="method.adn.feature_kl_stages: stage 3 does not exist"):
        adn.train_step(model, x, y, 0, 0, None)  # resnet20 has stages 0..2
    adn = ADN(from_flat({**base, "method.adn.output_kl_top_k": 500}), model, 10)
    with pytest.raises(ConfigError, match="method.adn.output_kl_top_k"):
        adn.train_step(model, x, y, 0, 0, None)


def _unit_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad for stage in model.stages for p in stage.units.parameters()]


def test_adn_distillation_alone_gives_the_gated_units_no_gradient(tmp_path):
    """Why method.adn.alpha=0 is rejected: loss_base reaches the units only through the super-net,
    which is the detached teacher."""
    torch.manual_seed(0)
    model = _unit_ones(create_model("resnet20", 10, in_channels=1))
    adn = ADN(quick_cfg(str(tmp_path), "adn"), model, 10)
    (ls, fs), (lb, fb) = model.forward_patterns(torch.randn(4, 1, 8, 8), [adn.super_net, adn.base_net], True)
    assert all(g is None for g in _unit_grads(model, adn._distill(ls, fs, lb, fb)))


@pytest.mark.parametrize("teacher_grad", [True, False])
def test_gated_depth_distillation_step_eq7_and_teacher_gradient(tmp_path, teacher_grad):
    """Eq. 7: a * CE(f(x; b=0), y) + (1 - a) * KL(f(x; b=1) || f(x; b=0)); with teacher_grad the
    full network's side is differentiated too, so the gated units learn in this step."""
    torch.manual_seed(0)
    model = _unit_ones(create_model("resnet20", 10, in_channels=1))
    gd = GatedDepth(quick_cfg(str(tmp_path), "gated_depth", method__gated_depth__alpha=0.3,
                              method__gated_depth__teacher_grad=teacher_grad), model, 10)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    model.eval()  # the same BN numbers in the reference passes
    res = gd._distill_step(model, x, y)
    with torch.no_grad():
        full, base = model(x), model(x, gd.base_net)
        p, q = full.softmax(-1), base.softmax(-1)
        kl = (p * (p.log() - q.log())).sum(-1).mean()
        ce = -base.log_softmax(-1)[torch.arange(4), y].mean()
    assert float(res.loss.detach()) == pytest.approx(float(0.3 * ce + 0.7 * kl), rel=1e-5)
    grads = _unit_grads(model, res.loss)
    if teacher_grad:
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    else:
        assert all(g is None for g in grads)


def test_gated_depth_defaults_are_the_papers():
    """000_...txt Sec. 6.1: p_min = 0.5, p_max = 0.9, alpha = 0.5, k = 10."""
    o = GatedDepthConfig()
    assert (o.p_min, o.p_max, o.alpha, o.k, o.teacher_grad) == (0.5, 0.9, 0.5, 10, True)


def test_every_method_uses_the_label_smoothed_ce(tmp_path):
    """CE with eps: -(1 - eps) log q_y - eps / K sum_k log q_k, written out."""
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1])
    model = create_model("resnet20", 3, in_channels=1)
    for name in METHODS.names():
        m = METHODS.get(name)(quick_cfg(str(tmp_path), name, train__label_smoothing=0.2), model, 10)
        logq = logits.log_softmax(-1)
        expected = sum(-(0.8 * logq[b, y[b]] + 0.2 / 3 * logq[b].sum()) for b in range(2)) / 2
        assert float(m.ce(logits, y)) == pytest.approx(float(expected), rel=1e-6), name


def test_gated_depth_distills_every_k_and_calibrates(tmp_path):
    model = create_model("resnet20", 10, in_channels=1)
    gd = GatedDepth(quick_cfg(str(tmp_path), "gated_depth", method__gated_depth__k=3), model, 10)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    kinds = ["kd" in gd.train_step(model, x, y, s, 0, None).parts for s in range(6)]
    assert kinds == [False, False, True, False, False, True]
    gates = gd.eval_gates(model, SkipPattern.super_net(3))
    assert isinstance(gates, torch.Tensor) and gates.shape == (1, 3)
    torch.testing.assert_close(gates[0], torch.tensor(gd.keep_probs(gd.last_step + 1)))
    assert gd.eval_gates(model, SkipPattern.base_net(3)) == SkipPattern.base_net(3)


def test_probgates_param_groups_and_strategies(tmp_path):
    cfg = quick_cfg(str(tmp_path), "probgates", method__probgates__gate_lr_mult=10.0,
                    method__probgates__gate_weight_decay=0.0)
    model = create_model("resnet20", 10, in_channels=1, gate_head="logit")
    groups = ProbGates(cfg, model, 10).param_groups(model)
    assert groups[1]["lr_mult"] == 10.0 and groups[1]["weight_decay"] == 0.0
    default = ProbGates(quick_cfg(str(tmp_path), "probgates"), model, 10).param_groups(model)
    assert "weight_decay" not in default[1]  # the optimizer's decay, as ConvNet-AIG
    assert len(groups[1]["params"]) == 3
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with torch.no_grad():  # logit gates start at keep 0.9; push unit 1 below the threshold
        model.gate_heads[1].logit.fill_(-3.0)
    assert strategy_gates(model, "threshold", 0.5) == SkipPattern.parse("FTF")
    assert strategy_gates(model, "always_on") is None
    drawn = strategy_gates(model, "stochastic").draw(torch.zeros(5, 1, 8, 8))
    assert drawn.shape == (5, 3)


def test_registry_lists_all_methods():
    assert METHODS.names() == ["adn", "gated_depth", "plain", "probgates", "stochastic_depth"]


def test_probgates_target_schedules(tmp_path):
    model = create_model("resnet20", 10, in_channels=1, gate_head="logit")
    listed = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target_schedule="annealed",
                                 method__probgates__targets=[1.0, 0.8]), model, 10)
    assert [listed.target(e) for e in range(3)] == [1.0, 0.8, 0.8]
    stepped = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target_schedule="annealed",
                                  method__probgates__target=0.9), model, 10)  # paper: -0.05 every 5 epochs from 1
    assert [stepped.target(e) for e in (0, 4, 5, 9, 10, 15, 40)] == pytest.approx([1.0, 1.0, 0.95, 0.95, 0.9, 0.9, 0.9])
    variable = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target_schedule="variable",
                                   method__probgates__target=0.5, method__probgates__variable_update="ema",
                                   method__probgates__target_ema=0.5), model, 10)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    act = variable.train_step(model, x, y, 0, 0, None).parts["act"]
    assert variable.target(0) == pytest.approx(0.5 * 0.5 + 0.5 * act)
    assert variable.target(1) == 0.5  # every epoch restarts at the hyperparameter (supplement S2.2)
    res = variable.train_step(model, x, y, 1, 1, None).parts
    assert res["target"] == 0.5 and variable.target(1) == pytest.approx(0.5 * 0.5 + 0.5 * res["act"])
    mean = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target_schedule="variable",
                               method__probgates__target=0.5), model, 10)  # moving average (default)
    acts = [mean.train_step(model, x, y, s, 0, None).parts["act"] for s in range(2)]
    assert mean.target(0) == pytest.approx((0.5 + acts[0] + acts[1]) / 3)


def test_probgates_rate_loss_acts_on_sampled_gates_by_default(tmp_path):
    """Keep probability exactly 0.5 everywhere, target 0.5: the noise-free loss is 0, the loss on the
    sampled z (3 samples x 3 units: a rate in ninths, never 1/2) is not."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, in_channels=1, gate_head="logit")
    with torch.no_grad():
        for head in model.gate_heads:
            head.logit.zero_()
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    sample = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target=0.5), model, 10)
    prob = ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__target=0.5,
                               method__probgates__rate_on="prob"), model, 10)
    res = sample.train_step(model, x, y, 0, 0, None)
    parts = res.parts
    assert parts["rate_loss"] == pytest.approx((parts["act"] - 0.5) ** 2) and parts["rate_loss"] > 0
    assert res.loss.item() == pytest.approx(parts["ce"] + parts["rate_loss"])  # L = L_MC + L_target (weight 1)
    assert prob.train_step(model, x, y, 0, 0, None).parts["rate_loss"] == 0.0


def test_probgates_unit_targets(tmp_path):
    model = create_model("resnet20", 10, in_channels=1, gate_head="logit")
    cfg = quick_cfg(str(tmp_path), "probgates", method__probgates__loss="per_gate",
                    method__probgates__unit_targets=[1.0, 0.6, 0.4])
    z = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # unit rates 0.5, 1, 0.5
    rate = ProbGates(cfg, model, 10).rate(z, torch.full_like(z, 0.5), 0.5)
    assert float(rate) == pytest.approx(((0.6 - 1.0) ** 2 + (0.4 - 0.5) ** 2) / 3)
    with pytest.raises(ConfigError, match="unit_targets: 2 targets for a model with 3 units"):
        ProbGates(quick_cfg(str(tmp_path), "probgates", method__probgates__loss="per_gate",
                            method__probgates__unit_targets=[1.0, 0.5]), model, 10)
    with pytest.raises(ConfigError, match="unit_targets: needs loss=per_gate"):
        quick_cfg(str(tmp_path), "probgates", method__probgates__unit_targets=[1.0, 0.6, 0.4])


def test_probgates_aig_step_has_gate_gradients(tmp_path):
    cfg = quick_cfg(str(tmp_path), "probgates", model__gate_head="aig", model__gating="block")
    model = create_model("resnet20", 10, in_channels=1, gating="block", gate_head="aig")
    res = ProbGates(cfg, model, 10).train_step(model, torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)), 0, 0, None)
    res.loss.backward()
    assert all(p.grad is not None for p in model.gate_heads.parameters() if p.dim() > 1)
    assert 0.0 <= res.parts["act"] <= 1.0 and res.parts["tau"] == 1.0  # AIG's fixed temperature


def test_probgates_final_bn_step_is_the_papers_precise_bn_over_training_batches(tmp_path):
    """002 Sec. 4.1.1: after the last epoch, BN statistics from 200 (here 2) training batches in train mode,
    kept by the model. The stem's BN sees the stem conv's output whatever the gates: its running mean must
    be the average of the two batches' channel means, its running variance the average of their unbiased
    variances (a cumulative average over equal batches), computed here by hand."""
    from gatesearch.checkpoint import build_model
    from gatesearch.methods import METHODS

    cfg = quick_cfg(str(tmp_path), "probgates", method__probgates__final_bn_batches=2)
    torch.manual_seed(0)
    model = build_model(cfg, 10, (1, 8, 8))
    method = METHODS.get("probgates")(cfg, model, 4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    conv = next(m for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d))
    bn = next(m for m in model.stem.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        z = [conv(x) for x, _ in batches[:2]]  # the third batch is beyond final_bn_batches
    mean = (z[0].mean((0, 2, 3)) + z[1].mean((0, 2, 3))) / 2
    var = (z[0].var((0, 2, 3), unbiased=True) + z[1].var((0, 2, 3), unbiased=True)) / 2
    model.eval()
    method.finish_training(model, batches, "cpu")
    torch.testing.assert_close(bn.running_mean, mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # the layer's own momentum and the eval mode are back
    off = quick_cfg(str(tmp_path), "probgates", method__probgates__final_bn_batches=0)
    before = bn.running_mean.clone()
    METHODS.get("probgates")(off, model, 4).finish_training(model, batches, "cpu")
    assert torch.equal(bn.running_mean, before)  # 0: off
