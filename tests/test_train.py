import math
import platform
import subprocess
import sys

import pytest
import torch
from _training import one_thread, quick_cfg

from gatesearch.checkpoint import build_model, load_checkpoint
from gatesearch.data import build_data
from gatesearch.methods import METHODS
from gatesearch.methods.plain import Plain
from gatesearch.train import (
    FitResult,
    Trainer,
    TrainingDiverged,
    _Evaluator,
    autocast_dtype,
    build_optimizer,
    compile_recompile_limit,
    fit,
    seed_everything,
)

_threads = pytest.fixture(autouse=True)(one_thread)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.events, self.stop_after = [], stop_after

    def on_start(self, cfg, info):
        self.events.append(("start", info["start_epoch"]))

    def on_step(self, step, epoch, parts):
        self.events.append(("step", step))
        assert math.isfinite(parts["loss"]) and "lr" in parts

    def on_epoch_end(self, epoch, metrics, checkpoint_path):
        self.events.append(("epoch", epoch))
        assert checkpoint_path.is_file()
        if self.stop_after == epoch:
            raise KeyboardInterrupt

    def on_end(self, result):
        self.events.append(("end", len(result.history)))

    def on_fail(self, error):
        self.events.append(("fail", type(error).__name__))


def small(tmp_path, **kw):
    flat = {"train__epochs": 2, "train__max_steps_per_epoch": 3, "train__eval_every": 1, **kw}
    return quick_cfg(str(tmp_path), "adn", **flat)


def test_fit_reports_and_checkpoints(tmp_path):
    rec = Recorder()
    res = fit(small(tmp_path), [rec])
    assert isinstance(res, FitResult) and len(res.history) == 2
    kinds = [e[0] for e in rec.events]
    assert kinds[0] == "start" and kinds.count("step") == 6 and kinds.count("epoch") == 2 and kinds[-1] == "end"
    assert [e[1] for e in rec.events if e[0] == "step"] == list(range(6))
    assert res.checkpoint_path == tmp_path / "last.pt"
    assert res.history[1]["train_time_s"] >= res.history[0]["train_time_s"]
    assert 0.0 <= res.metrics["frontier_score"] <= 1.0 and res.metrics["kl_full_base"] >= 0.0
    ck = load_checkpoint(res.checkpoint_path)
    assert ck.epoch == 1 and ck.metrics["top1_super"] == pytest.approx(res.metrics["top1_super"])


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = Plain.train_step

    def poisoned(self, model, x, y, step, epoch, backward):
        res = original(self, model, x, y, step, epoch, backward)
        if epoch == 1:
            res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(Plain, "train_step", poisoned)
    rec = Recorder()
    cfg = quick_cfg(str(tmp_path), "plain", train__epochs=3, train__max_steps_per_epoch=2)
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(cfg, [rec])
    assert rec.events[-1] == ("fail", "TrainingDiverged")
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.epoch == 0
    assert all(torch.isfinite(p).all() for p in ck.model.parameters())


def test_huge_lr_diverges(tmp_path):
    cfg = quick_cfg(str(tmp_path), "plain", optim__lr=1e30, train__epochs=1, train__max_steps_per_epoch=10)
    with pytest.raises(TrainingDiverged):
        fit(cfg)


def test_resume_continues_from_last_epoch(tmp_path):
    cfg = small(tmp_path, train__epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, [Recorder(stop_after=0)])
    first = load_checkpoint(tmp_path / "last.pt")
    assert first.epoch == 0
    rec = Recorder()
    res = fit(cfg, [rec], resume_from=tmp_path / "last.pt")
    assert rec.events[0] == ("start", 1)
    assert [e[1] for e in rec.events if e[0] == "step"][0] == 3  # global step continues
    assert len(res.history) == 3 and res.history[0] == pytest.approx(first.metrics)
    assert load_checkpoint(res.checkpoint_path).epoch == 2


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    cfg = small(tmp_path, train__epochs=1)
    fit(cfg)
    rec = Recorder()
    res = fit(cfg, [rec], resume_from=tmp_path / "last.pt")
    assert not [e for e in rec.events if e[0] == "step"] and len(res.history) == 1


