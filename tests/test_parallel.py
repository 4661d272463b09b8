"""Data parallelism (issue #25 item 3, docs/DESIGN_NOTES.md item 46): 2 gloo ranks on the CPU against
one process on the same global batch. The references are single-process runs (no process group: every
collective is the identity there); each test names what a broken rule would change.

One spawn per module fixture (process start-up dominates): the ranks run every job, the tests compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _parallel import VARIANTS, build, config, run_ranks, seed_rank
from _tolerance import layers, rounding_tol
from _training import one_thread

import gatesearch.methods.base as method_base
import gatesearch.train as train_module
from gatesearch.data import build_data
from gatesearch.parallel import global_batch_mean, rank_world, summed
from gatesearch.train import _Evaluator, fit

_thread = pytest.fixture(autouse=True)(one_thread)
GLOBAL = 16  # data.batch_size: the global mini-batch; 8 rows per rank


# ----------------------------------------------------------------------------- jobs (run in both modes)

def step_job(name: str) -> dict[str, Any]:
    """One optimizer step of ``VARIANTS[name]`` on the first global batch (this rank's shard of it)."""
    flat, step = VARIANTS[name]
    data, trainer = build(config(**flat))
    x, y = next(iter(data.train))
    seed_rank(1234)  # rank 1 draws from another stream: only a broadcast makes its draws rank 0's
    parts = trainer.step(x, y, step, 0)
    model = trainer.model
    return {"x": x, "y": y, "parts": parts, "layers": layers(model),
            "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def compiled_step_job(name: str) -> dict[str, Any]:
    """``step_job(name)`` under ``train.compile: aot_eager`` (dynamo's graph per pattern and
    AOTAutograd's backward, run inside DDP's forward)."""
    import torch._dynamo  # lazy: only this job touches dynamo

    torch._dynamo.reset()
    flat, step = VARIANTS[name]
    VARIANTS[name] = ({**flat, "train.compile": "aot_eager"}, step)
    try:
        return step_job(name)
    finally:
        VARIANTS[name] = (flat, step)


def patterns_job(method: str, steps: int) -> list[str]:
    """The patterns ``method`` trains at each of ``steps`` steps (recorded where they are drawn)."""
    drawn: list[str] = []
    original = method_base.draw_pattern

    def record(keep_probs: list[float]) -> Any:
        p = original(keep_probs)
        drawn.append(str(p))
        return p

    module = __import__(f"gatesearch.methods.{method}", fromlist=["draw_pattern"])
    module.draw_pattern = record
    try:
        data, trainer = build(config(method__name=method, model__gating="block", model__switchable_bn=False,
                                     method__gated_depth__p_min=0.5, method__gated_depth__p_max=0.5))
        seed_rank(7)
        for s, (x, y) in zip(range(steps), data.train):
            trainer.step(x, y, s, 0)
    finally:
        module.draw_pattern = original
    return drawn


def eval_job(flat: dict[str, Any], state_path: str) -> dict[str, float]:
    """Every per-epoch metric (``_Evaluator``, what ``fit`` reports) of the saved weights, this rank
    scoring its share of the validation split (and the test split: ``final_test``'s metrics)."""
    cfg = config(**flat)
    data, trainer = build(cfg)
    trainer.model.load_state_dict(torch.load(state_path))
    seed_rank(99)  # anything drawn from a rank's own stream would differ between the ranks
    ev = _Evaluator(cfg, trainer.model, data, trainer.method, torch.device("cpu"))
    return {**ev(trainer.model), **ev.test_metrics(trainer.model)}


def rate_job(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """``global_batch_mean`` of this rank's rows of ``z [W*B, n]`` and the gradient of a loss of it."""
    r, w = rank_world()
    b = z.shape[0] // w
    mine = z[r * b:(r + 1) * b].clone().requires_grad_(True)
    m = global_batch_mean(mine)
    ((m - 0.3) ** 2).sum().backward()
    return {"mean": m.detach(), "grad": mine.grad, "summed": torch.tensor(summed([float(r + 1), 2.0]))}


def fit_job(out_dir: str) -> dict[str, Any]:
    saves: list[int] = []
    original = train_module.save_checkpoint

    def record(*args: Any, **kwargs: Any) -> None:
        saves.append(kwargs["epoch"])
        original(*args, **kwargs)

    train_module.save_checkpoint = record
    try:
        result = fit(_fit_cfg(out_dir))
    finally:
        train_module.save_checkpoint = original
    return {"metrics": result.metrics, "saves": saves, "checkpoint": result.checkpoint_path}


def _fit_cfg(out_dir: str) -> Any:
    return config(method__name="gated_depth", train__epochs=2, train__max_steps_per_epoch=3,
                  train__out_dir=out_dir, method__gated_depth__k=2, train__ema_decay=0.5)  # the EMA is evaluated


def all_jobs(state_path: str, out_dir: str) -> dict[str, Any]:
    return {"steps": {n: step_job(n) for n in VARIANTS},
            "compiled": {n: compiled_step_job(n) for n in COMPILED},
            "per_rank_bn": _per_rank_bn_job(),
            "patterns": {m: patterns_job(m, 6) for m in ("gated_depth", "stochastic_depth")},
            "eval": {k: eval_job(flat, f"{state_path}.{k}") for k, flat in EVAL_CONFIGS.items()},
            "rate": rate_job(RATE_Z),
            "fit": fit_job(out_dir)}


def _per_rank_bn_job() -> dict[str, Any]:
    data, trainer = build(config(method__name="plain", model__sync_bn=False))
    x, y = next(iter(data.train))
    trainer.step(x, y, 0, 0)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


EVAL_CONFIGS: dict[str, dict[str, Any]] = {
    "adn": {"method.name": "adn"},  # stage gating, switchable BN: the trie over the 8 patterns
    "gated_depth_bn": {"method.name": "gated_depth", "train.bn_reestimate_batches": 2},  # calibrated, re-estimated BN
    "probgates_aig": {"method.name": "probgates", "model.gate_head": "aig", **{
        "model.gating": "block", "model.switchable_bn": False}},  # strategies: threshold, stochastic, ensemble
}
# train.compile under DDP: a drawn pattern (its skipped units' parameters unused: DDP must find the
# unused set through the compiled graph) with SyncBatchNorm's collectives inside the graph; 27 s of the
# module's spawn on a loaded 2-core machine, so one variant (each method compiles as eager trains, in
# one process: test_train.py)
COMPILED = ("gated_depth",)
RATE_Z = torch.rand(16, 3, generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What both ranks returned, and the single-process references, on the same saved weights."""
    tmp = tmp_path_factory.mktemp("parallel")
    torch.set_num_threads(1)
    for key, flat in EVAL_CONFIGS.items():  # weights a few steps from init, so the candidates differ
        data, trainer = build(config(**flat))
        for s, (x, y) in zip(range(8), data.train):
            trainer.step(x, y, s, 0)
        torch.save(trainer.model.state_dict(), f"{tmp}/state.{key}")
    out = run_ranks(all_jobs, f"{tmp}/state", str(tmp / "ranks"))
    return {"ranks": out, "tmp": tmp}


# ----------------------------------------------------------------------------- tests

def test_each_rank_gets_its_slice_of_the_global_batch(ranks: dict[str, Any]) -> None:
    data = build_data(config().data, 0)
    x, y = next(iter(data.train))  # one process's first mini-batch
    assert x.shape[0] == GLOBAL
    for r, out in enumerate(ranks["ranks"]):
        step = out["steps"]["plain"]
        torch.testing.assert_close(step["x"], x[8 * r:8 * (r + 1)], rtol=0, atol=0)
        assert torch.equal(step["y"], y[8 * r:8 * (r + 1)])


@pytest.mark.parametrize("name,kind", [(n, "steps") for n in VARIANTS] + [(n, "compiled") for n in COMPILED])
def test_two_ranks_step_as_one_process(ranks: dict[str, Any], name: str, kind: str) -> None:
    """Loss parts, every gradient (and which parameters have none: skipped units, the unused BN set)
    and the weights after the step equal one process's on the global batch (model.sync_bn: the BN
    batch statistics are the global batch's too); ``compiled``: the ranks under ``train.compile``
    against one eager process."""
    ref = step_job(name)
    for out in ranks["ranks"]:
        got = out[kind][name]
        assert got["parts"].keys() == ref["parts"].keys()
        for k, v in ref["parts"].items():
            assert got["parts"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        assert [n for n, g in got["grads"].items() if g is None] == [n for n, g in ref["grads"].items() if g is None]
        # a gate logit's gradient sums the straight-through terms of every image and activation of its
        # unit, which cancel (0.0013 out of terms near 0.03 here): its rounding scales with the largest
        # gate-head gradient, not with its own value
        heads = [g for n, g in ref["grads"].items() if n.startswith("gate_heads") and g is not None]
        for n, g in ref["grads"].items():
            if g is not None:
                scale = torch.stack([h.abs().max() for h in heads]).max() if n.startswith("gate_heads") else g
                torch.testing.assert_close(got["grads"][n], g, **rounding_tol(scale, ref["layers"]), msg=n)
        for n, p in ref["params"].items():
            torch.testing.assert_close(got["params"][n], p, **rounding_tol(p, ref["layers"]), msg=n)


def test_gated_depth_and_stochastic_depth_ranks_draw_one_pattern_per_step(ranks: dict[str, Any]) -> None:
    """000 Eq. 4: one pattern per mini-batch; the global batch is the mini-batch, so both ranks train
    the same pattern at every step (rank 1's own RNG stream differs: only the broadcast aligns them),
    and it is the pattern one process draws."""
    for method in ("gated_depth", "stochastic_depth"):
        first, second = (out["patterns"][method] for out in ranks["ranks"])
        assert len(first) == 6 and first == second
        assert first == patterns_job(method, 6)
    assert len(set(ranks["ranks"][0]["patterns"]["gated_depth"])) > 1  # p = 0.5 per unit: the draws vary


@pytest.mark.parametrize("key", list(EVAL_CONFIGS))
def test_two_rank_evaluation_equals_one_process(ranks: dict[str, Any], key: str) -> None:
    """Every metric: each candidate's top-1 and cost, the frontier score, KL(full || base), gate rates,
    the test split's; counts summed over the ranks (unequal shares: 3 validation batches over 2 ranks)."""
    ref = eval_job(EVAL_CONFIGS[key], f"{ranks['tmp']}/state.{key}")
    assert "frontier_score" in ref and "test_n" in ref
    for out in ranks["ranks"]:
        got = out["eval"][key]
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    if key == "probgates_aig":
        assert "top1_stochastic" in ref and "top1_ensemble" in ref


def test_global_batch_mean_value_and_gradient(ranks: dict[str, Any]) -> None:
    """The target-rate losses' batch mean over both ranks' rows (002 Sec. 3.1): the mean of all 16 rows,
    and each rank's gradient of (mean - 0.3)^2 summed is 2 * (mean - 0.3) / 16 per row, times 2 (the
    adjoint adds both ranks' identical losses; DDP's average divides by 2 again)."""
    z = RATE_Z
    mean = z.mean(0, keepdim=True)
    for out in ranks["ranks"]:
        torch.testing.assert_close(out["rate"]["mean"], mean)
        torch.testing.assert_close(out["rate"]["grad"], (2 * (mean - 0.3) / 16 * 2).expand(8, 3))
        assert out["rate"]["summed"].tolist() == [3.0, 4.0]


def test_per_rank_bn_step_is_the_mean_of_the_shards_steps(ranks: dict[str, Any]) -> None:
    """model.sync_bn=false: each rank normalises with its shard's statistics, so the averaged gradient
    is the mean of one process's gradients on each shard alone (here written out shard by shard)."""
    data, _ = build(config(method__name="plain", model__sync_bn=False))
    x, y = next(iter(data.train))
    grads = []
    for r in range(2):
        _, trainer = build(config(method__name="plain", model__sync_bn=False))
        trainer.step(x[8 * r:8 * (r + 1)], y[8 * r:8 * (r + 1)], 0, 0)
        grads.append({n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None})
    for out in ranks["ranks"]:
        got = out["per_rank_bn"]
        assert got.keys() == grads[0].keys()
        for n in got:
            want = (grads[0][n] + grads[1][n]) / 2
            torch.testing.assert_close(got[n], want, **rounding_tol(want, 20), msg=n)


def test_fit_on_two_ranks(ranks: dict[str, Any], tmp_path: Path) -> None:
    """fit in both ranks: the same metrics on both, one process's metrics (2 epochs of 3 steps, a
    distillation step every 2nd, a weight EMA evaluated), the checkpoint written by rank 0 only, every epoch."""
    ref = fit(_fit_cfg(str(tmp_path))).metrics
    first, second = (out["fit"] for out in ranks["ranks"])
    assert first["saves"] == [0, 1] and second["saves"] == []
    assert first["checkpoint"] is not None and second["checkpoint"] is None
    skip = {"epoch_time_s", "train_time_s"}
    assert {k: v for k, v in first["metrics"].items() if k not in skip} == {
        k: v for k, v in second["metrics"].items() if k not in skip}
    assert first["metrics"].keys() == ref.keys()
    for k, v in ref.items():
        if k not in skip:
            assert first["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("on_device", [False, True])
def test_shards_put_together_are_one_process_batches(on_device: bool) -> None:
    """No process group needed: rank r's loaders built for 2 ranks. Training: rank 0's and rank 1's
    batches, stacked, are one process's batch at every step of two epochs (the shuffle agrees);
    evaluation: whole batches dealt round robin, every image once, in the split's batch order."""
    from gatesearch.data import RoundRobinBatches, ShardBatches, _shard_loader

    cfg = config(data__on_device=on_device, data__eval_batch_size=64)
    whole = build_data(cfg.data, 3)
    parts = [build_data(cfg.data, 3) for _ in range(2)]
    shards = [_shard_loader(p.train, True, r, 2, 3) for r, p in enumerate(parts)]
    evals = [_shard_loader(p.val, False, r, 2, 3) for r, p in enumerate(parts)]
    if not on_device:
        assert isinstance(shards[0].batch_sampler, ShardBatches) and isinstance(evals[0].batch_sampler, RoundRobinBatches)
    assert len(shards[0]) == len(shards[1]) == len(whole.train)
    for _ in range(2):  # each loader run to its end, as an epoch does (the sampler draws at its end too)
        epoch = [list(loader) for loader in (whole.train, *shards)]
        for (x, y), (x0, y0), (x1, y1) in zip(*epoch):
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    batches = list(whole.val)
    assert len(batches) == 3 and [len(e) for e in evals] == [2, 1]
    dealt = [list(e) for e in evals]
    for i, (x, y) in enumerate(batches):
        xr, yr = dealt[i % 2][i // 2]
        assert torch.equal(xr, x) and torch.equal(yr, y)
