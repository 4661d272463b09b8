"""The step-time benchmark runs end to end on a tiny budget and prints what its docs quote."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    """A script of benchmarks/ loaded as a module (benchmarks/ is not a package; its scripts import each other)."""
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_prints_base_net_share_and_a_verdict_per_target():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--batch", "4", "--rounds", "2", "--steps", "4",
           "--only", "adn", "gated_depth"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    header, columns, *rows = out.strip().splitlines()
    # resnet20: 2 of 3 blocks mandatory per stage -> the base-net is 0.653 of the super-net's MACs
    assert "model resnet20 (cifar stem, base-net 0.653 of the MACs)" in header
    assert "batch 4x3x32x32" in header and "flush_denormal on" in header
    peak = float(re.search(r"peak (\d+\.\d+) GMAC/s \(fp32 matmul \d+\^3\)", header).group(1))
    for row in rows:  # the achieved multiply-accumulate rate next to the peak measured in the same run
        rate, share = re.search(r"^\S+ +\d+\.\d+ +(\d+\.\d+) +(\d+\.\d)% ", row).groups()
        assert 0 < float(rate) and abs(float(rate) / peak * 100 - float(share)) <= 0.1 + 0.01 * float(share)
    assert [r.split()[0] for r in rows] == ["plain", "adn", "gated_depth"]
    for row, target in zip(rows[1:], ("1.7", "1.15")):
        m = re.search(r"(\d+\.\d+) +\((\d+\.\d+)-(\d+\.\d+)\) +<= (\S+) +(PASS|FAIL)$", row)
        assert m, row
        ratio, q1, q3 = (float(m.group(i)) for i in (1, 2, 3))
        assert 0 < q1 <= ratio <= q3 and m.group(4) == target
        assert m.group(5) == ("PASS" if ratio <= float(target) else "FAIL") or abs(ratio - float(target)) < 0.005


def test_reproduce_cifar_writes_a_resumable_run_json_and_the_renderer_shows_its_numbers(tmp_path):
    """reproduce_cifar.py on a tiny npz directory (the real CIFAR layout, random pixels): one epoch,
    the JSON with every candidate on val and test, a second call skips the finished run, and
    render_results.py prints exactly the JSON's numbers."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "npz"
    data.mkdir()
    for split, n in (("train", 300), ("test", 60)):
        np.savez(data / f"{split}.npz", images=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    results, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce_cifar.py"), "--data-root", str(data), "--run",
           "gated_depth", "--epochs", "1", "--work-dir", str(work), "--results-dir", str(results / "t"), "--threads", "1"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    rec = json.loads((results / "t" / "gated_depth.json").read_text())
    assert rec["epochs"] == 1 and rec["n_units"] == 3 and rec["config"]["method.name"] == "gated_depth"
    assert rec["train_commit"] and rec["eval_commit"] and "reproduce_cifar.py" in rec["command"]
    assert 0 < rec["train_wall_s"] < 600
    for split, n in (("val", 30), ("test", 60)):
        rows = rec[split]["candidates"]
        assert len(rows) == 8 and all(r["n"] == n for r in rows)
        assert {r["strategy"] for r in rows} == {"pattern", "calibrated"}  # FFF is the calibrated full network
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "done:" in again  # the finished run is skipped
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nkept\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--table", "t",
                          "--results-root", str(results), "--doc", str(doc)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    fff = next(r for r in rec["test"]["candidates"] if r["pattern"] == "FFF")
    assert f"{100 * fff['top1']:.2f}*" in out and f"{rec['test']['frontier_score']:.4f}" in out
    assert "kept" in doc.read_text() and (results / "t" / "frontier.png").is_file()


def test_reproduce_wall_clock_counts_every_segment_of_a_killed_and_resumed_run(tmp_path, monkeypatch):
    """``train_wall_s`` is written at every epoch's end, so a process killed after its checkpoint still
    counts, and the process that resumes the run adds its own time to it."""
    rc = _bench("reproduce_cifar")
    clock = iter([1000.0, 1030.0, 1070.0, 5000.0, 5020.0])  # two epochs of process 1, one of process 2
    monkeypatch.setattr(rc.time, "time", lambda: next(clock))
    monkeypatch.setattr(rc, "git_commit", lambda: "abc")
    state = tmp_path / "phase.json"
    first = rc.WallClock(state)  # t0 = 1000
    first.on_epoch_end(0, {}, tmp_path / "last.pt")
    assert json.loads(state.read_text())["train_wall_s"] == 30.0
    first.on_epoch_end(1, {}, tmp_path / "last.pt")  # then the process is killed: 70 s are on disk
    assert json.loads(state.read_text())["train_wall_s"] == 70.0
    second = rc.WallClock(state)  # resumed: t0 = 5000, 70 s before
    second.on_epoch_end(2, {}, tmp_path / "last.pt")
    assert json.loads(state.read_text()) == {"train_commit": "abc", "train_wall_s": 90.0,
                                             "command": " ".join(sys.argv)}


def _record(run: str, top1_full: float, top1_base: float, **config) -> dict:
    rows = [{"pattern": p, "strategy": "pattern", "top1": t, "macs": m, "cost": m / 40.0, "unit_rates": [], "n": 100,
             "top1_std": 0.0} for p, t, m in (("FFF", top1_full, 40.0), ("TTT", top1_base, 26.0))]
    split = {"candidates": rows, "frontier_score": 0.5}
    return {"run": run, "config": {"method.name": "plain", "train.seed": 0, **config}, "epochs": 30, "n_units": 3,
            "train_time_s": 3600.0, "val": split, "test": split}


def test_renderer_keeps_loop_checks_out_of_the_table_and_the_claims(tmp_path):
    """A diagnostic run (a name outside render_results.ORDER) is listed with what it changed, and is
    neither a row of the per-pattern table nor one of the 'plain networks' of the frontier claim."""
    import json

    rr = _bench("render_results")
    folder = tmp_path / "t"
    folder.mkdir()
    recs = {"plain_full": _record("plain_full", 0.8618, 0.10), "adn": _record("adn", 0.87, 0.85, **{"method.name": "adn"}),
            "plain_full_seed1": _record("plain_full_seed1", 0.8655, 0.11, **{"train.seed": 1})}
    recs["adn"]["test"] = {**recs["adn"]["test"], "frontier_score": 0.51}
    for name, r in recs.items():
        (folder / f"{name}.json").write_text(json.dumps(r))
    section = rr.render("t", tmp_path, tmp_path / "R.md")
    table, checks = section.split("Loop checks")
    assert "| plain_full_seed1 |" not in table and "| plain_full |" in table
    assert "| plain_full_seed1 | `train.seed=1` | 86.55 |" in checks and "| plain_full | (the table's run) | 86.18 |" in checks
    assert ("86.18 % (not met); the loop checks below: plain_full_seed1 86.55 %; over these 2 runs 86.18-86.55 %, "
            "mean 86.37 %, sample std 0.26 points, 1 of 2 at or above the bar") in table  # std: 0.37 / sqrt(2)
    assert "plain_full_seed1 0.5" not in table  # the frontier claim names only the table's plain runs
    # adn 0.51 minus plain_full 0.50, judged against the two plain runs as seed noise: s * sqrt(2) is
    # |0.8655 - 0.8618| = 0.0037, half-width t(0.975, 1) * 0.0037 = 12.706 * 0.0037 = 0.0470 -> [-3.70, +5.70]
    assert ("adn minus plain_full (the frontier score is in top-1 units, so plain's top-1 noise stands for its noise): "
            "+1.00 points, 95 % interval [-3.70, +5.70]: no difference detected.") in table
    assert "How to read the comparisons below" in table and "(2 runs)" in table


def test_study_record_and_render_show_the_summary_numbers(tmp_path):
    """render_study.py: the committed record keeps every trial with a path relative to the study, the
    best trial's menus, and the rendered section quotes the summary's numbers (best vs baseline)."""
    import json

    study = tmp_path / "ray" / "s"
    (study / "menus" / "b1" / "host").mkdir(parents=True)
    entries = [{"pattern": "FFF", "strategy": "pattern", "top1": 0.9, "top1_low": 0.88, "top1_high": 0.92, "n_eval": 1000,
                "top1_seed_std": 0.012, "n_seeds": 3, "macs": 40, "params": 3, "latency_ms": 2.0, "activation": 1.0,
                "pareto": True},
               {"pattern": "TTT", "strategy": "pattern", "top1": 0.8, "macs": 26, "params": 2, "latency_ms": 1.5,
                "activation": 0.0, "pareto": False}]
    (study / "menus" / "b1" / "host" / "menu.json").write_text(json.dumps(
        {"device": "host", "frontier_score": 0.9, "latency_source": "measured", "search": "exhaustive",
         "extras": {"split": "val"}, "entries": entries}))
    trial = {"mlflow_run_id": None, "train_time_s": 7200.0, "error": None}
    summary = {
        "study": "s", "objective": [{"metric": "frontier_score", "mode": "max"}], "n_trials": 2, "n_complete": 2,
        "n_error": 0, "baselines": ["adn"], "wall_time_s": 5400.0, "experiment_id": "1", "parent_run_id": "p1",
        "interrupted": False, "tracking_uri": None, "best": {"trial_id": "b1"}, "menus": {"b1": str(study / "menus" / "b1")},
        "vs_baselines": [{"metric": "frontier_score", "mode": "max", "best_searched": 0.8123, "best_searched_trial_id": "s2",
                          "best_baseline": 0.8456, "best_baseline_method": "adn", "best_baseline_trial_id": "b1",
                          "difference": 0.8123 - 0.8456}],
        "trials": [{**trial, "trial_id": "b1", "state": "COMPLETE", "epochs_done": 10, "baseline": "adn",
                    "objectives": {"frontier_score": 0.8456}, "checkpoint": str(study / "t000_b1" / "last.pt"),
                    "config": {"method.name": "adn", "method.adn.alpha": 0.5}},
                   {**trial, "trial_id": "s2", "state": "STOPPED", "epochs_done": 3, "baseline": None,
                    "objectives": {"frontier_score": 0.8123}, "checkpoint": None,
                    "config": {"method.name": "gated_depth", "method.gated_depth.k": 7}}],
    }
    (study / "summary.json").write_text(json.dumps(summary))
    # Tune's per-trial progress.csv (one row per epoch; b1 logs a column the record does not keep)
    (study / "t000_b1").mkdir()
    (study / "t000_b1" / "progress.csv").write_text("frontier_score,train_loss,epochs_done\n0.5,1.2,1\n0.7,0.9,2\n0.8456,0.6,3\n")
    (study / "t001_s2").mkdir()
    (study / "t001_s2" / "progress.csv").write_text("epochs_done,frontier_score\n1,0.4\n2,0.6\n3,0.8123\n")
    doc, results = tmp_path / "R.md", tmp_path / "studies"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_study.py"), "--summary", str(study / "summary.json"),
                          "--results-dir", str(results), "--doc", str(doc)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    rec = json.loads((results / "s.json").read_text())
    assert rec["trials"][0]["checkpoint"] == "t000_b1/last.pt" and rec["menus"]["b1"]["host"]["n_entries"] == 2
    assert [e["pattern"] for e in rec["menus"]["b1"]["host"]["pareto"]] == ["FFF"]
    assert rec["trials"][0]["curve"] == [[1, 0.5], [2, 0.7], [3, 0.8456]]
    assert rec["trials"][1]["curve"] == [[1, 0.4], [2, 0.6], [3, 0.8123]]
    assert (results / "s.png").stat().st_size > 0 and "![objective per epoch of every trial](studies/s.png)" in out
    assert "| 0 | `b1` **best** | paper baseline | adn | alpha=0.5 | COMPLETE | 10 | 0.8456 | 2.00 |" in out
    assert "| 1 | `s2` | searched | gated_depth | k=7 | stopped early | 3 | 0.8123 |" in out
    # a single-run difference is reported as such, never as a win (issue #24)
    assert ("searched `s2` 0.8123 vs baseline adn `b1` 0.8456: difference -0.0333 from one run each, which is no verdict "
            "(this study ran without `study.reeval`)") in out
    assert "stays ahead" not in out and "beat" not in out
    # the menu line carries each entry's interval and seed std (issue #24 item 4), and says how to read them
    assert ("`FFF` 90.00 % [88.00, 92.00] (std 1.20 over 3 seeds) @ 2 ms (top-1 with its 95 % Wilson interval over the "
            "1000 images; entries whose intervals overlap are not shown apart by this split)") in out
    assert "1.50 h wall time" in out
    rs = _bench("render_study")  # a record of a menu written before the interval columns renders without them
    assert rs._menu_uncertainty({"top1": 0.9}) == "" and rs._menu_reading([{"top1": 0.9}]) == ""
    assert rs._menu_uncertainty({"top1_low": 0.5, "top1_high": 0.6, "top1_seed_std": 0.1, "n_seeds": 1}) == " [50.00, 60.00]"
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_study.py"), "--study", "s", "--results-dir",
                            str(results), "--doc", str(doc)], capture_output=True, text=True, timeout=300, check=True).stdout
    assert again == out and doc.read_text().count("<!-- study:s:begin -->") == 1