def test_optimizer_groups_get_lr_mult():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    cfg = quick_cfg("/tmp/unused", "plain", optim__lr=0.2)
    opt = build_optimizer(cfg.optim, [{"params": params[:1]}, {"params": params[1:], "lr_mult": 10.0,
                                                                "weight_decay": 0.0}])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 2.0])
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.optim.weight_decay, 0.0]


def test_bn_reestimation_and_many_units(tmp_path):
    cfg = quick_cfg(str(tmp_path), "gated_depth", model__gating="block", train__epochs=1,
                    train__max_steps_per_epoch=3, train__bn_reestimate_batches=2, train__eval_every=1)
    m = fit(cfg).metrics
    assert {"top1_super", "top1_base", "frontier_score"} <= set(m)
    # 9 units > train.eval_all_patterns_max_units: the ladder (super, then units skipped from the last)
    ladder = ["F" * (9 - k) + "T" * k for k in range(10)]
    assert sorted(k[5:] for k in m if k[:5] == "top1_" and set(k[5:]) <= {"T", "F"}) == sorted(ladder)


_FAULTS_SCRIPT = """
import resource, torch
from gatesearch.train import keep_freed_memory
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.randn(32, 3, 32, 32)  # 8 MiB activations: above glibc's default mmap threshold
def faults(steps=3):
    m(x).sum().backward()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        m(x).sum().backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / steps
before = faults()
took = keep_freed_memory()
print(before, faults(), took)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_keep_freed_memory_stops_per_step_page_faults():
    """By default every forward/backward faults its activations in again (glibc hands freed blocks
    back to the kernel); after keep_freed_memory() the same step reuses them. Own process: the
    setting is process-wide."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    before, after, took = out.stdout.split()
    assert took == "True"
    assert float(before) > 1000 and float(after) < float(before) / 20


def test_multistep_lr_in_fit_follows_the_epoch_milestones(tmp_path):
    """optim.schedule=multistep: lr x gamma at each milestone epoch (AIG / 002_...txt: x0.1 every 30 epochs)."""
    rec = _LrRecorder()
    cfg = quick_cfg(str(tmp_path), "plain", optim__lr=0.1, optim__schedule="multistep", optim__milestones=[1, 2],
                    optim__gamma=0.1, train__epochs=3, train__max_steps_per_epoch=2, train__eval_every=3)
    fit(cfg, [rec])
    assert rec.lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


class _LrRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.lrs = []

    def on_step(self, step, epoch, parts):
        self.lrs.append(parts["lr"])


def test_no_decay_norm_bias_exempts_exactly_norms_and_biases():
    from gatesearch.models import create_model
    from gatesearch.train import no_decay_parameters

    model = create_model("resnet20", 10, in_channels=1)  # switchable BN in the base blocks, fc with a bias
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[i] for i in no_decay_parameters(model)}
    assert exempt == {n for n in names.values() if ".bn" in n or n.startswith("stem.1.") or n.endswith(".bias")}
    assert "fc.bias" in exempt and "stem.1.weight" in exempt and "stages.0.base.0.bn1.bns.1.weight" in exempt
    assert "fc.weight" not in exempt and "stages.0.base.0.conv1.weight" not in exempt
    cfg = quick_cfg("/tmp/unused", "plain", optim__no_decay_norm_bias=True, optim__weight_decay=1e-4)
    opt = build_optimizer(cfg.optim, [{"params": list(model.parameters()), "lr_mult": 2.0}], model)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert by_id[id(p)]["weight_decay"] == (0.0 if n in exempt else 1e-4), n
        assert by_id[id(p)]["lr"] == pytest.approx(2 * cfg.optim.lr)


