"""`gatesearch select | profile | export | devices` on a checkpoint trained here (digits, a few steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from gatesearch.cli import main
from gatesearch.selection.pareto import MENU_COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
from _training import one_thread, quick_cfg  # noqa: E402

_one_thread = pytest.fixture(autouse=True)(one_thread)  # tiny convs: one thread is faster


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A resnet20 ADN checkpoint (stage gating, switchable BN) trained for a few steps, logged to MLflow."""
    from gatesearch.tracking import MLflowReporter
    from gatesearch.train import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sel")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = quick_cfg(str(root / "run"), method="adn", train__epochs=1, train__max_steps_per_epoch=4,
                    data__train_subset=256)
    reporter = MLflowReporter(uri, "select-test")
    result = fit(cfg, [reporter])
    torch.set_num_threads(threads)
    return {"checkpoint": str(result.checkpoint_path), "run_id": reporter.run_id, "uri": uri, "root": root}


def _check_menu(folder: Path, device: str) -> dict:
    record = json.loads((folder / device / "menu.json").read_text())
    table = pq.read_table(folder / device / "menu.parquet")
    assert tuple(table.column_names) == MENU_COLUMNS
    assert table.to_pylist() == record["entries"]
    entries = record["entries"]
    assert len(entries) == 8 and record["device"] == device and record["bn_mode"] == "switchable"
    for e in entries:  # flagged iff no other entry is at least as fast and as accurate, one strictly
        dominated = any(o["latency_ms"] <= e["latency_ms"] and o["top1"] >= e["top1"]
                        and (o["latency_ms"] < e["latency_ms"] or o["top1"] > e["top1"]) for o in entries)
        assert e["pareto"] == (not dominated)
    assert any(e["pareto"] for e in entries)
    z = 1.959963984540054  # the normal's 97.5 % quantile: Wilson's interval, worked out from its closed form
    for e in entries:  # every top-1 with its 95 % Wilson interval over the images scored; no seeds here
        n, k = e["n_eval"], round(e["top1"] * e["n_eval"])
        p, centre = k / n, (k / n + z * z / (2 * n)) / (1 + z * z / n)
        half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
        assert n > 0 and e["top1_low"] == pytest.approx(centre - half, abs=1e-9)
        assert e["top1_high"] == pytest.approx(centre + half, abs=1e-9) and e["top1_low"] <= e["top1"] <= e["top1_high"]
        assert e["top1_seed_std"] is None and e["n_seeds"] == 0
    return record