def test_reproduce_workers_claim_runs_and_take_over_a_dead_workers_lock(tmp_path):
    rc = _bench("reproduce_cifar")
    lock = tmp_path / "adn" / "running.pid"
    assert rc.claim(lock) and lock.read_text() == str(__import__("os").getpid())
    assert not rc.claim(lock)  # held by a live process (this one)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(gone.stdout.strip())  # that process has exited
    assert rc.claim(lock)
    lock.write_text("")  # a worker that died between creating the lock and writing its pid
    assert rc.claim(lock)


def test_reproduce_block_table_is_seed_major_sets_both_seeds_and_every_config_validates():
    """Issue 24's block table: six recipes x seed indices 0, 1, 2, all recipes at one index before the
    next; index i sets train.seed and data.split_seed; each run is its stage-table recipe with a gate on
    every block (same data, optimiser and budget), and its flat config passes ``from_flat``."""
    from argparse import Namespace

    from gatesearch.config import from_flat

    rc = _bench("reproduce_cifar")
    block, stage = rc.TABLES["block"], rc.TABLES["stage"]
    recipes = ["plain_full", "stochastic_depth", "adn", "gated_depth", "probgates_per_gate", "probgates_per_batch"]
    assert list(block.runs) == [f"{r}_s{i}" for i in (0, 1, 2) for r in recipes]
    args = Namespace(data_root="/data", epochs=30, work_dir="/work", device="cpu", eval_every=0)
    for run in block.runs:
        recipe, i = run.rsplit("_s", 1)[0], int(run.rsplit("_s", 1)[1])
        flat = rc.run_config(Namespace(**vars(args), table="block"), run)
        cfg = from_flat(flat)
        assert block.seed_index(run) == i and cfg.train.seed == i and cfg.data.split_seed == i
        assert cfg.model.gating == "block" and cfg.model.switchable_bn in (None, False)
        ref = rc.run_config(Namespace(**vars(args), table="stage"), recipe)
        varied = {"model.gating", "model.switchable_bn", "train.seed", "data.split_seed", "train.out_dir",
                "tracking.run_name"}
        assert {k: v for k, v in flat.items() if k not in varied} == {k: v for k, v in ref.items() if k not in varied}
    assert list(stage.runs) == ["plain_full", "plain_base", *recipes[1:]] and stage.seed_index("adn") is None
    # the eval process scores only the run just trained, whatever else the worker was asked for
    assert rc.eval_argv(["--table", "block", "--run", "adn_s0", "--run=adn_s1", "--threads", "1"], "adn_s1") == [
        "--table", "block", "--threads", "1", "--phase", "eval", "--run", "adn_s1"]


