"""Search-space files: every shipped YAML validates; bad files fail with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from gatesearch.config import ConfigError, from_flat
from gatesearch.search.space import load_space, parse

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def _minimal(**search: dict) -> dict:
    return {"study": {"name": "t", "objective": {"metric": "top1_super", "mode": "max"}, "budget": {"trials": 2, "epochs": 1}},
            "fixed": {"data.name": "digits"}, "search": search}


def test_every_shipped_space_is_found():
    assert {p.name for p in SPACES} >= {"quickstart.yaml", "cifar10_resnet20.yaml", "cifar100_resnet18.yaml",
                                         "imagenet_resnet50.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_space_validates_and_every_draw_is_a_valid_config(path):
    space = load_space(path)
    assert space.fixed["train.epochs"] == space.study.epochs
    keys = {p.key for p in space.params}
    assert "method.name" in keys  # the method itself is searched
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    methods = set()
    for _ in range(40):
        trial = study.ask()
        drawn = space.suggest(trial)
        cfg = from_flat({**space.fixed, **drawn})  # every combination the sampler can produce is a valid Config
        methods.add(cfg.method.name)
        # conditional keys only appear with their method
        assert all(k.split(".")[1] == cfg.method.name for k in drawn if k.startswith("method.") and k != "method.name")
        study.tell(trial, 0.0)
    assert len(methods) >= 2


@pytest.mark.parametrize("path", [p for p in SPACES if p.name != "quickstart.yaml" and not p.stem.endswith("_cpu")],
                         ids=lambda p: p.name)
def test_gpu_spaces_explore_losses_schedules_alpha_and_k(path):
    space = load_space(path)
    keys = {p.key for p in space.params}
    assert {"method.probgates.loss", "method.probgates.target_schedule", "method.gated_depth.p_min",
            "method.gated_depth.k", "method.adn.alpha"} <= keys
    assert space.study.gpu > 0
    assert "${" not in yaml.safe_dump(space.fixed) and Path(space.fixed["data.root"]).parts[:2] != ("..", "shared")


def test_data_root_comes_from_env_or_override(monkeypatch, tmp_path):
    path = next(p for p in SPACES if p.name == "cifar10_resnet20.yaml")
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path))
    assert load_space(path).fixed["data.root"] == str(tmp_path)
    assert load_space(path, ["data.root=/elsewhere"]).fixed["data.root"] == "/elsewhere"


def test_quickstart_is_small():
    s = load_space(next(p for p in SPACES if p.name == "quickstart.yaml"))
    assert s.study.gpu == 0 and s.study.trials * s.study.epochs <= 16 and s.study.max_concurrent_trials == 2
    assert s.fixed["data.name"] == "digits" and s.fixed["train.device"] == "cpu"


def test_override_fixes_a_searched_key():
    space = parse(_minimal(**{"optim.lr": {"loguniform": [0.01, 0.1]}}), ["optim.lr=0.05"])
    assert space.fixed["optim.lr"] == 0.05 and not space.params


def test_conditional_key_applies_only_to_its_method():
    space = parse(_minimal(**{"method.name": {"choice": ["adn", "gated_depth"]},
                              "method.adn.alpha": {"uniform": [0.2, 0.8], "when": {"method.name": "adn"}}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        t = study.ask()
        drawn = space.suggest(t)
        assert ("method.adn.alpha" in drawn) == (drawn["method.name"] == "adn")
        seen.add(drawn["method.name"])
        study.tell(t, 0.0)
    assert seen == {"adn", "gated_depth"}


def test_list_valued_choices_round_trip():
    space = parse(_minimal(**{"method.probgates.targets": {"choice": [[1.0, 0.8], [1.0, 0.9, 0.7]]}}))
    t = optuna.create_study().ask()
    assert space.suggest(t)["method.probgates.targets"] in ([1.0, 0.8], [1.0, 0.9, 0.7])


@pytest.mark.parametrize(
    "search, key",
    [
        ({"optim.lrr": {"uniform": [0.1, 0.2]}}, "search.optim.lrr"),
        ({"optim.lr": {"uniform": [0.3, 0.1]}}, "search.optim.lr"),
        ({"optim.lr": {"loguniform": [0.0, 0.1]}}, "search.optim.lr"),
        ({"method.adn.alpha": {"uniform": [0.5, 1.5]}}, "search.method.adn.alpha"),
        ({"method.gated_depth.k": {"int": [0, 4]}}, "search.method.gated_depth.k"),
        ({"method.gated_depth.k": {"int": [1.5, 4]}}, "search.method.gated_depth.k"),
        ({"model.gating": {"choice": ["stage", "layer"]}}, "search.model.gating"),
        ({"method.name": {"choice": ["adn", "nope"]}}, "search.method.name"),
        ({"optim.lr": {"normal": [0.1, 0.2]}}, "search.optim.lr"),
        ({"optim.lr": {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}}, "search.optim.lr"),
        ({"method.adn.alpha": {"uniform": [0.1, 0.2], "when": {"method.nam": "adn"}}}, "method.nam"),
        ({"method.adn.alpha": {"uniform": [0.1, 0.2], "when": {"method.name": "xyz"}}}, "method.adn.alpha.when"),
    ],
)
def test_bad_search_entries_name_the_key(search, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        parse(_minimal(**search))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"fixed": {"model.nam": "x"}}, "fixed.model.nam"),
        ({"fixed": {"data.batch_size": 0}}, "data.batch_size"),
        ({"fixed": {"train.epochs": 3}}, "fixed.train.epochs"),
        ({"study": {"name": "t", "objective": {"metric": "top1_super", "mode": "up"}}}, "study.objective.mode"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "budget": {"trials": 0}}}, "study.budget.trials"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"gpus": 1}}}, "study.resources.gpus"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "budgte": {}}}, "study.budgte"),
        ({"study": {"name": "t"}}, "study.objective"),
        ({"serach": {}}, "serach"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "devices": ["jetsn"]}}, "study.devices"),
    ],
)
def test_bad_study_and_fixed_entries_name_the_key(patch, key):
    raw = _minimal()
    raw.update(patch)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse(raw)


def test_multi_objective_study(tmp_path):
    raw = _minimal(**{"optim.lr": {"loguniform": [0.01, 0.1]}})
    raw["study"]["objective"] = [{"metric": "top1_super", "mode": "max"}, {"metric": "top1_base", "mode": "max"}]
    s = parse(raw).study
    assert s.multi_objective and s.metrics == ["top1_super", "top1_base"]


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_space(bad)


def test_unset_env_var_without_default_names_the_key(monkeypatch):
    monkeypatch.delenv("GS_NO_SUCH_VAR", raising=False)
    raw = _minimal()
    raw["fixed"]["data.root"] = "${GS_NO_SUCH_VAR}"
    with pytest.raises(ConfigError, match=r"fixed\.data\.root.*GS_NO_SUCH_VAR"):
        parse(raw)


def test_cli_reports_a_bad_space_in_one_line_before_ray_starts(tmp_path, capsys):
    from gatesearch.cli import main

    raw = _minimal(**{"optim.lr": {"loguniform": [-1.0, 0.1]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["search", "--space", str(bad), "--storage", str(tmp_path / "rr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "search.optim.lr.loguniform" in err
    assert not (tmp_path / "rr").exists()