def test_weight_ema_follows_its_formula():
    """ema <- d * ema + (1 - d) * w after each step, floats and BN statistics alike; ints copied."""
    from gatesearch.train import WeightEMA

    m = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
    ema = WeightEMA(m, 0.9)
    for w, nbt in ((3.0, 5), (5.0, 6)):
        with torch.no_grad():
            m[0].weight.fill_(w)
            m[1].running_mean.fill_(w)
            m[1].num_batches_tracked.fill_(nbt)
        ema.update(m)
    expected = 0.9 * (0.9 * 1.0 + 0.1 * 3.0) + 0.1 * 5.0  # 1.04 after the first step, 1.436 after the second
    assert float(ema.model[0].weight) == pytest.approx(expected)
    assert float(ema.model[1].running_mean) == pytest.approx(0.9 * (0.9 * 0.0 + 0.1 * 3.0) + 0.1 * 5.0)
    assert int(ema.model[1].num_batches_tracked) == 6
    assert float(m[0].weight.detach()) == 5.0  # the trained model is untouched


def test_ema_is_evaluated_checkpointed_and_resumed(tmp_path):
    """With train.ema_decay the metrics and the checkpoint's model are the EMA's; the checkpoint
    says so and keeps the optimizer's weights for a resume."""
    from gatesearch.data import build_data, eval_loader
    from gatesearch.evaluate import evaluate
    from gatesearch.patterns import SkipPattern

    cfg = small(tmp_path, train__ema_decay=0.5, train__epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, [Recorder(stop_after=0)])
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.weights == "ema" and ck.train_weights is not None
    trained = {k: v for k, v in ck.train_weights.items() if v.is_floating_point()}
    assert any(not torch.equal(v, ck.model.state_dict()[k]) for k, v in trained.items())  # two sets of weights
    data = build_data(cfg.data, cfg.train.seed)
    top1 = evaluate(ck.model, eval_loader(data), SkipPattern.super_net(3), "cpu").top1
    assert top1 == pytest.approx(ck.metrics["top1_super"])  # the logged number is the EMA's
    res = fit(cfg, resume_from=tmp_path / "last.pt")
    assert len(res.history) == 2 and load_checkpoint(res.checkpoint_path).weights == "ema"
    plain = load_checkpoint(fit(small(tmp_path / "off", train__epochs=1)).checkpoint_path)
    assert plain.weights == "trained" and plain.train_weights is None


# ---------------------------------------------------------------- compute settings (train.compile, amp_eval, ...)