def _probgates_record(run: str, sweep: dict[float, tuple[float, float]]) -> dict:
    """A probgates run whose threshold sweep is ``{threshold: (activation, top1)}`` (3 units)."""
    rows = [{"pattern": p, "strategy": "pattern", "top1": 0.8, "macs": m, "cost": m / 40.0, "unit_rates": [], "n": 100,
             "top1_std": 0.0} for p, m in (("FFF", 40.0), ("TTT", 26.0))]
    rows += [{"pattern": "", "strategy": f"threshold:{t:.2f}", "top1": y, "macs": 26.0 + 14.0 * a, "cost": 0.0,
              "unit_rates": [a, a, a], "n": 100, "top1_std": 0.0} for t, (a, y) in sweep.items()]
    split = {"candidates": rows, "frontier_score": 0.5}
    return {"run": run, "config": {"method.name": "probgates"}, "epochs": 30, "n_units": 3, "train_time_s": 1.0,
            "val": split, "test": split}


def test_probgates_claim_reads_dominance_at_threshold_half_and_per_batch_at_per_gates_activation(tmp_path):
    """002 Sec. 4: per-batch's threshold-0.5 point should have top-1 >= and activation <= per-gate's;
    at equal activation per-batch's sweep is interpolated linearly. Hand numbers: per-gate 0.5 ->
    (0.60, 0.85); per-batch sweep (0.40, 0.80), (0.50, 0.84), (0.70, 0.88): at 0.60 it reads
    0.84 + 0.04 * 0.10 / 0.20 = 0.86, +1.00 points over per-gate."""
    rr = _bench("render_results")
    assert rr.at_activation([(0.4, 0.80), (0.5, 0.84), (0.7, 0.88)], 0.6) == pytest.approx(0.86)
    assert rr.at_activation([(0.4, 0.80), (0.5, 0.84)], 0.5) == 0.84
    assert rr.at_activation([(0.4, 0.80), (0.5, 0.84)], 0.6) is None
    assert rr._activation({"unit_rates": [0.5, 1.0]}) == 0.75 and rr._activation({"unit_rates": []}) == 1.0  # none: all run
    gate = _probgates_record("probgates_per_gate", {0.5: (0.60, 0.85), 0.7: (0.30, 0.70)})
    batch = _probgates_record("probgates_per_batch", {0.3: (0.70, 0.88), 0.5: (0.50, 0.84), 0.7: (0.40, 0.80)})
    # seed noise 0.850, 0.851, 0.852: s = 0.001, two single runs differ within t(0.975, 2) * 0.001 * sqrt(2)
    # = 4.3027 * 0.0014142 = 0.0060849, i.e. +-0.61 points
    noise = [0.850, 0.851, 0.852]
    line = rr.probgates_claim(gate, batch, noise)
    assert ("per-batch 84.00 % at activation 0.500 vs per-gate 85.00 % at 0.600: top-1 -1.00 points, 95 % interval "
            "[-1.61, -0.39]: lower; activation -0.100 (one run each: no interval)") in line
    assert ("at per-gate's activation 0.600 per-batch's threshold sweep reads 86.00 %, +1.00 points, 95 % interval "
            "[+0.39, +1.61]: higher") in line
    short = _probgates_record("probgates_per_batch", {0.5: (0.50, 0.86), 0.7: (0.45, 0.80)})
    line = rr.probgates_claim(gate, short, noise)
    assert "top-1 +1.00 points, 95 % interval [+0.39, +1.61]: higher" in line and "does not reach activation 0.600" in line
    # wide noise (s = 0.01: +-6.08 points) leaves the same 1-point differences undecided; no noise, no interval
    assert "95 % interval [-7.08, +5.08]: no difference detected" in rr.probgates_claim(gate, batch, [0.85, 0.86, 0.87])
    assert "top-1 -1.00 points, one run each: no interval, no verdict" in rr.probgates_claim(gate, batch, [])
    folder = tmp_path / "results" / "t"
    folder.mkdir(parents=True)
    import json

    for r in (gate, batch):
        (folder / f"{r['run']}.json").write_text(json.dumps(r))
    section = rr.render("t", tmp_path / "results", tmp_path / "R.md")
    assert "| probgates_per_batch | threshold:0.50 | 84.00 |" in section and "threshold:0.30" not in section
    assert (folder / "probgates_sweep.png").is_file() and "probgates_sweep.png" in section


