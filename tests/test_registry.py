import pytest

from gatesearch.registry import Registry


def test_duplicate_name_raises():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.add("a", 2)


def test_unknown_name_lists_known():
    reg: Registry[int] = Registry("thing")
    reg.add("b", 1)

    @reg.register("c")
    def c() -> int:
        return 3

    assert reg.get("c") is c and "b" in reg and reg.names() == ["b", "c"]
    with pytest.raises(KeyError, match="unknown thing 'z'; known: b, c"):
        reg.get("z")
