import pytest

from gatesearch.config import Config, ConfigError, flat_keys, from_flat, from_nested, load, to_flat, to_nested
from gatesearch.resolve import check_names


def test_defaults_round_trip_through_flat_and_nested():
    cfg = Config()
    assert from_flat(to_flat(cfg)) == cfg
    assert from_nested(to_nested(cfg)) == cfg
    assert "method.adn.alpha" in flat_keys() and "model.name" in flat_keys()


@pytest.mark.parametrize(
    "flat, key",
    [
        ({"model.nam": "resnet20"}, "model.nam"),
        ({"model.name": "resnet7"}, "model.name"),
        ({"method.adn.alpha": 1.5}, "method.adn.alpha"),
        ({"method.gated_depth.p_min": 0.9, "method.gated_depth.p_max": 0.5}, "method.gated_depth.p_min"),
        ({"method.gated_depth.k": 0}, "method.gated_depth.k"),
        ({"train.epochs": "many"}, "train.epochs"),
        ({"model.gating": "layer"}, "model.gating"),
        ({"model.gate_downsample": True}, "model.gate_downsample"),  # needs gating=block
        ({"model.gate_init_keep": 1.0}, "model.gate_init_keep"),
        ({"method.probgates.unit_targets": [1.0, 0.5]}, "method.probgates.unit_targets"),  # needs per_gate
        ({"method.probgates.target_schedule": "annealed", "method.probgates.anneal_start": 0.3},
         "method.probgates.anneal_start"),
    ],
)
def test_bad_values_name_the_key(flat, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_names(from_flat(flat))  # types and ranges in config, names where they resolve


def test_load_yaml_with_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: resnet56\nmethod:\n  name: adn\n  adn:\n    alpha: 0.3\n")
    cfg = load(f, ["method.adn.alpha=0.7", "train.epochs=3", "method.probgates.targets=[1.0, 0.8]"])
    assert cfg.model.name == "resnet56" and cfg.method.adn.alpha == 0.7 and cfg.train.epochs == 3
    assert cfg.method.probgates.targets == (1.0, 0.8)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_probgates_defaults_are_the_papers():
    """002_...txt and ConvNet-AIG, cited per key in ``docs/training.md``."""
    o = Config().method.probgates
    assert (o.loss, o.target, o.weight, o.rate_on) == ("per_batch", 0.5, 1.0, "sample")  # Sec. 3.1, 4.1.1, 2.1
    assert (o.tau_start, o.tau_end) == (1.0, 1.0)  # AIG's fixed Gumbel temperature
    assert (o.anneal_start, o.anneal_step, o.anneal_every) == (1.0, 0.05, 5)  # Sec. 6, supplement S2.1
    assert (o.inference, o.threshold, o.runs) == ("threshold", 0.5, 5)  # Sec. 3.2, 4.1.2, Fig. 4
    assert (o.gate_lr_mult, o.gate_weight_decay) == (1.0, None)  # AIG: one lr and decay for all groups
    assert Config().model.gate_init_keep == 0.9
# ---------------------------------------------------------------- recipes whose parts never train


@pytest.mark.parametrize(
    "flat, keys",
    [
        ({"method.name": "gated_depth", "method.gated_depth.k": 1, "method.gated_depth.teacher_grad": False},
         ["method.gated_depth.k", "method.gated_depth.teacher_grad"]),
        ({"method.name": "gated_depth", "method.gated_depth.k": 1, "method.gated_depth.alpha": 1.0},
         ["method.gated_depth.k", "method.gated_depth.alpha"]),
        ({"method.name": "adn", "method.adn.alpha": 0.0}, ["method.adn.alpha"]),
        ({"method.name": "adn", "method.adn.alpha": 1.0}, ["method.adn.alpha", "model.switchable_bn"]),
    ],
)
def test_recipes_that_leave_units_untrained_are_one_line_naming_the_keys(flat, keys):
    with pytest.raises(ConfigError) as e:
        from_flat(flat)
    msg = str(e.value)
    assert "\n" not in msg and all(k in msg for k in keys), msg


@pytest.mark.parametrize(
    "flat",
    [
        {"method.name": "gated_depth", "method.gated_depth.k": 1},  # teacher_grad (default) trains the units via Eq. 7's KL
        {"method.name": "gated_depth", "method.gated_depth.k": 2, "method.gated_depth.teacher_grad": False},
        {"method.name": "adn", "method.adn.alpha": 1.0, "model.switchable_bn": False},  # nothing left untrained
        {"method.name": "plain", "method.plain.train_pattern": "TTT"},  # a baseline trains what it trains
    ],
)
def test_recipes_that_train_every_part_are_accepted(flat):
    from_flat(flat)


def _corners(space, method: str) -> list[dict]:
    """Every combination of the probe values (range ends, every choice) of the keys a method's
    trials draw under ``method.`` and ``model.``; other searched keys at their first probe value.
    The rejected recipes sit at range ends (k = 1, alpha = 0 or 1), so the corners cover them."""
    out = [{**space.fixed, "method.name": method}]
    for p in space.params:
        if p.key == "method.name":
            continue
        grown = []
        for chosen in out:
            if not p.active(chosen):
                grown.append(chosen)
            elif p.key.startswith(("method.", "model.")):
                grown += [{**chosen, p.key: v} for v in p.probe_values()]
            else:
                grown.append({**chosen, p.key: p.probe_values()[0]})
        out = grown
    return out


def _shipped_spaces():
    from pathlib import Path

    return sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", _shipped_spaces(), ids=lambda p: p.name)
def test_shipped_spaces_cannot_draw_a_recipe_with_untrained_units(path):
    from gatesearch.search.space import load_space

    space = load_space(path)
    methods = next(p for p in space.params if p.key == "method.name").choices
    for method in methods:
        for flat in _corners(space, method):
            from_flat(flat)  # raises on a recipe whose gated units (or base BN set) get no gradient


# the papers' defaults each study enqueues as its baseline (000_...txt Sec. 6.1; 001_...txt Sec. 4.2)
PAPER_DEFAULTS = {
    "gated_depth": {"method.gated_depth.p_min": 0.5, "method.gated_depth.p_max": 0.9,
                    "method.gated_depth.alpha": 0.5, "method.gated_depth.k": 10},
    "adn": {"method.adn.alpha": 0.5, "method.adn.feature_kl": True},
}


@pytest.mark.parametrize("path", _shipped_spaces(), ids=lambda p: p.name)
def test_shipped_spaces_contain_the_paper_defaults(path):
    from gatesearch.search.space import load_space

    space = load_space(path)
    params = {p.key: p for p in space.params}
    defaults = to_flat(Config())
    for method in [m for m in params["method.name"].choices if m in PAPER_DEFAULTS]:
        for key, value in PAPER_DEFAULTS[method].items():
            assert defaults[key] == value, key  # the config's default is the paper's
            p = params.get(key)
            if p is None:
                assert space.fixed.get(key, value) == value, (path.name, key)
            elif p.kind == "choice":
                assert value in p.choices, (path.name, key)
            else:
                assert p.low <= value <= p.high, (path.name, key, p.low, p.high)
        from_flat({**space.fixed, "method.name": method, **PAPER_DEFAULTS[method]})


# ---------------------------------------------------------------- what the model and the data fix (resolve.check_fits)


def _dataset_root(name: str, tmp_path) -> dict:
    """Flat data keys that make ``name`` buildable offline in a second (tiny npz files, a two-class image folder)."""
    import numpy as np

    if name in ("cifar10", "cifar100"):
        for split in ("train", "test"):
            np.savez(tmp_path / f"{split}.npz", images=np.zeros((20, 24, 24, 3), np.uint8), labels=np.arange(20) % 10)
        return {"data.root": str(tmp_path)}
    if name == "imagefolder":
        from PIL import Image

        for split in ("train", "val"):
            for cls in ("a", "b"):
                (tmp_path / split / cls).mkdir(parents=True)
                for i in range(2):
                    Image.new("RGB", (20, 20)).save(tmp_path / split / cls / f"{i}.png")
        return {"data.root": str(tmp_path), "data.image_size": 16, "data.batch_size": 2}
    return {"data.synthetic_size": 8} if name == "synthetic" else {}


@pytest.mark.parametrize("name", __import__("gatesearch.data", fromlist=["DATASETS"]).DATASETS.names())
def test_data_geometry_is_what_build_data_gives(name, tmp_path):
    """``resolve.data_geometry`` says, without reading the images, what ``build_data`` gives: every registered
    data set needs an entry here (a new one without it fails this test)."""
    from gatesearch.data import build_data
    from gatesearch.resolve import data_geometry

    d = from_flat({"data.name": name, "data.val_fraction": 0.25, **_dataset_root(name, tmp_path)}).data
    classes, shape = data_geometry(d)
    bundle = build_data(d, 0)
    assert shape == bundle.input_shape
    assert classes in (None, bundle.num_classes)


@pytest.mark.parametrize("name", __import__("gatesearch.models", fromlist=["MODELS"]).MODELS.names())
@pytest.mark.parametrize("gating", ["stage", "block"])
def test_every_model_fits_its_own_input_size_on_the_meta_device(name, gating):
    """The meta-device probe never refuses a model at the input size it is built for (a missing meta kernel would
    refuse a good config), and counts units and stages as the real model does."""
    from gatesearch.config import ModelConfig
    from gatesearch.models import create_model
    from gatesearch.resolve import model_facts

    facts = model_facts(ModelConfig(name, gating, "cifar"), None)
    assert facts.n_units == create_model(name, 10, gating=gating, stem="cifar").n_units >= 1
    assert facts.n_stages >= 1 and not facts.gate_heads


@pytest.mark.parametrize("flat", [
    {"model.name": "resnet18", "method.adn.feature_kl_stages": [3]},  # 4 stages
    {"method.adn.output_kl_top_k": 10},  # digits: 10 classes
    {"method.name": "plain", "method.plain.train_pattern": "TTF"},
    {"model.name": "vit_ti_4", "data.name": "synthetic"},  # built for 32x32, synthetic is 32x32
    {"method.adn.feature_kl": False, "method.adn.feature_kl_stages": [7]},  # unused: not refused
])
def test_per_model_keys_in_range_are_accepted(flat):
    check_names(from_flat(flat))