def test_committed_results_doc_is_what_the_renderers_make_from_the_committed_json(tmp_path):
    """Issue 16: no number in docs/RESULTS.md typed by hand. Re-rendering every results table and
    every recorded study from the committed JSON (into a copy of docs/) leaves the document unchanged."""
    import json
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    doc = docs / "RESULTS.md"
    committed = doc.read_text()
    rr, rs = _bench("render_results"), _bench("render_study")
    studies = docs / "results" / "studies"
    tables = sorted(p.name for p in (docs / "results").iterdir() if p.is_dir() and p != studies)
    assert tables, "no results table committed"
    for table in tables:
        assert f"<!-- results:{table}:begin -->" in committed, table
        rr.render(table, docs / "results", doc)
    for record in sorted(studies.glob("*.json")):
        rec = json.loads(record.read_text())
        assert f"<!-- study:{rec['study']}:begin -->" in committed, rec["study"]
        rs.render(rec, doc, studies)
    assert doc.read_text() == committed


def test_study_stop_reasons_follow_the_spaces_asha_rungs_and_time_budget():
    """Ray's ASHA stops a trial only at a rung, grace * rf^k below the epoch budget: the CPU study
    (grace 3, rf 3, 10 epochs) has rungs 3 and 9 (27 >= 10), and a 7200 s time budget. A trial short
    of 10 epochs at a rung was stopped by ASHA; elsewhere, once the study used its time budget, by
    the budget."""
    rs = _bench("render_study")
    sched = rs._schedule(str(ROOT / "search_spaces" / "cifar10_resnet20_cpu.yaml"))
    assert sched == {"asha_rungs": [3, 9], "time_budget_s": 7200.0}
    rec = {**sched, "wall_time_s": 7230.0}
    assert rs._stop_reason(rec, {"epochs_done": 3}) == "stopped early (ASHA)"
    assert rs._stop_reason(rec, {"epochs_done": 9}) == "stopped early (ASHA)"
    assert rs._stop_reason(rec, {"epochs_done": 5}) == "stopped by the time budget"
    assert rs._stop_reason({**rec, "wall_time_s": 3600.0}, {"epochs_done": 5}) == "stopped"
    # a resumed study: its last run was short, but its search used the budget over every run (clock.py)
    assert rs._stop_reason({**rec, "wall_time_s": 3600.0, "search_time_s": 7180.0},
                           {"epochs_done": 5}) == "stopped by the time budget"
    assert rs._stop_reason({**rec, "search_time_s": 3600.0}, {"epochs_done": 5}) == "stopped"
    assert rs._stop_reason({}, {"epochs_done": 3}) == "stopped early"  # a record without its space: reason unknown


