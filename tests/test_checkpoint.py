import pytest
import torch
from _training import quick_cfg

from gatesearch.checkpoint import build_model, load_checkpoint, save_checkpoint
from gatesearch.errors import UserError
from gatesearch.patterns import SkipPattern


def test_roundtrip_same_outputs(tmp_path):
    cfg = quick_cfg(str(tmp_path), "probgates", model__gating="block", model__gate_head="aig",
                    method__probgates__target=0.5)
    torch.manual_seed(0)
    model = build_model(cfg, 10, (1, 8, 8)).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "c.pt", model, cfg, epoch=3, metrics={"top1_super": 0.5}, optimizer=opt,
                           input_shape=(1, 8, 8), num_classes=10, method_state={"variable_target": 0.4})
    ck = load_checkpoint(path)
    assert ck.config == cfg and ck.epoch == 3 and ck.metrics == {"top1_super": 0.5} and ck.input_shape == (1, 8, 8)
    assert ck.method_state == {"variable_target": 0.4} and ck.optimizer is not None and not ck.model.training
    x = torch.randn(4, 1, 8, 8)
    p = SkipPattern.parse("FTFTFTFTF")  # block gating: 9 units (downsampling blocks gated)
    torch.testing.assert_close(ck.model(x, p), model(x, p))
    raw = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert raw["config"]["method.name"] == "probgates"


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(bad)
    cfg = quick_cfg(str(tmp_path), "plain")
    good = save_checkpoint(tmp_path / "g.pt", build_model(cfg, 10, (1, 8, 8)), cfg, epoch=0, metrics={},
                           input_shape=(1, 8, 8), num_classes=10)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "trunc.pt")


def test_checkpoint_from_before_gate_downsample_loads_with_its_layout(tmp_path):
    """A checkpoint whose config has no ``model.gate_downsample`` was trained with mandatory
    downsampling blocks (7 block-gated units on resnet20): it loads with that layout."""
    cfg = quick_cfg(str(tmp_path), "probgates", model__gating="block", model__gate_downsample=False)
    model = build_model(cfg, 10, (1, 8, 8))
    path = save_checkpoint(tmp_path / "old.pt", model, cfg, epoch=0, metrics={}, input_shape=(1, 8, 8), num_classes=10)
    raw = torch.load(path, weights_only=True)
    del raw["config"]["model.gate_downsample"]
    torch.save(raw, path)
    assert load_checkpoint(path).model.n_units == 7


@pytest.mark.parametrize("switchable", [False, True])
def test_shortcut_bn_layout_round_trips_and_an_older_checkpoint_keeps_two_sets(tmp_path, switchable):
    """``model.switchable_shortcut_bn`` reaches the model (a shared shortcut BN has one set, a switchable
    one two); a checkpoint written before the key existed had two sets where the model had switchable BN,
    and loads so."""
    cfg = quick_cfg(str(tmp_path), "adn", model__switchable_shortcut_bn=switchable)
    torch.manual_seed(0)
    model = build_model(cfg, 10, (1, 8, 8)).eval()
    shared = build_model(quick_cfg(str(tmp_path), "adn"), 10, (1, 8, 8))
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in shared.parameters())
    # resnet20's two mandatory downsampling blocks (16->32, 32->64): a second BN set holds 2 * (32 + 64) params
    assert extra == (2 * (32 + 64) if switchable else 0)
    path = save_checkpoint(tmp_path / "c.pt", model, cfg, epoch=0, metrics={}, input_shape=(1, 8, 8), num_classes=10)
    x = torch.randn(2, 1, 8, 8)
    for p in ("FFF", "TTT", "FTF"):
        torch.testing.assert_close(load_checkpoint(path).model(x, SkipPattern.parse(p)), model(x, SkipPattern.parse(p)))
    if switchable:  # as written before the key existed
        raw = torch.load(path, weights_only=True)
        del raw["config"]["model.switchable_shortcut_bn"]
        torch.save(raw, path)
        assert load_checkpoint(path).config.model.switchable_shortcut_bn


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    """#27 item 3: a write that fails (ENOSPC) is one UserError line; last.pt.tmp is removed and the previous
    last.pt loads as it was."""
    import errno

    cfg = quick_cfg(str(tmp_path), "plain")
    model = build_model(cfg, 10, (1, 8, 8))
    path = save_checkpoint(tmp_path / "last.pt", model, cfg, epoch=0, metrics={}, input_shape=(1, 8, 8), num_classes=10)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        open(f, "wb").write(b"partial")  # a half-written file, as a full disk leaves it
        raise RuntimeError(f"[enforce fail] {OSError(errno.ENOSPC, 'No space left on device')}")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="cannot be written .*No space left on device.*previous checkpoint is intact"):
        save_checkpoint(path, model, cfg, epoch=1, metrics={}, input_shape=(1, 8, 8), num_classes=10)
    assert not (tmp_path / "last.pt.tmp").exists() and path.read_bytes() == before
    assert load_checkpoint(path).epoch == 0