def _steps(tmp_path, method: str, n: int = 3, dtype: torch.dtype = torch.float32,
           **flat) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The losses of ``n`` training steps from a fixed seed (model and batches in ``dtype``), and the
    gradients of the last step (``grad.<name>``) and the weights after it (``<name>``, buffers included)."""
    import torch._dynamo  # lazy: only the compile tests touch dynamo's cache

    torch._dynamo.reset()  # a clean cache: no graph of an earlier test counts against recompile_limit
    cfg = quick_cfg(str(tmp_path), method, method__gated_depth__k=2, **flat)  # gated_depth: step 1 distils
    seed_everything(0)
    data = build_data(cfg.data, 0)
    model = build_model(cfg, data.num_classes, data.input_shape).to(dtype)
    m = METHODS.get(method)(cfg, model, n)
    trainer = Trainer(cfg, model, m, build_optimizer(cfg.optim, m.param_groups(model), model), torch.device("cpu"), n)
    losses = [trainer.step(x.to(dtype), y, i, 0)["loss"] for i, (x, y) in zip(range(n), data.train)]
    grads = {f"grad.{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return losses, grads | {k: v.clone() for k, v in model.state_dict().items()}


def _assert_close_each(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rel_to_max: float) -> None:
    """Every tensor within ``rel_to_max * max|ref|`` elementwise (integer buffers exactly)."""
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        tol = {"atol": rel_to_max * float(v.abs().max()), "rtol": 0.0} if v.is_floating_point() else {}
        torch.testing.assert_close(got[k], v, **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("method", ["plain", "stochastic_depth", "gated_depth", "adn", "probgates"])
def test_compiled_training_step_equals_eager(tmp_path, method):
    """``train.compile`` (aot_eager: dynamo's capture and AOTAutograd's forward/backward graphs, the part
    that decides what runs, per pattern; inductor's kernels only change the rounding) trains as eager
    does over 3 steps (gated_depth: pattern, distillation, pattern): losses, last gradients, weights and
    BN statistics within 1e-5 of each tensor's largest value (measured here: equal to the bit)."""
    eager_loss, eager = _steps(tmp_path / "eager", method)
    comp_loss, comp = _steps(tmp_path / "comp", method, train__compile="aot_eager")
    assert comp_loss == pytest.approx(eager_loss, rel=1e-5)
    _assert_close_each(comp, eager, 1e-5)


def test_compile_keeps_a_graph_per_pattern_up_to_four_units():
    assert [compile_recompile_limit(n, 8) for n in (0, 2, 3, 4, 5, 9)] == [8, 8, 10, 18, 8, 8]
    assert compile_recompile_limit(3, 64) == 64  # never below what the user set


def test_channels_last_and_cudnn_benchmark_do_not_change_a_step(tmp_path, monkeypatch):
    """channels_last changes the memory layout, hence the kernels' summation order, only: two adn steps'
    losses, the last gradients and the weights within 1e-9 of each tensor's largest value, in float64.
    Float64 because this network is ill-conditioned at the start (8x8 digits: stage 3 normalises over
    B*2*2 values, some channels nearly constant), so float32 layouts differ by up to 8 % in a gradient
    (measured) through 1/sqrt(var + eps) alone; in float64 the same rounding is 3e-14 (measured), and
    a layout that changed the computation would be off by O(1). cudnn_benchmark is left alone off CUDA."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    nchw_loss, nchw = _steps(tmp_path / "a", "adn", 2, torch.float64, train__channels_last=False,
                             train__cudnn_benchmark=False)
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    nhwc_loss, nhwc = _steps(tmp_path / "b", "adn", 2, torch.float64, train__channels_last=True,
                             train__cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False
    assert nhwc["stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert nhwc_loss == pytest.approx(nchw_loss, rel=1e-12)
    _assert_close_each(nhwc, nchw, 1e-9)


def test_amp_dtype_follows_the_keys(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype(cuda, True) == torch.bfloat16 and autocast_dtype(cuda, False) is None
    assert autocast_dtype(cpu, True) is None  # train.amp is CUDA only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, True) == torch.float16


def test_bf16_evaluation_top1_is_close_to_fp32(tmp_path):
    """``train.amp_eval`` runs the evaluator under the training autocast; on the CPU, bf16 autocast
    (what a GPU with bf16 gets) against fp32 on the same trained model: every candidate's top-1 within
    6 of the 144 validation images. bf16 keeps 8 bits of mantissa, so logits move by ~2^-8 of their
    size and only images whose top-2 margin is that small change class: a net 0-2 of 144 per candidate
    here (measured for gated_depth, adn and probgates after 40 steps, when margins are still small);
    an evaluation broken under autocast (a wrong dtype, lost BN statistics) is tens of points off."""
    cfg, cpu = quick_cfg(str(tmp_path), "gated_depth", train__epochs=1, train__max_steps_per_epoch=40), torch.device("cpu")
    res = fit(cfg)
    data = build_data(cfg.data, cfg.train.seed)
    dtypes = []
    hook = res.model.stem.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    fp32 = _Evaluator(cfg, res.model, data, res.method, cpu)(res.model)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = _Evaluator(cfg, res.model, data, res.method, cpu, amp_dtype=torch.bfloat16)(res.model)
    hook.remove()
    assert set(dtypes) == {torch.bfloat16}  # evaluation really ran under autocast
    n = len(data.val.dataset)
    top1 = [k for k in fp32 if k.startswith("top1_")]
    assert top1 and all(abs(bf16[k] - fp32[k]) <= 6 / n + 1e-9 for k in top1), {k: (fp32[k], bf16[k]) for k in top1}