def test_render_study_shows_the_re_evaluation_with_intervals_and_verdicts():
    rs = _bench("render_study")
    base = {"label": "adn (paper baseline)", "baseline": "adn", "complete": True, "values": [0.71, 0.72, 0.73],
            "mean": 0.72, "std": 0.01, "low": 0.6952, "high": 0.7448, "vs_baseline": None}
    found = {"label": "t004 (probgates)", "baseline": None, "complete": True, "values": [0.72, 0.74, 0.76],
             "mean": 0.74, "std": 0.02, "low": 0.6903, "high": 0.7897,
             "vs_baseline": {"mean": 0.02, "low": -0.0048, "high": 0.0448, "baseline": "adn (paper baseline)",
                             "verdict": "no difference detected with 3 seeds (interval [-0.0048, +0.0448])"}}
    section = {"seeds": [1, 2, 3], "vary_split": True, "metric": "frontier_score", "best_baseline": "adn (paper baseline)",
               "finalists": [found, base], "crowned": "t004 (probgates)", "tied": [], "note": ""}
    lines = rs.render_reeval(section)
    assert ("| t004 (probgates) | 0.7200, 0.7400, 0.7600 | 0.7400 | 0.0200 | [0.6903, 0.7897] | +0.0200 | "
            "[-0.0048, +0.0448] | no difference detected with 3 seeds (interval [-0.0048, +0.0448]) |") in lines
    assert any(line.startswith("| adn (paper baseline) |") and line.endswith("| | reference |") for line in lines)
    assert lines[-1] == ("- Crowned: **t004 (probgates)** (best mean over 3 seeds; against adn (paper baseline): no difference "
                         "detected with 3 seeds (interval [-0.0048, +0.0448])).")
    # ASHA stopped every searched trial: the baseline is the lone finalist, and its crown is no win
    alone = {**section, "finalists": [base], "crowned": "adn (paper baseline)",
             "note": "study.reeval.finalists is 1 but no searched trial ran the full budget: only the paper baselines "
                     "are re-evaluated"}
    lines = rs.render_reeval(alone)
    assert lines[1].startswith("Re-evaluation (1 finalist, seed indices 1..3")
    assert lines[-1] == ("- Crowned: **adn (paper baseline)** (3 seeds; the only finalist: no other config was "
                         "re-evaluated on these seeds, so this is its interval, not a win).")
    # each finalist's test-split frontier score over the seeds, where the runs scored it
    tested = {**alone, "finalists": [{**base, "test_frontier_score": {"mean": 0.8110, "std": 0.0017, "low": 0.8068,
                                                                        "high": 0.8152, "n": 3}}]}
    assert rs.render_reeval(tested)[-1] == ("- On the test split (no choice in the study used it), frontier score over the 3 "
                                            "seeds, 95 % interval: adn (paper baseline) 0.8110 [0.8068, 0.8152] "
                                            "(std 0.0017).")
    assert rs.render_reeval(None) == []


