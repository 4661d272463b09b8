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


def test_deferred_backbones_are_each_modules_builders():
    """Every name ``models/__init__.py`` defers is one of its module's ``BUILDERS`` and back, and the
    deferred builder builds what the module's own builder builds."""
    import importlib

    import torch

    from gatesearch.models import DEFERRED_MODELS, MODELS, create_model

    for module in set(DEFERRED_MODELS.values()):
        builders = importlib.import_module(f"gatesearch.models.{module}").BUILDERS
        assert set(builders) == {n for n, m in DEFERRED_MODELS.items() if m == module}
    assert set(DEFERRED_MODELS) <= set(MODELS.names())
    from gatesearch.models.vit import BUILDERS

    torch.manual_seed(0)
    a = create_model("vit_ti_4", 10, gating="stage")
    torch.manual_seed(0)
    b = BUILDERS["vit_ti_4"](num_classes=10, gating="stage", stem="cifar")
    assert type(a) is type(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_trial_worker_imports_neither_torchvision_nor_scipy_stats():
    """What every Ray trial worker and DDP rank imports (``search.trainable``, ``train``, ``checkpoint``) and
    what the selector imports leave out torchvision (about 1.5 s a process, with ``torch._dynamo``) and
    ``scipy.stats`` (about 1 s): they load when a torchvision backbone is built or a quantile taken."""
    import subprocess
    import sys

    code = ("import sys, gatesearch.search.trainable, gatesearch.train, gatesearch.selection.select, gatesearch.export\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'scipy.stats') if m in sys.modules))\n"
            "from gatesearch.models import create_model\n"
            "from gatesearch.stats import t_interval\n"
            "create_model('swin_nano_2', 10, gating='stage'); t_interval([1.0, 2.0])\n"
            "print(sorted(m for m in ('torchvision', 'scipy.stats') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "['scipy.stats', 'torchvision']"]