def test_select_writes_menu(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "menus"
    rc = main(["select", "--checkpoint", trained["checkpoint"], "--device", "jetson", "--device", "h100",
               "--budget-ms", "1000", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "jetson-orin-nano" in printed and "pick " in printed
    rec = _check_menu(out, "jetson-orin-nano")
    assert rec["latency_source"] == "model" and rec["model"] == "resnet20" and rec["dataset"] == "digits"
    _check_menu(out, "h100")
    assert (out / "pareto.png").stat().st_size > 0 and (out / "top1_distribution.png").exists()


def test_select_through_mlflow_run(trained: dict, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "menus"
    rc = main(["select", "--run", trained["run_id"], "--tracking-uri", trained["uri"], "--device", "jetson",
               "--out", str(out)])
    assert rc == 0
    _check_menu(out, "jetson-orin-nano")
    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.get_run(trained["run_id"])
    assert "select_jetson_orin_nano_frontier_score" in run.data.metrics
    assert "select_top1_FFF" in run.data.metrics
    paths = {f.path for f in client.list_artifacts(trained["run_id"], "selection/jetson-orin-nano")}
    assert {"selection/jetson-orin-nano/menu.json", "selection/jetson-orin-nano/menu.parquet",
            "selection/jetson-orin-nano/menu_table.json"} <= paths


def test_profile_then_select_with_lut(trained: dict, tmp_path: Path) -> None:
    lut = tmp_path / "lut.csv"
    assert main(["profile", "--checkpoint", trained["checkpoint"], "--out", str(lut), "--runs", "3", "--warmup", "1",
                 "--device-name", "jetson-orin-nano", "--torch-device", "cpu"]) == 0
    lines = lut.read_text().splitlines()
    assert lines[0] == "pattern,batch,median_ms,p90_ms,runs,device" and len(lines) == 1 + 8 + 3
    out = tmp_path / "menus"
    assert main(["select", "--checkpoint", trained["checkpoint"], "--device", "jetson", "--lut", str(lut),
                 "--out", str(out)]) == 0
    rec = _check_menu(out, "jetson-orin-nano")
    assert rec["latency_source"] == "lut" and {e["latency_source"] for e in rec["entries"]} == {"lut"}


def test_export_cli(trained: dict, tmp_path: Path) -> None:
    assert main(["export", "--checkpoint", trained["checkpoint"], "--pattern", "TFT", "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").stat().st_size > 0


def test_devices_cli(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices"]) == 0
    text = capsys.readouterr().out
    assert "jetson-orin-nano" in text and "h100" in text and "host" in text


@pytest.mark.parametrize("argv,message", [
    (["select", "--checkpoint", "CKPT", "--device", "tpu-v9", "--out", "DIR"], "unknown device 'tpu-v9'"),
    (["select", "--checkpoint", "/nonexistent/last.pt", "--device", "jetson", "--out", "DIR"], "does not exist"),
    (["select", "--checkpoint", "CKPT", "--device", "jetson", "--lut", "BADLUT", "--out", "DIR"], "malformed row"),
    (["export", "--checkpoint", "CKPT", "--pattern", "TFFT", "--out", "OUT"], "has 4 units; this model has 3"),
    (["export", "--checkpoint", "/nonexistent/last.pt", "--pattern", "TFF", "--out", "OUT"], "does not exist"),
])
def test_user_errors_exit_2(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                            message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("pattern,batch,median_ms,p90_ms,runs,device\nFFF,one,1.0,1.0,3,jetson\n")
    subst = {"CKPT": trained["checkpoint"], "BADLUT": str(bad), "OUT": str(tmp_path / "x.onnx"),
             "DIR": str(tmp_path / "menus")}
    rc = main([subst.get(a, a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0]


def test_select_reestimated_bn(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "menus"
    assert main(["select", "--checkpoint", trained["checkpoint"], "--device", "jetson-orin-nx", "--reestimate-bn", "1",
                 "--out", str(out)]) == 0
    record = json.loads((out / "jetson-orin-nx" / "menu.json").read_text())
    assert record["bn_mode"] == "reestimated" and len(record["entries"]) == 8


def test_menu_carries_the_std_over_re_evaluation_seeds(trained: dict, tmp_path: Path) -> None:
    from gatesearch.selection.select import SelectOptions, run_select

    spread = {"FFF": {"mean": 0.9, "std": 0.0123, "low": 0.87, "high": 0.93, "n": 3}}
    menus, _ = run_select(SelectOptions(devices=("jetson",), out=str(tmp_path / "m"), checkpoint=trained["checkpoint"],
                                        seed_spread=spread))
    by = {e["pattern"]: e for e in menus[0].entries}
    assert by["FFF"]["top1_seed_std"] == 0.0123 and by["FFF"]["n_seeds"] == 3
    assert by["TTT"]["top1_seed_std"] is None and by["TTT"]["n_seeds"] == 0
    record = json.loads((tmp_path / "m" / "jetson-orin-nano" / "menu.json").read_text())
    assert {e["pattern"]: e["n_seeds"] for e in record["entries"]}["FFF"] == 3


def test_select_registers_a_bundle_per_device_that_mlflow_loads_and_runs_within_a_budget(trained: dict, tmp_path: Path,
                                                                                         capsys: pytest.CaptureFixture):
    """#26 item 5: `select --run ID --register NAME` logs each device's bundle as a pyfunc model, registers it
    and aliases it by device; `mlflow.pyfunc.load_model("models:/NAME@device")` predicts the logits of the
    entry the budget picks (checked against the torch model on that pattern)."""
    import mlflow
    import numpy as np

    from gatesearch.checkpoint import load_checkpoint
    from gatesearch.patterns import SkipPattern

    out = tmp_path / "menus"
    rc = main(["select", "--run", trained["run_id"], "--tracking-uri", trained["uri"], "--device", "jetson",
               "--out", str(out), "--register", "gsmodel"])
    assert rc == 0 and "models:/gsmodel@jetson-orin-nano" in capsys.readouterr().out
    mlflow.set_tracking_uri(trained["uri"])
    model = mlflow.pyfunc.load_model("models:/gsmodel@jetson-orin-nano")
    menu = json.loads((out / "jetson-orin-nano" / "menu.json").read_text())
    pareto = sorted((e for e in menu["entries"] if e["pareto"] and e["strategy"] == "pattern"), key=lambda e: e["latency_ms"])
    cheapest = pareto[0]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = model.predict(x, params={"budget_ms": cheapest["latency_ms"] * 1.0001})  # only the fastest entry fits
    ck = load_checkpoint(trained["checkpoint"])
    with torch.no_grad():
        ref = ck.model(torch.from_numpy(x), SkipPattern.parse(cheapest["pattern"])).numpy()
    assert np.abs(y - ref).max() < 1e-4
    version = mlflow.MlflowClient(trained["uri"]).get_model_version_by_alias("gsmodel", "jetson-orin-nano")
    assert version.run_id == trained["run_id"] and version.tags["device"] == "jetson-orin-nano"
    with pytest.raises(Exception, match="no entry fits"):
        model.predict(x, params={"budget_ms": cheapest["latency_ms"] / 10})  # nothing fits: the cheapest's latency named