def test_paper_baselines_single_runs_are_read_against_the_reevaluated_baselines_seed_noise():
    rs = _bench("render_study")
    # the re-evaluated baseline's 3 runs 0.82, 0.81, 0.83: s = 0.01, so two single runs differ with std
    # 0.01 * sqrt(2) = 0.014142; t(0.975, 2) = 4.302653 gives a half-width of 0.060849
    ref = {"label": "probgates (paper baseline)", "baseline": "probgates", "method": "probgates", "complete": True,
           "values": [0.82, 0.81, 0.83], "search_value": 0.8216, "trial_id": "p"}
    section = {"metric": "frontier_score", "mode": "max", "finalists": [ref]}

    def trial(tid: str, baseline: str | None, value: float, state: str = "COMPLETE") -> dict:
        return {"trial_id": tid, "baseline": baseline, "state": state, "objectives": {"frontier_score": value}}

    rec = {"reeval": section, "trials": [trial("a", "adn", 0.8099), trial("g", "gated_depth", 0.70),
                                         trial("p", "probgates", 0.8216), trial("s", None, 0.95),
                                         trial("x", "other", 0.99, state="STOPPED")]}
    (line,) = rs.baseline_single_runs(rec)
    # 0.8216 - 0.8099 = +0.0117 -> [-0.0491, +0.0725]; 0.8216 - 0.70 = +0.1216 -> [+0.0608, +0.1824]
    assert line.endswith("probgates - adn +0.0117 [-0.0491, +0.0725]: no difference detected; "
                         "probgates - gated_depth +0.1216 [+0.0608, +0.1824]: higher.")
    assert "probgates (paper baseline)'s 3 re-evaluation runs" in line
    # mode min: + still favours the re-evaluated baseline (lower is better)
    low = {**rec, "reeval": {**section, "mode": "min"}}
    assert "probgates - adn -0.0117 [-0.0725, +0.0491]: no difference detected" in rs.baseline_single_runs(low)[0]
    two = {**rec, "reeval": {**section, "finalists": [ref, {**ref, "label": "adn (paper baseline)", "trial_id": "a"}]}}
    assert rs.baseline_single_runs(two) == []  # several baselines re-evaluated: compared paired instead
    assert rs.baseline_single_runs({"trials": rec["trials"]}) == []  # no re-evaluation: no noise to read against


def _seeded(run: str, seed: int, top1: dict[str, float], frontier: float, half: float | None = None) -> dict:
    """A block-table run JSON (``reproduce_cifar.py --table block``) with 2 units and hand-set numbers."""
    macs = {"FF": 40e6, "FT": 30e6, "TF": 30e6, "TT": 20e6}
    cands = [{"pattern": p, "strategy": "pattern", "top1": t, "macs": macs[p], "cost": macs[p] / 40e6, "n": 10000,
              "unit_rates": [0.0 if c == "T" else 1.0 for c in p]} for p, t in top1.items()]
    if half is not None:
        cands.append({"pattern": "FT", "strategy": "threshold:0.50", "top1": half, "macs": 35e6, "cost": 0.875,
                      "n": 10000, "unit_rates": [1.0, 0.5]})
    split = {"candidates": cands, "frontier_score": frontier}
    return {"run": run, "seed_index": seed, "table": "block", "config": {}, "epochs": 30, "n_units": 2,
            "history": [], "train_time_s": 3600.0, "test": split, "val": split}


