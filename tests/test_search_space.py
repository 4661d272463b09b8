"""Search-space files: every shipped YAML validates; bad files fail with one line naming the key."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from gatesearch.config import ConfigError, from_flat, to_flat
from gatesearch.search.baselines import OPTUNA_ATTR, TRIAL_KEY, imagenet_space
from gatesearch.search.space import load_space, parse

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def _minimal(**search: dict) -> dict:
    return {"study": {"name": "t", "objective": {"metric": "top1_super", "mode": "max"}, "budget": {"trials": 4, "epochs": 1}},
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


@pytest.mark.parametrize("path", [p for p in SPACES if p.name != "quickstart.yaml"], ids=lambda p: p.name)
def test_study_spaces_explore_losses_schedules_alpha_and_k(path):
    space = load_space(path)
    keys = {p.key for p in space.params}
    assert {"method.probgates.loss", "method.probgates.target_schedule", "method.gated_depth.p_min",
            "method.gated_depth.k", "method.adn.alpha"} <= keys
    assert (space.study.gpu > 0) == ("_cpu" not in path.name)  # the *_cpu spaces are sized for a CPU (gpu: per process)
    assert "${" not in yaml.safe_dump(space.fixed) and Path(space.fixed["data.root"]).parts[:2] != ("..", "shared")


def test_worker_resources_are_one_process_share():
    """``cpus_per_worker`` / ``gpus_per_worker`` spell ``cpu`` / ``gpu`` for multi-worker trials; a trial holds
    ``workers`` of them."""
    raw = _minimal()
    raw["study"] = {**raw["study"], "resources": {"workers": 4, "cpus_per_worker": 8, "gpus_per_worker": 1}}
    s = parse(raw).study
    assert (s.workers, s.cpu, s.gpu, s.trial_cpu, s.trial_gpu) == (4, 8.0, 1.0, 32.0, 4.0)
    assert parse(_minimal()).study.workers == 1  # default: one process, today's trainable


def test_imagenet_space_trains_on_gpu_workers_and_can_start_probgates_from_torchvision(tmp_path):
    """The ImageNet space: 4 GPU workers per trial; its commented ``model.init_from`` line, uncommented,
    validates (the weights file is only read when a trial starts, never downloaded)."""
    path = next(p for p in SPACES if p.name == "imagenet_resnet50.yaml")
    s = load_space(path).study
    assert (s.workers, s.gpu, s.cpu) == (4, 1.0, 8.0)
    text = path.read_text()
    line = "  # model.init_from: {choice: [/shared/weights/resnet50-11ad3fa6.pth], when: {method.name: probgates}}"
    assert line in text
    (tmp_path / "s.yaml").write_text(text.replace(line, line.replace("# ", "", 1)))
    (init,) = [p for p in load_space(tmp_path / "s.yaml").params if p.key == "model.init_from"]
    assert init.active({"method.name": "probgates"}) and not init.active({"method.name": "adn"})


def test_data_root_comes_from_env_or_override(monkeypatch, tmp_path):
    path = next(p for p in SPACES if p.name == "cifar10_resnet20.yaml")
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path))
    assert load_space(path).fixed["data.root"] == str(tmp_path)
    assert load_space(path, ["data.root=/elsewhere"]).fixed["data.root"] == "/elsewhere"


def test_quickstart_is_small():
    s = load_space(next(p for p in SPACES if p.name == "quickstart.yaml"))
    assert s.study.gpu == 0 and s.study.trials * s.study.epochs <= 24 and s.study.max_concurrent_trials == 2
    assert len(s.baselines) == 3 and s.study.trials - len(s.baselines) >= 3  # baselines count within the budget
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
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"workers": 0}}}, "study.resources.workers"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"workers": 1.5}}}, "study.resources.workers"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"cpus_per_worker": 0}}},
         "study.resources.cpus_per_worker"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"gpu": 1, "gpus_per_worker": 1}}},
         "study.resources.gpus_per_worker"),
        ({"study": {"name": "t", "objective": {"metric": "x"}, "resources": {"workers": 2, "gpus_per_worker": 0.5}}},
         "study.resources.gpus_per_worker"),
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


def test_study_cost_sets_the_score_axis() -> None:
    from gatesearch.search.space import parse

    base = {"name": "s", "objective": "frontier_score"}
    assert parse({"study": base}).fixed["train.score_cost"] == "macs"
    assert parse({"study": {**base, "cost": "latency:jetson"}}).fixed["train.score_cost"] == "latency:jetson"
    with pytest.raises(ConfigError, match="study.cost: unknown device 'tpu9'"):
        parse({"study": {**base, "cost": "latency:tpu9"}})
    with pytest.raises(ConfigError, match="study.cost"):
        parse({"study": {**base, "cost": "flops"}})
    with pytest.raises(ConfigError, match="set the cost axis with study.cost"):
        parse({"study": {**base, "cost": "macs"}, "fixed": {"train.score_cost": "macs"}})
# ---------------------------------------------------------------- paper baselines

# The papers' settings, written out from the text (../shared/papers/): ADN 001 Sec. 4.2 / Algorithm 1;
# Gated Depth 000 Sec. 6.1; probabilistic gates 002 Sec. 2 (L = L_target + L_MC), 3.2 (tau = 1/2),
# 4.1.2 (CIFAR-10: dependent per-batch at t = 0.5) and Figure 4 (ResNet-50: independent per-batch at 0.6).
PAPER = {
    "adn": {"method.adn.alpha": 0.5, "method.adn.feature_kl": True},
    "gated_depth": {"method.gated_depth.p_min": 0.5, "method.gated_depth.p_max": 0.9,
                    "method.gated_depth.alpha": 0.5, "method.gated_depth.k": 10},
    "probgates": {"method.probgates.loss": "per_batch", "method.probgates.target_schedule": "constant",
                  "method.probgates.inference": "threshold", "method.probgates.threshold": 0.5,
                  "method.probgates.weight": 1.0},
}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_space_enqueues_each_methods_paper_recipe_inside_its_space(path):
    space = load_space(path)
    methods = next(p for p in space.params if p.key == "method.name").choices
    assert [b.method for b in space.baselines] == [m for m in methods if m in PAPER]
    assert space.study.trials > len(space.baselines)  # room left for the search
    imagenet = path.name.startswith("imagenet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params, attrs in space.baseline_trials():
        study.enqueue_trial(params, user_attrs=attrs)
    for b in space.baselines:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Optuna warns on an enqueued value outside its distribution
            trial = study.ask()
            drawn = space.suggest(trial)
        assert trial.user_attrs[OPTUNA_ATTR] == b.method and drawn.pop(TRIAL_KEY) == b.method
        flat = to_flat(from_flat({**space.fixed, **drawn}))
        assert flat["method.name"] == b.method
        for key, value in PAPER[b.method].items():
            assert flat[key] == value, key
        if b.method == "probgates":
            assert flat["model.gate_head"] == ("logit" if imagenet else "aig")
            assert flat["method.probgates.target"] == (0.6 if imagenet else 0.5)
            assert flat["model.gating"] == from_flat(space.fixed).model.gating  # the space's layout is kept
            if not imagenet:
                assert flat["model.switchable_bn"] is False
        for p in space.params:
            if p.key in b.params:
                assert p.contains(b.params[p.key]), p.key
        study.tell(trial, 0.5)
    assert TRIAL_KEY not in space.suggest(study.ask())  # the trial after them is a searched one


def _probgates_space(**patch: dict) -> dict:
    raw = _minimal(**{"method.name": {"choice": ["adn", "gated_depth", "probgates"]},
                      "model.gate_head": {"choice": ["logit", "aig"], "when": {"method.name": "probgates"}},
                      "model.switchable_bn": {"choice": [False], "when": {"model.gate_head": "aig"}}})
    raw["search"].update(patch)
    return raw


def test_imagenet_spaces_are_recognised_by_data_or_stem():
    assert not imagenet_space({"data.name": "digits"}) and not imagenet_space({"data.name": "cifar10"})
    assert imagenet_space({"data.name": "imagefolder"})
    assert imagenet_space({"data.name": "digits", "model.stem": "imagenet"})


def test_baseline_takes_block_gating_when_the_space_searches_it():
    raw = _probgates_space(**{"model.gating": {"choice": ["stage", "block"]}})
    raw["search"] = {"model.gating": raw["search"].pop("model.gating"), **raw["search"]}
    space = parse(raw)
    pg = next(b for b in space.baselines if b.method == "probgates")
    cfg = from_flat(pg.config(space.fixed))
    assert cfg.model.gating == "block" and cfg.model.gate_head == "aig" and not cfg.model.switchable_bn
    raw = _probgates_space()
    raw["fixed"]["model.gating"] = "stage"
    pg = next(b for b in parse(raw).baselines if b.method == "probgates")
    cfg = from_flat(pg.config(parse(raw).fixed))
    assert cfg.model.gating == "stage" and cfg.model.switchable_bn is False


def test_paper_value_outside_a_searched_range_is_one_line_naming_the_key():
    raw = _minimal(**{"method.name": {"choice": ["adn", "gated_depth"]},
                      "method.gated_depth.k": {"int": [2, 8], "when": {"method.name": "gated_depth"}}})
    with pytest.raises(ConfigError, match=r"search\.method\.gated_depth\.k: .*gated_depth paper baseline.*10") as e:
        parse(raw)
    assert "\n" not in str(e.value) and "study.baselines: false" in str(e.value)
    raw["study"]["baselines"] = False
    space = parse(raw)
    assert space.baselines == () and space.baseline_trials() == []


def test_searched_default_outside_the_space_takes_the_nearest_value():
    raw = _minimal(**{"method.name": {"choice": ["adn"]}, "optim.lr": {"loguniform": [0.2, 0.4]},
                      "optim.warmup_epochs": {"int": [2, 5]},
                      "method.adn.two_backward": {"choice": [True], "when": {"method.name": "adn"}}})
    (adn,) = parse(raw).baselines
    # config defaults lr=0.1, warmup 0, two_backward false lie outside: lowest end / first choice
    assert adn.params == {"method.name": "adn", "optim.lr": 0.2, "optim.warmup_epochs": 2,
                          "method.adn.two_backward": True}
    assert adn.adjusted == {"optim.lr": 0.2, "optim.warmup_epochs": 2, "method.adn.two_backward": True}
    assert adn.extra == {"method.adn.alpha": 0.5, "method.adn.feature_kl": True}  # not searched: travel along


def test_fixed_keys_win_and_methods_without_recipe_have_no_baseline():
    raw = _minimal(**{"method.name": {"choice": ["plain", "adn", "stochastic_depth"]}})
    raw["fixed"]["method.adn.alpha"] = 0.7
    space = parse(raw)
    assert [b.method for b in space.baselines] == ["adn"]
    assert from_flat(space.baselines[0].config(space.fixed)).method.adn.alpha == 0.7
    raw = _minimal()  # method fixed (the default, adn): its recipe is still the study's baseline
    assert [b.method for b in parse(raw).baselines] == ["adn"]


@pytest.mark.parametrize("study, key", [({"baselines": "yes"}, "study.baselines"),
                                        ({"budget": {"trials": 3}}, "study.budget.trials")])
def test_bad_baseline_settings_name_the_key(study, key):
    raw = _probgates_space()
    raw["study"].update(study)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse(raw)


@pytest.mark.parametrize("reeval, key", [
    ({"finalists": 0, "seeds": 3}, "study.reeval.finalists"),
    ({"finalists": 2, "seeds": 1}, "study.reeval.seeds"),  # one seed has no spread: no interval
    ({"finalists": 2, "seeds": 2.5}, "study.reeval.seeds"),
    ({"finalists": 2}, "study.reeval.seeds"),
    ({"finalists": 2, "seeds": 3, "repeats": 2}, "study.reeval.repeats"),
    ({"finalists": 2, "seeds": 3, "baselines": "some"}, "study.reeval.baselines"),
    ({"finalists": 2, "seeds": 3, "vary_split": "yes"}, "study.reeval.vary_split"),
    ([2, 3], "study.reeval"),
])
def test_bad_reeval_names_the_key(reeval, key):
    raw = _minimal(**{"method.name": {"choice": ["adn", "gated_depth"]}})
    raw["study"]["reeval"] = reeval
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')}:"):
        parse(raw)


def test_reeval_block_parses_and_is_refused_for_several_objectives():
    raw = _minimal(**{"method.name": {"choice": ["adn", "gated_depth"]}})
    raw["study"]["reeval"] = {"finalists": 2, "seeds": 3}
    r = parse(raw).study.reeval
    assert (r.finalists, r.seeds, r.baselines, r.vary_split) == (2, 3, "best", True)
    assert parse(_minimal(**{"method.name": {"choice": ["adn"]}})).study.reeval is None  # absent: off
    raw["study"]["objective"] = [{"metric": "top1_super", "mode": "max"}, {"metric": "top1_base", "mode": "max"}]
    with pytest.raises(ConfigError, match="^study.reeval: .*one objective"):
        parse(raw)


@pytest.mark.parametrize("name, expected", [
    ("quickstart.yaml", (2, 3, "best")), ("cifar10_resnet20_cpu.yaml", (1, 3, "best")),
    ("cifar10_resnet20.yaml", (3, 5, "all")), ("imagenet_resnet50.yaml", (3, 5, "all")),
])
def test_shipped_spaces_re_evaluate_their_finalists(name, expected):
    r = load_space(next(p for p in SPACES if p.name == name)).study.reeval
    assert (r.finalists, r.seeds, r.baselines) == expected


def _with_objective(metric: str, **search: dict) -> dict:
    raw = _minimal(**search)
    raw["study"].update(objective={"metric": metric, "mode": "max"}, baselines=False)
    return raw


_METHODS = {"choice": ["adn", "probgates"]}
_GATES = {"choice": ["logit"], "when": {"method.name": "probgates"}}


@pytest.mark.parametrize("metric, search", [
    ("top1_TFT", {}),  # resnet20, stage gating: 3 units, every pattern scored
    ("cost_FFF", {}),
    ("kl_full_base", {}),
    ("train_loss", {}),
    ("epochs_done", {}),
    ("top1_gated", {"method.name": {"choice": ["probgates"]}, "model.gate_head": {"choice": ["logit", "aig"]},
                    "model.switchable_bn": {"choice": [False], "when": {"model.gate_head": "aig"}}}),
    ("gate_rate_2", {"method.name": {"choice": ["probgates"]}, "model.gate_head": {"choice": ["logit"]}}),
])
def test_objective_every_trial_reports_is_accepted(metric, search):
    parse(_with_objective(metric, **search))


@pytest.mark.parametrize("metric, search, said", [
    ("top1_TF", {}, "3 units"),
    ("top1_gated", {"method.name": _METHODS, "model.gate_head": _GATES}, "gate_head=none"),  # the adn trials
    ("gate_rate_3", {"method.name": {"choice": ["probgates"]}, "model.gate_head": {"choice": ["logit"]}}, "units 0..2"),
    ("top1_FFF", {"model.name": {"choice": ["resnet20", "resnet18"]}}, "resnet18"),  # 4 units
    ("top1_TFFFFFFFF", {"model.gating": {"choice": ["block"]}}, "ladder"),  # 9 units > 4: the ladder only
    ("val_accuracy", {}, "frontier_score"),
])
def test_objective_some_trial_never_reports_is_refused(metric, search, said):
    with pytest.raises(ConfigError, match=r"study\.objective\.metric") as info:
        parse(_with_objective(metric, **search))
    assert metric in str(info.value) and said in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("when, ok", [
    ({"method.gated_depth.k": 3}, True), ({"method.gated_depth.k": [2, 8]}, True), ({"method.gated_depth.k": 9}, False),
    ({"method.gated_depth.k": 2.5}, False), ({"optim.lr": 0.1}, False), ({"method.name": ["adn", "adm"]}, False),
])
def test_when_value_must_be_one_the_key_can_take(when, ok):
    raw = _minimal(**{"method.name": {"choice": ["adn", "gated_depth"]}, "optim.lr": {"uniform": [0.05, 0.2]},
                      "method.gated_depth.k": {"int": [2, 8], "when": {"method.name": "gated_depth"}},
                      "method.gated_depth.alpha": {"uniform": [0.3, 0.7], "when": when}})
    raw["study"]["baselines"] = False
    if ok:
        parse(raw)
        return
    with pytest.raises(ConfigError, match=r"method\.gated_depth\.alpha\.when\." + next(iter(when)).replace(".", r"\.")):
        parse(raw)
