"""Bad inputs a user can give, one parametrized test per class: each must exit 2 within its time
limit with at most two lines on stderr (the error, maybe a hint), no traceback, the offending name
in the message, and nothing created or changed on disk (no checkpoint, menu, LUT, MLflow store or run).

Cases run in-process through ``gatesearch.cli.main``; ``test_fresh_process`` repeats two of them
as real processes, where the exit status and the absence of a traceback are the process's own.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import PLACES, plant

from gatesearch.checkpoint import build_model, save_checkpoint
from gatesearch.cli import main
from gatesearch.config import from_flat
from gatesearch.devices.lut import LutRow, write_lut

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "quickstart.yaml")
FAST_S = 10.0  # local checks (files, values, usage)
SERVICE_S = 15.0  # a dead or silent server, a dead Ray address: the bound


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots`` with (size, mtime_ns): equal before and after means nothing changed."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return out


def _dead_port() -> int:
    """A localhost port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


class _FakeServer(http.server.BaseHTTPRequestHandler):
    """``/login/...``: 401 (MLflow's basic-auth app without a login); ``/plain/...``: a 404 page that is not
    MLflow's; ``/mlflow/...``: MLflow's JSON 404 for a missing experiment (a server that works)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code, body = {"login": (401, b"unauthorized"), "plain": (404, b"<html>no</html>"),
                      "mlflow": (404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')}[self.path.split("/")[1]]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_http() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained resnet20 checkpoint (digits input, 1x8x8), a good LUT for it, and broken variants."""
    d = tmp_path_factory.mktemp("assets")
    cfg = from_flat({"model.name": "resnet20", "data.name": "digits", "method.name": "adn", "train.device": "cpu",
                     "train.out_dir": str(d)})
    model = build_model(cfg, 10, (1, 8, 8))
    ckpt = save_checkpoint(d / "last.pt", model, cfg, epoch=0, metrics={}, input_shape=(1, 8, 8), num_classes=10)
    state = torch.load(ckpt, weights_only=True)
    for name, edit in {"no_classes": lambda s: s.pop("num_classes"), "bad_model": lambda s: s.update(model=[1, 2]),
                       "short_shape": lambda s: s.update(input_shape=[3, 32]),
                       "wrong_channels": lambda s: s.update(input_shape=[3, 8, 8])}.items():
        s = dict(state)
        edit(s)
        torch.save(s, d / f"{name}.pt")
    torch.save([1, 2, 3], d / "not_dict.pt")
    rows = [LutRow(p, 1, 1.0 + i, 1.5 + i, 3, "jetson-orin-nano") for i, p in enumerate(["FFF", "TTT"])]
    write_lut(d / "lut.csv", rows)
    head = "pattern,batch,median_ms,p90_ms,runs,device\n"
    for name, body in {"neg_lut": "FFF,1,-5.0,1.0,3,jetson-orin-nano\n", "nan_lut": "FFF,1,nan,nan,3,jetson-orin-nano\n",
                       "zero_batch_lut": "FFF,0,1.0,1.0,3,jetson-orin-nano\n", "h100_lut": "FFF,1,1.0,1.0,3,h100\n",
                       "twice_lut": "FFF,1,1.0,1.2,3,jetson-orin-nano\nTTT,1,0.5,0.6,3,jetson-orin-nano\n"
                                    "FFF,1,2.0,2.4,3,jetson-orin-nano\n",
                       "p90_below_lut": "FFF,1,1.0,0.9,3,jetson-orin-nano\n",
                       "unit_range_lut": "TTT,1,0.5,0.6,3,jetson-orin-nano\nunit:3,1,0.1,0.2,3,jetson-orin-nano\n",
                       "unit_negative_lut": "unit:-1,1,0.1,0.2,3,jetson-orin-nano\n"}.items():
        (d / f"{name}.csv").write_text(head + body)
    (d / "latin1_lut.csv").write_bytes((head + "FFF,1,1.0,1.0,3,j\xe9tson\n").encode("latin-1"))
    (d / "latin1.yaml").write_bytes("train:\n  out_dir: caf\xe9\n".encode("latin-1"))
    (d / "latin1_space.yaml").write_bytes(Path(SPACE).read_bytes().replace(b"# Quick", b"# \xe9 Quick"))
    (d / "a_file").write_text("x")
    (d / "twice_key.yaml").write_text("train:\n  epochs: 1\nmethod:\n  name: adn\ntrain:\n  epochs: 2\n")
    (d / "twice_key_space.yaml").write_text(Path(SPACE).read_text() + "\nfixed:\n  train.epochs: 1\n")
    return {"dir": d, "ckpt": ckpt, **{p.stem: p for p in d.iterdir()}}


def _expect_clean_failure(argv: list[str], name: str, capsys: pytest.CaptureFixture, watch: list[Path],
                          limit_s: float) -> list[str]:
    before = _tree(*watch)
    t0 = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert 1 <= len(err) <= 2 and "Traceback" not in "\n".join(err), err
    assert name in err[0], (name, err)
    assert elapsed < limit_s, f"took {elapsed:.1f} s"
    assert _tree(*watch) == before, "a file was created or changed"
    return err


# ---------------------------------------------------------------- data that trains wrongly or crashes


def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    np.savez(path, images=images, labels=labels)


