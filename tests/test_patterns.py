import pytest
import torch

from gatesearch.patterns import SkipPattern, all_patterns


def test_parse_and_print_round_trip():
    p = SkipPattern.parse("tfFT")
    assert str(p) == "TFFT"
    assert p.skipped == (True, False, False, True)
    assert p.n_kept == 2
    assert repr(p) == "SkipPattern('TFFT')"


@pytest.mark.parametrize("text, n, msg", [("TFX", 3, "letters"), ("TF", 3, "has 2 units"), ("T F", None, "letters")])
def test_parse_rejects_bad_input(text, n, msg):
    with pytest.raises(ValueError, match=msg):
        SkipPattern.parse(text, n)


def test_super_and_base():
    assert str(SkipPattern.super_net(4)) == "FFFF"
    assert str(SkipPattern.base_net(4)) == "TTTT"


def test_all_patterns_order_and_count():
    pats = all_patterns(3)
    assert len(pats) == 8 and len(set(pats)) == 8
    assert str(pats[0]) == "FFF" and str(pats[-1]) == "TTT"


def test_keep_tensor_matches_flags():
    t = SkipPattern.parse("TFT").keep_tensor(batch=2)
    assert t.shape == (2, 3)
    assert torch.equal(t[1], torch.tensor([0.0, 1.0, 0.0]))
    assert SkipPattern.from_keep(t[0]) == SkipPattern.parse("TFT")
