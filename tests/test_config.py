import pytest

from gatesearch.config import Config, ConfigError, flat_keys, from_flat, from_nested, load, to_flat, to_nested


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
        from_flat(flat)


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