_U8 = np.zeros((20, 32, 32, 3), np.uint8)
_Y = np.arange(20) % 10
DATA_CASES = {
    "grayscale_3d": (np.zeros((20, 32, 32), np.uint8), _Y, "'images'"),
    "channels_first": (np.zeros((20, 3, 32, 32), np.uint8), _Y, "channels-first"),
    "float_images": (_U8.astype(np.float32), _Y, "'images'"),
    "empty": (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), "'images' is empty"),
    "fewer_labels": (_U8, _Y[:15], "'labels' has 15 entries for 20 images"),
    "label_too_big": (_U8, np.full(20, 10), "'labels'"),
    "negative_label": (_U8, np.full(20, -1), "'labels'"),
    "float_labels": (_U8, _Y.astype(np.float32) + 0.5, "'labels'"),
    "one_hot_labels": (_U8, np.eye(10)[_Y].astype(np.int64), "'labels'"),
    "object_array": (np.array([None] * 20, dtype=object), _Y, "train.npz"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_npz_data(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels, name = DATA_CASES[case]
    root = tmp_path / "data"
    root.mkdir()
    if case == "object_array":
        np.savez(root / "train.npz", images=images, labels=labels)  # pickled: np.load refuses it
    else:
        _npz(root / "train.npz", images, labels)
    _npz(root / "test.npz", _U8, _Y)
    argv = ["train", "--set", "data.name=cifar10", "--set", f"data.root={root}", "--set", "train.device=cpu",
            "--set", f"train.out_dir={tmp_path / 'out'}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)


def test_test_split_of_other_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _npz(root / "train.npz", _U8, _Y)
    _npz(root / "test.npz", np.zeros((20, 28, 28, 3), np.uint8), _Y)
    argv = ["train", "--no-mlflow", "--set", "data.name=cifar10", "--set", f"data.root={root}",
            "--set", f"train.out_dir={tmp_path / 'out'}", "--set", "train.device=cpu"]
    _expect_clean_failure(argv, "test.npz", capsys, [tmp_path], FAST_S)


# ---------------------------------------------------------------- unreachable services


def _service_cases(silent: int, fake: str) -> dict[str, tuple[list[str], str]]:
    dead = _dead_port()
    search = ["search", "--space", SPACE, "--storage", "STORE"]
    return {
        "search_dead_ray": ([*search, "--address", f"127.0.0.1:{dead}", "--tracking-uri", "DB"], f"127.0.0.1:{dead}"),
        "search_dead_ray_client": ([*search, "--address", f"ray://127.0.0.1:{dead}", "--tracking-uri", "DB"],
                                   "--address"),
        "search_bad_ray_port": ([*search, "--address", "127.0.0.1:http", "--tracking-uri", "DB"], "--address"),
        "search_dead_mlflow": ([*search, "--tracking-uri", f"http://127.0.0.1:{dead}"], f"http://127.0.0.1:{dead}"),
        "train_dead_mlflow": (["train", "--set", "train.out_dir=OUT", "--tracking-uri", f"http://127.0.0.1:{dead}"],
                              f"http://127.0.0.1:{dead}"),
        "train_silent_mlflow": (["train", "--set", "train.out_dir=OUT", "--tracking-uri", f"http://127.0.0.1:{silent}"],
                                f"http://127.0.0.1:{silent}"),
        "train_mlflow_wants_login": (["train", "--set", "train.out_dir=OUT", "--tracking-uri", f"{fake}/login"],
                                     "MLFLOW_TRACKING_USERNAME"),
        "train_not_mlflow": (["train", "--set", "train.out_dir=OUT", "--tracking-uri", f"{fake}/plain"],
                             "not an MLflow server"),
        "select_run_dead_mlflow": (["select", "--run", "0123abcd", "--device", "jetson", "--out", "OUT",
                                    "--tracking-uri", f"http://127.0.0.1:{dead}"], f"http://127.0.0.1:{dead}"),
    }


SERVICE_NAMES = ["search_dead_ray", "search_dead_ray_client", "search_bad_ray_port", "search_dead_mlflow",
                 "train_dead_mlflow", "train_silent_mlflow", "train_mlflow_wants_login", "train_not_mlflow",
                 "select_run_dead_mlflow"]


@pytest.mark.parametrize("case", SERVICE_NAMES)
def test_unreachable_service(case: str, silent_port: int, fake_http: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    argv, name = _service_cases(silent_port, fake_http)[case]
    subst = {"STORE": str(tmp_path / "rr"), "DB": f"sqlite:///{tmp_path / 'mlflow.db'}", "OUT": str(tmp_path / "out")}
    argv = [subst.get(a, a.replace("OUT", subst["OUT"]) if a.endswith("=OUT") else a) for a in argv]
    _expect_clean_failure(argv, name, capsys, [tmp_path], SERVICE_S)  # no parent run, no marker, no storage


def test_mlflow_answering_not_found_is_reachable(fake_http: str) -> None:
    from gatesearch.tracking import check_tracking_uri

    check_tracking_uri(f"{fake_http}/mlflow")  # MLflow's JSON 404 is an answer: no error


# ---------------------------------------------------------------- output paths


OUTPUT_CASES = {
    "train_out_dir_is_file": (["train", "--no-mlflow", "--set", "train.out_dir={file}"], "train.out_dir"),
    "train_out_dir_under_file": (["train", "--no-mlflow", "--set", "train.out_dir={file}/run"], "train.out_dir"),
    "train_out_dir_read_only": (["train", "--no-mlflow", "--set", "train.out_dir={ro}/run"], "train.out_dir"),
    "train_sqlite_under_file": (["train", "--set", "train.out_dir={new}", "--tracking-uri", "sqlite:///{file}/m.db"],
                                "tracking.uri"),
    "profile_out_is_dir": (["profile", "--checkpoint", "{ckpt}", "--out", "{dir}"], "--out"),
    "profile_out_under_file": (["profile", "--checkpoint", "{ckpt}", "--out", "{file}/lut.csv"], "--out"),
    "profile_out_read_only": (["profile", "--checkpoint", "{ckpt}", "--out", "{ro}/lut.csv"], "--out"),
    "select_out_is_file": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--out", "{file}"], "--out"),
    "export_out_read_only": (["export", "--checkpoint", "{ckpt}", "--pattern", "FFF", "--out", "{ro}/m.onnx"], "--out"),
    "export_into_dir_bad_letter": (["export", "--checkpoint", "{ckpt}", "--pattern", "TFX", "--out", "{dir}"], "'TFX'"),
    "export_into_new_dir_short_pattern": (["export", "--checkpoint", "{ckpt}", "--pattern", "FF", "--out", "{new}/"],
                                          "'FF'"),
    "search_storage_is_file": (["search", "--space", SPACE, "--storage", "{file}", "--tracking-uri", "{db}"],
                               "--storage"),
}


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write in: chmod for a user, a /proc path for root (root ignores modes)."""
    if os.geteuid() == 0:
        return Path("/proc/self/gatesearch-read-only")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_unwritable_output(case: str, assets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, name = OUTPUT_CASES[case]
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "dir").mkdir()
    try:
        _expect_clean_failure(_fill(argv, assets, tmp_path, ro=str(_read_only_dir(tmp_path))), name, capsys,
                              [tmp_path, assets["dir"]], FAST_S)
    finally:
        for p in tmp_path.iterdir():
            p.chmod(0o700)


# ---------------------------------------------------------------- values out of range


VALUE_CASES = {
    "lr_inf_yaml": (["train", "--no-mlflow", "--set", "optim.lr=.inf"], "optim.lr"),
    "lr_overflow": (["train", "--no-mlflow", "--set", "optim.lr=1e999"], "optim.lr"),
    "lr_nan": (["train", "--no-mlflow", "--set", "optim.lr=.nan"], "optim.lr"),
    "weight_decay_inf": (["train", "--no-mlflow", "--set", "optim.weight_decay=.inf"], "optim.weight_decay"),
    "log_every_zero": (["train", "--no-mlflow", "--set", "train.log_every=0"], "train.log_every"),
    "synthetic_size_zero": (["train", "--no-mlflow", "--set", "data.name=synthetic", "--set", "data.synthetic_size=0"],
                            "data.synthetic_size"),
    "image_size_zero": (["train", "--no-mlflow", "--set", "data.image_size=0"], "data.image_size"),
    "train_device_tpu": (["train", "--no-mlflow", "--set", "train.device=tpu"], "train.device"),
    "train_device_missing_gpu": (["train", "--no-mlflow", "--set", "train.device=cuda:99"], "train.device"),
    "adn_without_units": (["train", "--no-mlflow", "--set", "model.gating=none"], "model.gating"),
    "gated_depth_without_units": (["train", "--no-mlflow", "--set", "model.gating=none", "--set",
                                   "method.name=gated_depth"], "model.gating"),
    "budget_zero": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--budget-ms", "0"], "--budget-ms"),
    "budget_negative": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--budget-ms", "-5"], "--budget-ms"),
    "budget_nan": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--budget-ms", "nan"], "--budget-ms"),
    "select_threads_negative": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--threads", "-2"],
                                "--threads"),
    "select_torch_device_bogus": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--torch-device", "bogus"],
                                  "--torch-device"),
    "select_unknown_device": (["select", "--checkpoint", "{ckpt}", "--device", "tpu-v9"], "tpu-v9"),
    "lut_negative_latency": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{neg_lut}"], "median_ms"),
    "lut_nan_latency": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{nan_lut}"], "median_ms"),
    "lut_zero_batch": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{zero_batch_lut}"], "batch"),
    "profile_torch_device_bogus": (["profile", "--checkpoint", "{ckpt}", "--out", "{new}/l.csv", "--torch-device", "tpu"],
                                   "--torch-device"),
    "profile_runs_zero": (["profile", "--checkpoint", "{ckpt}", "--out", "{new}/l.csv", "--runs", "0"], "--runs"),
    "patterns_image_size_zero": (["patterns", "--image-size", "0"], "--image-size"),
    "patterns_classes_zero": (["patterns", "--num-classes", "0"], "--num-classes"),
    "export_batch_zero": (["export", "--checkpoint", "{ckpt}", "--pattern", "FFF", "--out", "{new}/m.onnx", "--batch", "0"],
                          "--batch"),
    "search_num_cpus_zero": (["search", "--space", SPACE, "--num-cpus", "0"], "--num-cpus"),
}


def _fill(argv: list[str], assets: dict, tmp_path: Path, **extra: str) -> list[str]:
    """``{ckpt}``, ``{new}`` (a path to create), ``{file}``, ``{dir}``, ``{db}``, an asset's name -> paths;
    ``train`` and ``select`` get an output directory under ``tmp_path`` unless the case names one."""
    subst = {**{k: str(v) for k, v in assets.items()}, "new": str(tmp_path / "new"), "file": str(tmp_path / "file"),
             "dir": str(tmp_path / "dir"), "db": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    out = [a.format(**subst) for a in argv]
    if argv[0] == "train" and not any("train.out_dir" in a for a in argv):
        out += ["--set", f"train.out_dir={tmp_path / 'out'}"]
    if argv[0] == "select" and "--out" not in argv:
        out += ["--out", str(tmp_path / "menus")]
    return out


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_value_out_of_range(case: str, assets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, name = VALUE_CASES[case]
    _expect_clean_failure(_fill(argv, assets, tmp_path), name, capsys, [tmp_path, assets["dir"]], FAST_S)


# ---------------------------------------------------------------- files that are not what they claim


FILE_CASES = {
    "config_not_utf8": (["train", "--no-mlflow", "--config", "{latin1}"], "latin1.yaml"),
    "space_not_utf8": (["search", "--space", "{latin1_space}"], "latin1_space.yaml"),
    "lut_not_utf8": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{latin1_lut}"], "latin1_lut.csv"),
    "lut_of_other_device": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{h100_lut}"], "--lut"),
    "ckpt_without_num_classes": (["export", "--checkpoint", "{no_classes}", "--pattern", "FFF", "--out", "{new}/m.onnx"],
                                 "num_classes"),
    "ckpt_malformed_model": (["export", "--checkpoint", "{bad_model}", "--pattern", "FFF", "--out", "{new}/m.onnx"],
                             "'model'"),
    "ckpt_short_input_shape": (["select", "--checkpoint", "{short_shape}", "--device", "jetson"], "input_shape"),
    "ckpt_wrong_channels": (["profile", "--checkpoint", "{wrong_channels}", "--out", "{new}/l.csv"], "wrong_channels.pt"),
    "ckpt_not_a_dict": (["export", "--checkpoint", "{not_dict}", "--pattern", "FFF", "--out", "{new}/m.onnx"],
                        "not a gatesearch checkpoint"),
    # #27 item 7: what PyYAML, csv and argparse would take silently (the last of two wins)
    "lut_row_twice": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{twice_lut}"],
                      "twice_lut.csv line 4: pattern FFF at batch 1 on jetson-orin-nano is already measured on line 2"),
    "lut_p90_below_median": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{p90_below_lut}"],
                             "p90_below_lut.csv line 2"),
    "lut_unit_out_of_range": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{unit_range_lut}",
                               "--out", "{new}"], "LUT line 3: unit:3 names a unit this model lacks"),
    "lut_unit_negative": (["select", "--checkpoint", "{ckpt}", "--device", "jetson", "--lut", "{unit_negative_lut}"],
                          "unit_negative_lut.csv line 2"),
    "config_key_twice": (["train", "--no-mlflow", "--config", "{twice_key}"], "key 'train' appears twice (lines 1 and 5)"),
    "space_key_twice": (["search", "--space", "{twice_key_space}"], "twice_key_space.yaml: key 'fixed' appears twice"),
    "set_key_twice": (["train", "--no-mlflow", "--set", "train.epochs=1", "--set", "train.epochs=2"],
                      "--set train.epochs: given twice"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_not_what_it_claims(case: str, assets: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, name = FILE_CASES[case]
    _expect_clean_failure(_fill(argv, assets, tmp_path), name, capsys, [tmp_path, assets["dir"]], FAST_S)


def test_lut_of_other_device_with_flag_is_used(assets: dict) -> None:
    from gatesearch.devices.lut import read_lut
    from gatesearch.selection.select import _lut_for, get_device

    rows = read_lut(assets["h100_lut"])
    assert _lut_for(rows, get_device("jetson"), ()) == []  # refused unless --lut-any-device
    assert _lut_for(rows, get_device("jetson"), ("jetson",)) == rows  # the flag's path: the only device asked for


# ---------------------------------------------------------------- usage errors


USAGE_CASES = {
    "no_command": ([], "COMMAND"),
    "unknown_command": (["trian"], "'trian'"),
    "missing_required": (["export", "--pattern", "FFF"], "--out"),
    "not_an_integer": (["patterns", "--image-size", "big"], "--image-size"),
    "unknown_option": (["patterns", "--bogus"], "--bogus"),
    "bad_choice": (["patterns", "--gating", "half"], "--gating"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_error_is_one_line_plus_hint(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, name = USAGE_CASES[case]
    err = _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)
    assert len(err) == 2 and err[1].startswith("hint: gatesearch")


# ---------------------------------------------------------------- secure by default


@pytest.mark.parametrize("writable", ["rr", "rr/quickstart", "rr/quickstart/tuner.pkl", "rr/quickstart/searcher.pkl"])
def test_resume_refuses_storage_writable_by_others(writable: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    storage = tmp_path / "rr"
    (storage / "quickstart").mkdir(parents=True)
    for name in ("tuner.pkl", "searcher.pkl"):
        (storage / "quickstart" / name).write_bytes(b"not really a pickle")
    (tmp_path / writable).chmod(0o777)
    argv = ["search", "--space", SPACE, "--storage", str(storage), "--resume",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    try:
        err = _expect_clean_failure(argv, "--resume", capsys, [tmp_path], FAST_S)
        assert str(tmp_path / writable) in err[0]
    finally:
        (tmp_path / writable).chmod(0o755)


# ---------------------------------------------------------------- the process boundary


@pytest.mark.parametrize("argv,name", [
    (["search", "--space", SPACE, "--address", "127.0.0.1:PORT", "--storage", "TMP/rr"], "--address"),
    (["select", "--checkpoint", "x.pt", "--device", "jetson", "--budget-ms", "-1"], "--budget-ms"),
])
def test_fresh_process(argv: list[str], name: str, tmp_path: Path) -> None:
    argv = [a.replace("PORT", str(_dead_port())).replace("TMP", str(tmp_path)) for a in argv]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "gatesearch.cli", *argv], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and 1 <= len(err) <= 2 and name in err[0], out.stderr
    assert time.perf_counter() - t0 < SERVICE_S + 10  # + interpreter and torch import
    assert list(tmp_path.iterdir()) == []


def test_trusted_storage_checks(tmp_path: Path) -> None:
    from gatesearch.errors import UserError
    from gatesearch.preflight import check_trusted_storage

    study = tmp_path / "rr" / "s"
    study.mkdir(parents=True)
    (study / "tuner.pkl").write_bytes(b"x")
    check_trusted_storage(tmp_path / "rr", study)  # this user's own, not world-writable: resumed
    check_trusted_storage(tmp_path / "none", tmp_path / "none" / "s")  # nothing to resume yet
    if os.geteuid() != 0:
        pytest.skip("only root can hand a file to another user")
    os.chown(study / "tuner.pkl", 54321, -1)
    with pytest.raises(UserError, match="belongs to user id 54321"):
        check_trusted_storage(tmp_path / "rr", study)


# ---------------------------------------------------------------- study.reeval out of range


REEVAL_CASES = {
    "no_finalists": ({"finalists": 0, "seeds": 3}, "study.reeval.finalists"),
    "one_seed": ({"finalists": 2, "seeds": 1}, "study.reeval.seeds"),
    "negative_seeds": ({"finalists": 2, "seeds": -3}, "study.reeval.seeds"),
    "unknown_key": ({"finalists": 2, "seeds": 3, "repeat": True}, "study.reeval.repeat"),
    "bad_baselines": ({"finalists": 2, "seeds": 3, "baselines": "every"}, "study.reeval.baselines"),
}


@pytest.mark.parametrize("case", sorted(REEVAL_CASES))
def test_bad_reeval_stops_before_any_work(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    reeval, name = REEVAL_CASES[case]
    raw = yaml.safe_load(Path(SPACE).read_text())
    raw["study"]["reeval"] = reeval
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    argv = ["search", "--space", str(space), "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)


# ---------------------------------------------------------------- names that become paths (issue 27, item 1)


def _space_with(tmp_path: Path, study: dict | None = None, fixed: dict | None = None) -> Path:
    import yaml

    raw = yaml.safe_load(Path(SPACE).read_text())
    raw["study"].update(study or {})
    raw["fixed"].update(fixed or {})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    return space


NAME_CASES = {
    "study_dot_dot": ({"name": ".."}, {}, "study.name"),
    "study_dot": ({"name": "."}, {}, "study.name"),
    "study_hidden": ({"name": ".quickstart"}, {}, "study.name"),
    "study_slash": ({"name": "a/../../b"}, {}, "study.name"),
    "study_blank": ({"name": " "}, {}, "study.name"),
    "study_option_like": ({"name": "-rf"}, {}, "study.name"),
    "study_300_chars": ({"name": "s" * 300}, {}, "study.name"),
    "experiment_dot_dot": ({}, {"tracking.experiment": ".."}, "tracking.experiment"),
    "experiment_blank": ({}, {"tracking.experiment": " "}, "tracking.experiment"),
    "run_name_slash": ({}, {"tracking.run_name": "runs/../x"}, "tracking.run_name"),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_name_that_escapes_is_refused(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """A name that would leave its directory (``..`` once removed the whole temporary directory) stops the
    search before Ray starts; the temporary directory's other files, another study's scratch included, survive."""
    import tempfile

    study, fixed, name = NAME_CASES[case]
    tmp = tmp_path / "tmp"
    (tmp / "gatesearch-trials" / "other-study" / "run1").mkdir(parents=True)
    (tmp / "gatesearch-trials" / "other-study" / "run1" / "last.pt").write_text("another study's")
    (tmp / "keep.txt").write_text("someone else's")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    argv = ["search", "--space", str(_space_with(tmp_path, study, fixed)), "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)
    assert (tmp / "keep.txt").read_text() == "someone else's"


TRAIN_NAME_CASES = {
    "experiment_blank_yaml": ("tracking:\n  experiment: ' '\n", "tracking.experiment"),
    "experiment_dot_dot_yaml": ("tracking:\n  experiment: ..\n", "tracking.experiment"),
    "experiment_300_chars": (f"tracking:\n  experiment: {'e' * 300}\n", "tracking.experiment"),
    "run_name_trailing_space": ("tracking:\n  run_name: 'run '\n", "tracking.run_name"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_NAME_CASES))
def test_train_name_that_escapes_is_refused(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, name = TRAIN_NAME_CASES[case]
    config = tmp_path / "c.yaml"
    config.write_text(text)
    argv = ["train", "--config", str(config), "--set", f"train.out_dir={tmp_path / 'out'}",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)


# ---------------------------------------------------------------- limits, overwrites, failed look-ups (items 3, 8)


LIMIT_CASES = {
    "eval_all_patterns_27_units": (["train", "--no-mlflow", "--set", "train.eval_all_patterns_max_units=27"],
                                   "train.eval_all_patterns_max_units"),
    "eval_all_patterns_negative": (["train", "--no-mlflow", "--set", "train.eval_all_patterns_max_units=-1"],
                                   "train.eval_all_patterns_max_units"),
    "train_again_without_resume": (["train", "--no-mlflow", "--set", "train.out_dir={earlier}"], "train.out_dir"),
    "train_again_with_mlflow": (["train", "--set", "train.out_dir={earlier}", "--tracking-uri", "{db}"],
                                "train.out_dir"),
    "select_run_no_store": (["select", "--run", "0123abcd", "--device", "jetson", "--tracking-uri", "{db}"],
                            "0123abcd"),
    "select_run_empty_store": (["select", "--run", "0123abcd", "--device", "jetson", "--tracking-uri",
                                "sqlite:///{file}"], "0123abcd"),
}


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_limit_overwrite_or_lookup_refused(case: str, assets: dict, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """``train`` into a directory holding ``last.pt`` without ``--resume`` keeps it; ``select --run`` on a store
    that does not exist creates none; a pattern bound that cannot fit an evaluation is refused."""
    argv, name = LIMIT_CASES[case]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "last.pt").write_bytes(assets["ckpt"].read_bytes())
    (tmp_path / "file").write_bytes(b"")  # an empty file: MLflow would make it a store
    err = _expect_clean_failure(_fill(argv, assets, tmp_path, earlier=str(earlier)), name, capsys,
                                [tmp_path, assets["dir"]], FAST_S)
    if case.startswith("train_again"):
        assert "--resume" in err[0]


# ---------------------------------------------------------------- compute settings (issue 25 item 2)


COMPILE_CASES = {
    "train_unknown_backend": (["train", "--no-mlflow", "--set", "train.compile=tvm"], "train.compile"),
    "train_compile_not_a_name": (["train", "--no-mlflow", "--set", "train.compile=true"], "train.compile"),
    "search_fixed_unknown_backend": (["search", "--space", "{space}"], "train.compile"),
    "search_searched_unknown_backend": (["search", "--space", "{searched}"], "train.compile"),
    "on_device_imagefolder": (["train", "--no-mlflow", "--set", "data.name=imagefolder", "--set", "data.on_device=true"],
                              "data.on_device"),
    "on_device_with_workers": (["train", "--no-mlflow", "--set", "data.on_device=true", "--set", "data.num_workers=2"],
                               "data.on_device"),
}


@pytest.mark.parametrize("case", sorted(COMPILE_CASES))
def test_bad_compute_setting_stops_before_any_work(case: str, assets: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A ``train.compile`` backend that is not offered, fixed or searched in a study, stops with one line
    naming the key before any trial (or any training) starts; so do data on the device with an
    ImageFolder set or with loader workers."""
    text = Path(SPACE).read_text().replace("study:\n  name: quickstart", "study:\n  name: bad_compile")
    (tmp_path / "space.yaml").write_text(text.replace("  train.device: cpu\n", "  train.device: cpu\n"
                                                      "  train.compile: tvm\n"))
    (tmp_path / "searched.yaml").write_text(text.replace("search:\n", "search:\n"
                                                         "  train.compile: {choice: [aot_eager, tvm]}\n"))
    argv, name = COMPILE_CASES[case]
    argv = [a.format(space=tmp_path / "space.yaml", searched=tmp_path / "searched.yaml") for a in argv]
    _expect_clean_failure(_fill(argv, assets, tmp_path), name, capsys, [tmp_path, assets["dir"]], FAST_S)


# ---------------------------------------------------------------- --resume trusts only what it checks (issue 27 item 2)


def _tamper(kind: str, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the store untrusted at ``target`` (a planted payload) in one way; returns the path the refusal names."""
    if kind == "file_group_writable":
        target.chmod(0o664)
    elif kind == "file_other_writable":
        target.chmod(0o646)
    elif kind == "dir_group_writable":
        target.parent.chmod(0o775)
        return target.parent
    elif kind == "symlink":  # a link to a file outside the store, however harmless its own modes look
        outside = tmp_path / "elsewhere.pkl"
        outside.write_bytes(target.read_bytes())
        target.unlink()
        target.symlink_to(outside)
    elif kind == "foreign_owner":  # another user's file, faked in the os.lstat result the check reads
        real = os.lstat

        def lstat(path: object, *args: object, **kwargs: object) -> os.stat_result:
            st = real(path, *args, **kwargs)
            if os.fspath(path) != str(target):
                return st
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 54321, st.st_gid, st.st_size,
                                   int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))

        monkeypatch.setattr(os, "lstat", lstat)
    return target


TAMPERS = ["file_group_writable", "file_other_writable", "dir_group_writable", "symlink", "foreign_owner"]


@pytest.mark.parametrize("tamper", TAMPERS)
@pytest.mark.parametrize("place", sorted(PLACES))
def test_resume_refuses_a_planted_payload(place: str, tamper: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """Every file Tune unpickles on ``--resume`` (the study's and its re-evaluation's tuner, experiment state,
    search state, each trial's params.pkl and error.pkl) holds a payload; tampered with in any one place,
    ``--resume`` stops with one line naming that path, before the payload can run."""
    storage, marker = tmp_path / "rr", tmp_path / "payload_ran"
    named = _tamper(tamper, plant(storage, marker)[place], tmp_path, monkeypatch)
    argv = ["search", "--space", SPACE, "--storage", str(storage), "--resume",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    try:
        err = _expect_clean_failure(argv, "--resume", capsys, [tmp_path], FAST_S)
    finally:
        named.chmod(0o755 if named.is_dir() else 0o644)
    assert str(named) in err[0] and not marker.exists()


# ---------------------------------------------------------------- a study's store is one study's (issue 27 item 4)


_HOLD = ("import sys, time\nfrom pathlib import Path\nfrom gatesearch.search.preflight import study_lock\n"
         "with study_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.mark.parametrize("resume", [False, True])
def test_second_search_on_a_locked_study_names_the_holder(resume: bool, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Another ``search`` holds the study (here a process holding its lock): a second one, resumed or not, stops
    with one line naming the holder's pid and host, and changes nothing in the store."""
    storage = tmp_path / "rr"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(storage / "quickstart")], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["search", "--space", SPACE, "--storage", str(storage), "--tracking-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}", *(["--resume"] if resume else [])]
        err = _expect_clean_failure(argv, "--storage", capsys, [tmp_path], FAST_S)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err[0]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- resources the cluster cannot give (issue 27 item 6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: a GPU trial fits its local Ray")
@pytest.mark.parametrize("resources,name", [("{cpu: 1, gpu: 1}", "study.resources.gpu"),
                                            ("{cpu: 1, gpu: 0.5}", "study.resources.gpu"),
                                            ("{workers: 2, cpus_per_worker: 1, gpus_per_worker: 1}",
                                             "study.resources.gpus_per_worker")])
def test_gpu_trials_on_a_local_ray_without_a_gpu(resources: str, name: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """GPU trials (one process, or Ray Train workers) on a local Ray with no GPU stop before any trial (they
    used to wait PENDING until the time budget): one line naming the key, no parent run, no store."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray's first local start in a process logs a line about it
    text = Path(SPACE).read_text()
    assert "resources: {cpu: 1, gpu: 0}" in text
    (tmp_path / "space.yaml").write_text(text.replace("resources: {cpu: 1, gpu: 0}", f"resources: {resources}"))
    argv = ["search", "--space", str(tmp_path / "space.yaml"),
            "--storage", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], 90.0)  # a local Ray starts first


def test_more_workers_than_a_local_ray_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """``study.resources.workers`` x ``cpus_per_worker`` above what a local Ray can ever hold (at most two CPU
    slots per core) stops before any trial: one line naming the key, no parent run, no store."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    text = Path(SPACE).read_text()
    bad = f"resources: {{workers: {4 * (os.cpu_count() or 1) + 1}, cpus_per_worker: 1}}"
    (tmp_path / "space.yaml").write_text(text.replace("resources: {cpu: 1, gpu: 0}", bad))
    argv = ["search", "--space", str(tmp_path / "space.yaml"),
            "--storage", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, "study.resources.workers", capsys, [tmp_path], 90.0)  # a local Ray starts first


@pytest.mark.parametrize("resume", [False, True])
def test_a_file_in_place_of_the_study_directory(resume: bool, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "quickstart").write_text("not a study")
    argv = ["search", "--space", SPACE, "--storage", str(tmp_path / "rr"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}", *(["--resume"] if resume else [])]
    _expect_clean_failure(argv, "--storage", capsys, [tmp_path], FAST_S)


# ---------------------------------------------------------------- inputs that passed validation and failed later (item 6)


def _driver_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


LATE_CASES = {
    # seeds numpy refuses (np.random.seed: [0, 2**32 - 1]) once training starts
    "train_seed_2_pow_40": (["train", "--no-mlflow", "--set", f"train.seed={2**40}"], "train.seed"),
    "train_seed_negative": (["train", "--no-mlflow", "--set", "train.seed=-1"], "train.seed"),
    "train_seed_1e23": (["train", "--no-mlflow", "--set", "train.seed=1e23"], "train.seed"),
    "split_seed_2_pow_40": (["train", "--no-mlflow", "--set", f"data.split_seed={2**40}"], "data.split_seed"),
    "split_seed_negative": (["train", "--no-mlflow", "--set", "data.split_seed=-1"], "data.split_seed"),
    "split_seed_1e23": (["train", "--no-mlflow", "--set", "data.split_seed=1e23"], "data.split_seed"),
    # tracking stores MLflow cannot open
    "tracking_unknown_scheme": (["train", "--tracking-uri", "ftp://127.0.0.1/mlflow"], "ftp://127.0.0.1/mlflow"),
    "tracking_s3_scheme": (["train", "--tracking-uri", "s3://bucket/mlflow"], "s3://bucket/mlflow"),
    "tracking_postgres_no_driver": (["train", "--tracking-uri", "postgresql://u@127.0.0.1/mlflow"], "postgresql://"),
    "tracking_mysql_no_driver": (["train", "--tracking-uri", "mysql://u@127.0.0.1/mlflow"], "mysql://"),
    "tracking_unknown_driver": (["train", "--tracking-uri", "postgresql+nodriver://u@127.0.0.1/m"], "postgresql+nodriver"),
    "tracking_sqlite_not_a_db": (["train", "--tracking-uri", "sqlite:///{file}"], "is not an SQLite database"),
    "tracking_sqlite_in_memory": (["train", "--tracking-uri", "sqlite://"], "sqlite://"),
    "select_run_unknown_scheme": (["select", "--run", "0123abcd", "--device", "jetson", "--tracking-uri", "ftp://h/x"],
                                  "ftp://h/x"),
    "search_postgres_no_driver": (["search", "--space", SPACE, "--storage", "{new}", "--tracking-uri",
                                   "postgresql://u@127.0.0.1/mlflow"], "postgresql://"),
    # keys whose range is the model's, and models that cannot take the data
    "vit_b_16_on_digits": (["train", "--no-mlflow", "--set", "model.name=vit_b_16"], "vit_b_16"),
    "vit_ti_4_on_digits": (["train", "--no-mlflow", "--set", "model.name=vit_ti_4"], "vit_ti_4"),
    "feature_kl_stage_3_of_3": (["train", "--no-mlflow", "--set", "method.adn.feature_kl_stages=[3]"],
                                "method.adn.feature_kl_stages"),
    "output_kl_top_k_above_classes": (["train", "--no-mlflow", "--set", "method.adn.output_kl_top_k=11"],
                                      "method.adn.output_kl_top_k"),
    "plain_train_pattern_too_long": (["train", "--no-mlflow", "--set", "method.name=plain", "--set",
                                      "method.plain.train_pattern=TTTT"], "method.plain.train_pattern"),
    "unit_targets_wrong_count": (["train", "--no-mlflow", "--set", "method.name=probgates", "--set",
                                  "model.gate_head=logit", "--set", "method.probgates.loss=per_gate", "--set",
                                  "method.probgates.unit_targets=[0.5,0.5]"], "method.probgates.unit_targets"),
    "patterns_vit_b_16_8px": (["patterns", "--model", "vit_b_16", "--image-size", "8"], "vit_b_16"),
    "patterns_vit_ti_4_64px": (["patterns", "--model", "vit_ti_4", "--image-size", "64", "--stem", "cifar"],
                               "vit_ti_4"),
}
_DRIVERS = {"tracking_postgres_no_driver": "psycopg", "search_postgres_no_driver": "psycopg",
            "tracking_mysql_no_driver": "MySQLdb"}


@pytest.mark.parametrize("case", sorted(LATE_CASES))
def test_input_that_failed_later_stops_before_any_work(case: str, assets: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Seeds numpy refuses, tracking stores MLflow cannot open, per-model keys out of the model's range and models
    that cannot take the data used to pass validation and fail after the data was read, the run opened or the first
    trial trained; each is now one line before anything is written."""
    if case in _DRIVERS and not _driver_missing(_DRIVERS[case]):
        pytest.skip(f"{_DRIVERS[case]} is installed here")
    argv, name = LATE_CASES[case]
    (tmp_path / "file").write_text("not a database, keep me")
    _expect_clean_failure(_fill(argv, assets, tmp_path), name, capsys, [tmp_path, assets["dir"]], FAST_S)


def _space_edit(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    import yaml

    raw = yaml.safe_load(Path(SPACE).read_text())
    edit(raw)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    return space


SPACE_LATE_CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "objective_unknown_metric": (lambda r: r["study"].update(objective={"metric": "accuracy"}), "accuracy"),
    "objective_pattern_of_4_for_3_units": (lambda r: r["study"].update(objective={"metric": "top1_FFFF"}),
                                           "top1_FFFF"),
    "objective_gated_without_gates": (lambda r: r["study"].update(objective={"metric": "top1_gated"}), "top1_gated"),
    "objective_test_split": (lambda r: r["study"].update(objective={"metric": "test_frontier_score"}),
                             "test_frontier_score"),
    "objective_gate_rate_of_adn": (lambda r: (r["study"].pop("reeval"), r["study"].update(
        objective=[{"metric": "frontier_score"}, {"metric": "gate_rate_mean"}])), "gate_rate_mean"),
    "study_seed_2_pow_40": (lambda r: r["study"].update(seed=2**40), "study.seed"),
    "fixed_train_seed_negative": (lambda r: r["fixed"].update({"train.seed": -1}), "train.seed"),
    "when_int_value_out_of_range": (lambda r: r["search"].update({"method.gated_depth.alpha": {
        "uniform": [0.3, 0.7], "when": {"method.gated_depth.k": 50}}}), "method.gated_depth.k"),
    "when_on_continuous_key": (lambda r: r["search"].update({"method.gated_depth.alpha": {
        "uniform": [0.3, 0.7], "when": {"optim.lr": 0.1}}}), "optim.lr"),
    "when_choice_value_not_offered": (lambda r: r["search"].update({"method.gated_depth.alpha": {
        "uniform": [0.3, 0.7], "when": {"method.name": ["gated_depth", "gated_dpeth"]}}}), "gated_dpeth"),
    "fixed_vit_on_digits": (lambda r: r["fixed"].update({"model.name": "vit_ti_4"}), "vit_ti_4"),
    "fixed_feature_kl_stage_out_of_model": (lambda r: r["fixed"].update({"method.adn.feature_kl_stages": [5]}),
                                            "method.adn.feature_kl_stages"),
    "searched_model_input_too_small": (lambda r: (r["fixed"].pop("model.name"), r["search"].update(
        {"model.name": {"choice": ["resnet20", "vit_b_16"]}})), "vit_b_16"),
}


@pytest.mark.parametrize("case", sorted(SPACE_LATE_CASES))
def test_space_that_failed_after_a_trial_stops_before_ray(case: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """An objective no trial reports (Tune stopped the study at the first result without it), a ``when`` value its
    key cannot take, a seed numpy refuses and a model that cannot take the data stop ``search`` before Ray starts."""
    edit, name = SPACE_LATE_CASES[case]
    argv = ["search", "--space", str(_space_edit(tmp_path, edit)), "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _expect_clean_failure(argv, name, capsys, [tmp_path], FAST_S)


def test_local_ray_token_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token a local ``ray.init`` generates (``~/.ray/auth_token``, written with the umask's 0644) ends 0600 in a
    0700 directory; a token directory the user already had keeps its mode."""
    import ray

    from gatesearch.search import runner
    from gatesearch.search.space import load_space

    def fake_init(**kwargs: object) -> None:  # what Ray 2.60 does: mkdir + open(..., "w") under the umask
        token = Path.home() / ".ray" / "auth_token"
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text("secret")
        token.chmod(0o644)

    space = load_space(SPACE)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    for home, dir_before in ((tmp_path / "new", None), (tmp_path / "had", 0o750)):
        home.mkdir()
        if dir_before is not None:
            (home / ".ray").mkdir(mode=dir_before)
        monkeypatch.setenv("HOME", str(home))
        runner._init_ray(runner.SearchOptions(space=SPACE), space)
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600
        assert token.parent.stat().st_mode & 0o777 == (0o700 if dir_before is None else dir_before)