def test_seeded_table_renders_means_paired_intervals_and_claims(tmp_path):
    rr = _bench("render_results")
    folder = tmp_path / "results" / "blk"
    folder.mkdir(parents=True)
    # plain: super-net 0.80, 0.82, 0.84; adn: super 0.81, 0.84, 0.87 -> adn - plain = 0.01, 0.02, 0.03
    for i, (p_sup, a_sup) in enumerate([(0.80, 0.81), (0.82, 0.84), (0.84, 0.87)]):
        (folder / f"plain_full_s{i}.json").write_text(json.dumps(_seeded(f"plain_full_s{i}", i, {
            "FF": p_sup, "FT": 0.5, "TF": 0.5, "TT": 0.2}, frontier=0.60 + 0.01 * i)))
        (folder / f"adn_s{i}.json").write_text(json.dumps(_seeded(f"adn_s{i}", i, {
            "FF": a_sup, "FT": 0.78, "TF": 0.77, "TT": 0.70}, frontier=0.75 + 0.01 * i)))
    doc = tmp_path / "R.md"
    out = rr.render("blk", tmp_path / "results", doc)
    # ladder FF, FT, TT: plain FF mean 82.00, sample std 2.00
    assert "| plain_full | 0, 1, 2 | 82.00 ± 2.00 | 50.00 ± 0.00 | 20.00 ± 0.00 | - |" in out
    # frontier scores 0.60, 0.61, 0.62: mean 0.61, s 0.01, 95 % t-interval 0.61 -+ 4.3027 * 0.01 / sqrt(3)
    assert "0.6100 ± 0.0100 [0.5852, 0.6348] |" in out
    # adn - plain frontier: 0.15 at every seed: zero spread, an interval of zero width above 0
    assert "| plain_full | adn | 3 | -0.1500 | [-0.1500, -0.1500] | worse |" in out
    assert ("Do the frontiers separate? 1 of 1 pairs differ at 95 % (paired interval excludes 0): adn > plain_full; "
            "no difference detected for 0: none.") in out
    # ADN Table 1 on super-nets: differences 0.01, 0.02, 0.03 -> +2.00 points, [-0.48, +4.48]
    assert ("ADN super-net minus plain full-depth top-1: +2.00 points over 3 seeds, 95 % interval [-0.48, +4.48]: "
            "no difference detected with 3 seeds.") in out
    assert "Gated Depth Sec. 6.2" in out and "needs adn and gated_depth" in out
    # gated_depth with all four patterns at 0.80 (std 0) against adn's spread (> 0 at every seed): tighter
    for i in range(3):
        (folder / f"gated_depth_s{i}.json").write_text(json.dumps(_seeded(f"gated_depth_s{i}", i, {
            "FF": 0.80, "FT": 0.80, "TF": 0.80, "TT": 0.80}, frontier=0.70)))
    out = rr.render("blk", tmp_path / "results", doc)
    assert re.search(r"gated_depth minus adn: -\d+\.\d\d points over 3 seeds, 95 % interval \[-[\d.]+, -[\d.]+\]: "
                     r"tighter, the claim holds\.", out)
    # and the other way round: adn's spread minus gated_depth's is wider, which the claim's side reads as "does not hold"
    rr_claim = rr._claim_verdict
    from gatesearch.stats import paired_difference

    assert rr_claim(paired_difference([0.10, 0.11, 0.12], [0.0, 0.0, 0.0]), "wider", "tighter", "below") == \
        "wider, the claim does not hold"
    assert rr_claim(paired_difference([0.03, 0.02, 0.01], [0.0] * 3), "higher", "lower", "above") == \
        "no difference detected with 3 seeds"
    assert (folder / "frontier.png").stat().st_size > 0


def test_budget_table_picks_the_pattern_on_validation_and_scores_it_on_test():
    """Within 0.75 of the MACs (FT, TF at 0.75, TT at 0.5; FF at 1.0 is out however good): validation prefers TF
    at every seed while test prefers FT, so the row shows TF's test top-1, 0.60, 0.61, 0.62: mean 61.00, s 1.00,
    95 % t-interval 0.61 -+ 4.3027 * 0.01 / sqrt(3) = [0.5852, 0.6348]."""
    rr = _bench("render_results")
    runs = {}
    for i in range(3):
        run = _seeded(f"adn_s{i}", i, {"FF": 0.90, "FT": 0.78, "TF": 0.60 + 0.01 * i, "TT": 0.30}, frontier=0.5)
        run["val"] = _seeded(f"adn_s{i}", i, {"FF": 0.95, "FT": 0.70, "TF": 0.75, "TT": 0.40}, frontier=0.5)["test"]
        runs[i] = run
    pick, scored = rr.pick_within(runs[0], 0.75)
    assert (pick["pattern"], pick["top1"], scored["top1"]) == ("TF", 0.75, 0.60)
    assert rr.pick_within(runs[0], 0.5)[0]["pattern"] == "TT"  # only the base-net fits half of the MACs
    lines = rr.budget_table({"adn": runs}, budget=0.75)
    assert lines[0].startswith("| recipe | seeds | pattern picked on validation within 0.75 of the MACs (per seed) |")
    assert lines[2] == "| adn | 0, 1, 2 | `TF`, `TF`, `TF` | 0.750 | 61.00 ± 1.00 | [58.52, 63.48] |"


