from pathlib import Path

import pytest
from _training import one_thread

from gatesearch.cli import main

_threads = pytest.fixture(autouse=True)(one_thread)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2", "--set", "data.batch_size=32"]


def _run(capsys, tmp_path, *args):
    code = main(["train", "--no-mlflow", "--set", f"train.out_dir={tmp_path}", *FAST, *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.name=nope", "method.name"),
        ("model.name=resnet7", "model.name"),
        ("data.name=mnist", "unknown dataset"),
        ("method.adn.alpha=1.5", "method.adn.alpha"),
        ("method.gated_depth.alpha=-0.1", "method.gated_depth.alpha"),
        ("method.gated_depth.p_min=0.9", "p_min"),
        ("method.gated_depth.k=0", "method.gated_depth.k"),
        ("data.name=cifar10", "data.root"),
        ("method.plain.train_pattern=TX", "train_pattern"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, override, needle):
    extra = ["--set", "method.gated_depth.p_max=0.5"] if "p_min" in override else []
    code, out = _run(capsys, tmp_path, "--set", override, *extra)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.err


def test_missing_data_dir(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}/nodata")
    assert code == 2 and "nodata" in out.err and len(out.err.strip().splitlines()) == 1


def test_corrupt_checkpoint_and_missing_config(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    code, out = _run(capsys, tmp_path, "--resume", str(bad))
    assert code == 2 and "corrupt" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = _run(capsys, tmp_path, "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "none.yaml" in out.err


def test_diverging_run_exits_1_with_one_line(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--set", "optim.lr=1e30", "--set", "train.max_steps_per_epoch=10")
    assert code == 1
    last = out.err.strip().splitlines()[-1]
    assert "diverged" in last


def test_train_example_config_and_resume(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--config", str(CONFIGS / "digits_adn.yaml"))
    assert code == 0 and "top1_super" in out.out
    code, out = _run(capsys, tmp_path, "--config", str(CONFIGS / "digits_adn.yaml"), "--set", "train.epochs=2",
                     "--resume", str(tmp_path / "last.pt"))
    assert code == 0 and "epoch 2/2" in out.err and "epoch 1/2" not in out.err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from gatesearch.config import load

    assert load(path).method.name in path.stem
