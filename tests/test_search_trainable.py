"""The trials' scratch directory (search/trainable.py): one directory per study run under
``<tmp>/gatesearch-trials``, resolved and checked, and removing it removes nothing beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from gatesearch.errors import UserError
from gatesearch.search.trainable import SCRATCH_ROOT, TrialContext, remove_scratch, scratch_dir


def _ctx(study: str, parent: str = "0123abcd") -> TrialContext:
    return TrialContext(tracking_uri="sqlite:///x.db", experiment_id="1", parent_run_id=parent, study=study,
                        epochs=1, objective_metrics=("top1_super",))


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of its own, holding a file and another study's scratch files."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / SCRATCH_ROOT / "other" / "run").mkdir(parents=True)
    (tmp_path / SCRATCH_ROOT / "other" / "run" / "last.pt").write_text("other study")
    (tmp_path / "keep.txt").write_text("keep")
    return tmp_path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_scratch_dir_is_per_study_run(tmp: Path) -> None:
    assert scratch_dir(_ctx("quickstart")) == tmp.resolve() / SCRATCH_ROOT / "quickstart" / "0123abcd"


def test_remove_scratch_removes_only_its_own(tmp: Path) -> None:
    mine = scratch_dir(_ctx("quickstart"))
    (mine / "worker-1" / "fit").mkdir(parents=True)
    (mine / "worker-1" / "fit" / "last.pt").write_text("mine")
    sibling = scratch_dir(_ctx("quickstart", "fedcba98"))  # the same study name, another run of it
    sibling.mkdir()
    (sibling / "last.pt").write_text("a concurrent run's")
    before = _files(tmp)
    remove_scratch(_ctx("quickstart"))
    assert _files(tmp) == {p for p in before if not p.startswith(f"{SCRATCH_ROOT}/quickstart/0123abcd")}
    remove_scratch(_ctx("quickstart", "fedcba98"))  # the study's directory goes once it is empty
    assert not (tmp / SCRATCH_ROOT / "quickstart").exists() and (tmp / SCRATCH_ROOT / "other").is_dir()


@pytest.mark.parametrize("study,parent", [("..", "x"), (".", "x"), ("a/..", "x"), ("q", ".."), ("q", "../../y")])
def test_scratch_dir_outside_its_parent_is_refused(study: str, parent: str, tmp: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Even a name that slipped past study.name's check: ``..`` resolves outside, nothing is removed."""
    before = _files(tmp)
    with pytest.raises(UserError, match="scratch directory"):
        scratch_dir(_ctx(study, parent))  # a trial refuses to start in it
    remove_scratch(_ctx(study, parent))  # the runner's clean-up removes nothing and says so
    assert _files(tmp) == before
    assert capsys.readouterr().err.startswith("removed nothing: trial scratch directory")


def test_scratch_dir_through_a_planted_link_is_refused(tmp: Path) -> None:
    """A study directory that is a symbolic link (the temporary directory is shared) is not followed."""
    elsewhere = tmp / "elsewhere"
    (elsewhere / "0123abcd").mkdir(parents=True)
    (elsewhere / "0123abcd" / "precious").write_text("not a trial's")
    (tmp / SCRATCH_ROOT / "quickstart").symlink_to(elsewhere)
    with pytest.raises(UserError, match="scratch directory"):
        scratch_dir(_ctx("quickstart"))
    remove_scratch(_ctx("quickstart"))
    assert (elsewhere / "0123abcd" / "precious").read_text() == "not a trial's"