def test_separation_names_the_pairs_apart_and_the_pairs_inside_the_noise():
    rr = _bench("render_results")
    from gatesearch.stats import paired_difference

    rows = [("a", "b", paired_difference([0.03, 0.02, 0.01], [0.0, 0.0, 0.0])),  # 0.02 +- 4.303*0.01/sqrt(3): spans 0
            ("a", "c", paired_difference([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])),  # -0.1 at every seed: a worse
            ("b", "c", paired_difference([0.7], [0.6]))]  # one common seed: no interval, neither apart nor same
    # Holm over the 2 tested pairs (the one-seed pair is no test): a - c is -0.1 at every seed (p ~ 0 <= 0.025)
    # stays apart; a - b has p = 1 - 2 sqrt(3) / sqrt(14) = 0.0742 > 0.05 (test_stats)
    assert rr.separation(rows) == ("Do the frontiers separate? 1 of 3 pairs differ at 95 % (paired interval excludes "
                                   "0): c > a; no difference detected for 1: a ~ b. Asked of the 2 pairs at once "
                                   "(Holm's correction, family-wise error 5 %), 1 still differs: c > a.")
    # a pair apart at 95 % on its own but not once 3 pairs are asked at once (df 2: p = 1 - t / sqrt(2 + t^2)):
    #   a - b: 0.10, 0.11, 0.12: t = 0.11 sqrt 3 / 0.01 = 19.053, p = 0.00274 <= 0.05 / 3: kept
    #   a - c: 0.04, 0.06, 0.08: t = 0.06 sqrt 3 / 0.02 = 5.196, p = 0.0351: apart alone ([+0.0103, +0.1097]),
    #          but 0.0351 > 0.05 / 2: Holm stops here
    #   b - c: 0.01, 0.03, 0.05: t = 2.598, p = 0.1217: no difference detected
    rows = [("a", "b", paired_difference([0.10, 0.11, 0.12], [0.0, 0.0, 0.0])),
            ("a", "c", paired_difference([0.04, 0.06, 0.08], [0.0, 0.0, 0.0])),
            ("b", "c", paired_difference([0.01, 0.03, 0.05], [0.0, 0.0, 0.0]))]
    assert rr.separation(rows) == ("Do the frontiers separate? 2 of 3 pairs differ at 95 % (paired interval excludes "
                                   "0): a > b, a > c; no difference detected for 1: b ~ c. Asked of the 3 pairs at "
                                   "once (Holm's correction, family-wise error 5 %), 1 still differs: a > b.")


def test_gpu_check_smoke_runs_every_check_on_the_cpu(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py is ready for a lent GPU: --smoke runs every check with tiny sizes here."""
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    r = json.loads(out.read_text())
    assert r["smoke"] and r["device"] == "cpu"
    assert {row["method"] for row in r["throughput"]} == {"plain", "stochastic_depth", "adn", "gated_depth", "probgates"}
    assert all(row["images_per_s"] > 0 for row in r["throughput"])
    assert [c["trials"] for c in r["concurrency"]] == [1, 2] and len(r["concurrency"][1]["per_trial"]) == 2
    lat = r["resnet50_latency"]
    assert 0 < lat["mac_ratio"] < 1 and lat["base_ms"] > 0 and lat["super_ms"] > 0
    assert r["ddp"]["backend"] == "gloo" and r["ddp"]["same_weights"] is True  # gradients really all-reduced
    assert r["cifar_run"] == {"skipped": "no --data-root"}
    assert r["peak_macs_per_s"]["fp32"] > 0 and set(r["peak_macs_per_s"]) == {"fp32"}  # no autocast on the CPU
    for row in r["throughput"]:  # the achieved MAC rate against the roof measured in the same run (item 6)
        assert row["gmacs_per_s"] > 0
        assert row["of_peak"] == pytest.approx(row["gmacs_per_s"] * 1e9 / r["peak_macs_per_s"]["fp32"])
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\n<!-- results:gpu_check:begin -->\nold\n<!-- results:gpu_check:end -->\ntail\n")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--render", str(out), "--doc", str(doc)])
    _bench("gpu_check").main()  # in this process: a second interpreter would only add its start-up
    text = doc.read_text()
    assert "old" not in text and text.endswith("tail\n") and "smoke sizes" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "images/s" not in line]
    assert [line.split(" | ")[0].strip("| ") for line in rows] == [row["method"] for row in r["throughput"]]
