"""Where the CLI writes, and what it refuses to enumerate: ``export --out DIR/`` writes inside the directory,
``patterns`` walks the patterns lazily (block-gated resnet56 has 2^27), a list of all patterns is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatesearch.checkpoint import build_model, save_checkpoint
from gatesearch.cli import main
from gatesearch.config import from_flat
from gatesearch.errors import UserError
from gatesearch.patterns import ALL_PATTERNS_MAX_UNITS, all_patterns, iter_patterns


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnet20 checkpoint (digits input, 1x8x8, three units)."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg = from_flat({"model.name": "resnet20", "data.name": "digits", "method.name": "adn", "train.device": "cpu",
                     "train.out_dir": str(d)})
    model = build_model(cfg, 10, (1, 8, 8))
    return save_checkpoint(d / "last.pt", model, cfg, epoch=0, metrics={}, input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("fmt,name", [("onnx", "TFF.onnx"), ("torchscript", "TFF.pt")])
@pytest.mark.parametrize("existing", [False, True])
def test_export_into_a_directory(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str, name: str,
                                 existing: bool) -> None:
    """``--out newdir/`` (trailing slash) or an existing directory: a file named for the pattern inside it."""
    out = tmp_path / "models"
    if existing:
        out.mkdir()
    arg = str(out) if existing else str(out) + "/"
    assert main(["export", "--checkpoint", str(ckpt), "--pattern", "tff", "--format", fmt, "--out", arg]) == 0
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert str(out / name) in capsys.readouterr().out


def test_export_to_a_file_name_is_unchanged(ckpt: Path, tmp_path: Path) -> None:
    assert main(["export", "--checkpoint", str(ckpt), "--pattern", "FFF", "--out", str(tmp_path / "m.onnx")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_patterns_limit_is_lazy(capsys: pytest.CaptureFixture) -> None:
    """27 units: the first 4 patterns print at once; listing all 2^27 first ran out of memory."""
    assert main(["patterns", "--model", "resnet56", "--gating", "block", "--limit", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "units=27" in lines[0]
    assert [line.split()[0] for line in lines[2:6]] == ["F" * 27, "F" * 26 + "T", "F" * 25 + "TF", "F" * 25 + "TT"]
    assert lines[6].startswith("(T = unit skipped")


def test_all_patterns_is_bounded() -> None:
    assert len(all_patterns(ALL_PATTERNS_MAX_UNITS)) == 2**ALL_PATTERNS_MAX_UNITS
    with pytest.raises(UserError, match="27 units"):
        all_patterns(27)
    assert str(next(iter(iter_patterns(27)))) == "F" * 27  # the lazy walk has no bound
