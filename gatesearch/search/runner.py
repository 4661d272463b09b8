"""``gatesearch search``: a Ray Tune ``Tuner`` over a validated search space.

OptunaSearch draws configs define-by-run (TPE; NSGA-II for multi-objective studies), ASHA stops
weak trials early (single objective only), ``max_concurrent_trials`` and per-trial resources come
from the space file, every epoch is checkpointed, and ``FailureConfig`` retries trials whose worker
died. One MLflow parent run per study (its id kept in ``<storage>/<study>/mlflow_parent.json``, so
``--resume`` reuses it), one child run per trial (see ``trainable.py``).

The first trials are the papers' recipes of the searched methods (``baselines.py``; enqueued and
kept from early stopping by ``algorithms.py``, which also tells Optuna that a stopped trial was
pruned, not complete).

After the study, ``<storage>/<study>/summary.json`` lists every trial and ``best.json`` names the
best trial's checkpoint and MLflow run (single objective), or the Pareto set over trials that ran
their full epoch budget (multi-objective); ASHA-stopped and errored trials never enter it. The
summary, the parent MLflow run and ``describe`` compare the best searched trial with the best
baseline (``versus_baselines``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatesearch import tracking
from gatesearch.bundle import register_menus
from gatesearch.config import from_flat
from gatesearch.errors import UserError
from gatesearch.search import clock, outage, reeval, report
from gatesearch.search.algorithms import BaselineASHA, StudySearch, stop_of
from gatesearch.search.baselines import TRIAL_KEY as BASELINE_KEY
from gatesearch.search.preflight import (
    REEVAL_BLOCK_FILE,
    check_reeval_unchanged,
    check_search,
    fit_to_cluster,
    ray_connect_error,
    study_lock,
)
from gatesearch.search.space import SearchSpace, Study, load_space
from gatesearch.search.trainable import (
    CHECKPOINT_FILE,
    FAULT_ENV,
    TrialContext,
    remove_scratch,
    run_trial,
    trial_dirname,
    trial_name,
)
from gatesearch.selection.pareto import format_menu
from gatesearch.selection.select import SelectOptions, run_select

PARENT_FILE = "mlflow_parent.json"
STOPS_DIR = "stops"  # <study>/stops/<trial id>.json: the trials ASHA stopped early, and at which rung
DEFAULT_STORAGE = "ray_results"


@dataclass(frozen=True)
class SearchOptions:
    space: str
    address: str | None = None  # None: a local Ray; "auto" or ray://host:10001 or host:6379: a cluster
    tracking_uri: str | None = None  # None: the space's tracking.uri, else sqlite:///mlflow.db
    resume: bool = False
    overrides: tuple[str, ...] = ()
    storage: str | None = None  # default ./ray_results
    num_cpus: int | None = None  # local Ray only; default: enough for max_concurrent_trials
    verbose: int = 1
    select: bool = True  # after the study, write menus for study.devices from the best trial(s)
    trainable: Any = None  # the Tune function trainable (config, ctx); None: trainable.run_trial (tests pass others)


def absolute_tracking_uri(uri: str) -> str:
    """Trials run in other working directories: a relative SQLite path is made absolute here."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:  # a bare directory: MLflow's file store
        return str(Path(uri).resolve())
    return uri


def _absolute_paths(space: SearchSpace) -> dict[str, Any]:
    fixed = dict(space.fixed)
    root = fixed.get("data.root")
    if isinstance(root, str) and "://" not in root:
        fixed["data.root"] = str(Path(root).expanduser().resolve())
    return fixed


LOCAL_OVERSUBSCRIPTION = 2  # a local Ray gets up to this many CPU slots per core for concurrent trials
#: Ray's single-machine mode (Windows and macOS default to it): the node's address is the loopback one, so
#: every server of a local cluster (GCS, raylets, workers, agents, metrics) listens on 127.0.0.1 only. A user
#: who sets it to 1 asks for a local cluster on the node's routable address.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # where Ray's state API clients (ray.util.state) send requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_local_ray(num_cpus: int, state_api: bool) -> None:
    """``ray.init`` of a new local cluster bound to 127.0.0.1 (unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``
    says otherwise). ``state_api``: also start Ray's API server (the "dashboard" process, on 127.0.0.1), which
    Ray Train V2 needs to remove a stopped multi-worker trial's placement group: its cleaner asks the state
    API whether the trial's controller is alive, and Ray 2.60 serves that API only from the dashboard process.
    The cluster's processes are told its address (``RAY_API_SERVER_ADDRESS``): with another Ray running on
    this machine, the state API would otherwise refuse to guess which one to ask."""
    import ray
    from ray._private import ray_constants  # the flag is read when Ray is imported: set it for this start too

    token = Path.home() / ".ray" / "auth_token"  # where a local ray.init writes the token it generates
    made = [(p, mode) for p, mode in ((token, 0o600), (token.parent, 0o700)) if not p.exists()]
    user = os.environ.get(LOCAL_ONLY_ENV)
    env = {LOCAL_ONLY_ENV: "0"} if user is None or user.strip().lower() in ("0", "false") else {}
    port = _free_port() if state_api else None
    if port:
        env[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in env}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)  # the processes ray.init starts inherit these; this process reads the constant
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER and LOCAL_ONLY_ENV not in env
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=state_api, dashboard_host="127.0.0.1", dashboard_port=port,
                 logging_level="WARNING")
    finally:  # a later ray.init(address=...) in this process must see the node's routable address again
        for k, v in saved[0].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    for p, mode in made:  # Ray writes them with the umask's modes: 0644 lets every user read the token
        if p.exists():
            p.chmod(mode)


def _init_ray(opts: SearchOptions, space: SearchSpace) -> tuple[bool, SearchSpace]:
    """Connect to ``opts.address`` or start a local Ray; True when this call started it, and the space with
    ``max_concurrent_trials`` capped to what the cluster holds (``preflight.fit_to_cluster``)."""
    import ray  # lazy (each Ray/Optuna import here): seconds to import; checks run first

    s = space.study
    started, local = not ray.is_initialized(), opts.address in (None, "local")
    if started and not local:
        try:
            ray.init(address=opts.address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as e:  # e.g. token auth, no token
            raise UserError(ray_connect_error(opts.address, e)) from None
    elif started:
        cores = os.cpu_count() or 1
        need = min(math.ceil(s.max_concurrent_trials * s.trial_cpu), LOCAL_OVERSUBSCRIPTION * cores)
        _start_local_ray(opts.num_cpus or max(need, cores, math.ceil(s.cpu)), state_api=s.workers > 1)
    try:  # before any trial: a GPU trial on a local Ray without one would wait PENDING until the time budget
        cap, warning = fit_to_cluster(s.max_concurrent_trials, s.cpu, s.gpu, ray.cluster_resources(), local,
                                      workers=s.workers)
    except UserError:
        if started:
            ray.shutdown()
        raise
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return started, dataclasses.replace(space, study=dataclasses.replace(s, max_concurrent_trials=cap))


def _save_view(uri: str, exp_id: str, parent_run_id: str, space: SearchSpace) -> None:
    """The UI's first screen of the study (``report.study_view``): its trials, best first, with the objective
    and the searched values, saved in the experiment under the parent run's id (``tracking.runs_view_url``)."""
    s = space.study
    view = report.study_view(parent_run_id, list(zip(s.metrics, s.modes)), space.params)
    tracking.save_runs_view(uri, exp_id, parent_run_id, f"study {s.name}: trials by {s.metrics[0]}", view)


def _parent_run(opts: SearchOptions, space: SearchSpace, uri: str, study_dir: Path) -> tuple[str, str]:
    """The study's MLflow (experiment id, parent run id): reused on resume, else created."""
    marker = study_dir / PARENT_FILE
    if opts.resume and marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("tracking_uri") == uri:
            tracking.reopen_run(uri, saved["parent_run_id"])
            _save_view(uri, saved["experiment_id"], saved["parent_run_id"], space)  # also for a study begun without one
            return saved["experiment_id"], saved["parent_run_id"]
    cfg = from_flat(space.example_flat())
    exp_id = tracking.study_experiment_id(uri, cfg.tracking.experiment)
    s = space.study
    params = {"study.name": s.name, "study.objective": ",".join(f"{o.metric}:{o.mode}" for o in s.objectives),
              "study.trials": s.trials, "study.epochs": s.epochs, "study.time_budget_s": s.time_budget_s,
              "study.max_concurrent_trials": s.max_concurrent_trials, "study.cpu": s.cpu, "study.gpu": s.gpu,
              "study.workers": s.workers,
              "study.devices": ",".join(s.devices), "study.searched": ",".join(p.key for p in space.params),
              "study.baselines": ",".join(b.method for b in space.baselines) or "false",
              "study.overrides": " ".join(space.overrides), "study.cost": s.cost,
              "study.frontier_score": "mean over 10 budgets, evenly spaced from the cheapest candidate's cost to the "
                                      "super-net's (inclusive), of the best candidate top-1 within the budget "
                                      "(replaces frontier_hv; docs/search.md)"}
    # method/model/dataset tags name what every trial shares ("searched" where the space varies it)
    searched = {p.key for p in space.params}
    tags = {tag: "searched" if key in searched else str(value) for tag, key, value in (
        ("method", "method.name", cfg.method.name), ("model", "model.name", cfg.model.name),
        ("dataset", "data.name", cfg.data.name))}
    run_id = tracking.start_study_run(uri, exp_id, s.name, space.source, Path(space.path).name or "space.yaml",
                                      params, tags)
    _save_view(uri, exp_id, run_id, space)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": run_id})
    return exp_id, run_id


def stop_reason(state: str, epochs_done: int, stop: dict[str, Any] | None, budget_spent: bool) -> str:
    """Why a trial ended: ``finished`` (the full epoch budget), ``stopped early by ASHA at epoch R`` (the
    scheduler's own record, ``algorithms.BaselineASHA``), ``stopped by the time budget``, ``errored``, or
    ``interrupted`` (the study was stopped, e.g. Ctrl+C, before the trial ended)."""
    if state == "ERROR":
        return "errored"
    if state == "COMPLETE":
        return "finished"
    if stop is not None:
        return f"stopped early by ASHA at epoch {stop.get('rung', epochs_done)}"
    return "stopped by the time budget" if budget_spent else "interrupted"


def _status_callback(ctx: TrialContext, stops_dir: Path | None = None, time_budget_s: float | None = None) -> Any:
    """A Tune callback (driver side) that closes each trial's MLflow run with its final state.

    A trial stopped by ASHA (or at ``max_t``, or by the study's time budget) never returns from
    ``tune.report``, so its run is closed here: FINISHED with tag ``gatesearch.stop_reason`` (finished, or
    stopped early by ASHA at epoch R, or stopped by the time budget: the scheduler's decision is not a
    failure) and ``gatesearch.full_budget``; an errored trial ends FAILED.
    """
    from ray.tune import Callback  # lazy: as in _init_ray

    uri, epochs = ctx.tracking_uri, ctx.epochs

    def run_of(trial: Any) -> str | None:
        return trial.last_result.get("mlflow_run_id") or tracking.find_trial_run(
            uri, ctx.experiment_id, ctx.parent_run_id, trial.trial_id)

    class MlflowTrialStatus(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_id = run_of(trial)
            if run_id:
                done = int(trial.last_result.get("epochs_done", 0))
                # this process's search clock (clock.py), which Tune restored with a resumed study
                spent = clock.budget_spent(time_budget_s, clock.current().spent_s)
                reason = stop_reason("COMPLETE" if done >= epochs else "STOPPED", done,
                                     stop_of(stops_dir, trial.trial_id) if stops_dir else None, spent)
                tracking.set_run_tags(uri, run_id, {"gatesearch.epochs_done": done, "gatesearch.stop_reason": reason,
                                                    "gatesearch.full_budget": done >= epochs})
                tracking.end_run(uri, run_id, "FINISHED")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_id = run_of(trial)
            if run_id:
                err = trial.get_error()
                line = str(err).strip().splitlines()[-1][:500] if err else "trial errored"
                tracking.set_run_tags(uri, run_id, {"gatesearch.stop_reason": "errored"})
                tracking.end_run(uri, run_id, "FAILED", error=None if _has_error(uri, run_id) else line)

    return outage.Guarded(MlflowTrialStatus())  # a dead tracking server stops the study (resumable), not Tune


def _has_error(uri: str, run_id: str) -> bool:
    return tracking.ERROR_TAG in tracking.study_client(uri).get_run(run_id).data.tags


DRIVER_MEMORY = 256 * 2**20  # bytes Tune reserves for a multi-worker trial's driver (it holds no CPU)


def trial_resources(s: Study) -> dict[str, float]:
    """What Tune reserves per trial: the training process itself, or (``workers`` > 1) only memory for the
    driver that waits for its ``TorchTrainer`` (Tune refuses an empty reservation), whose workers Ray Train
    places in a placement group of its own (``max_concurrent_trials`` is capped to what those hold,
    ``preflight.fit_to_cluster``)."""
    return {"cpu": s.cpu, "gpu": s.gpu} if s.workers == 1 else {"cpu": 0, "memory": DRIVER_MEMORY}


def _build_tuner(opts: SearchOptions, space: SearchSpace, ctx: TrialContext, storage: Path) -> Any:
    import optuna
    from ray import tune

    s = space.study
    trainable = tune.with_resources(tune.with_parameters(opts.trainable or run_trial, ctx=ctx), trial_resources(s))
    run_config = tune.RunConfig(
        name=s.name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[_status_callback(ctx, storage / s.name / STOPS_DIR, s.time_budget_s), outage.current(),
                   clock.current()],
        verbose=opts.verbose,
    )
    fixed = _absolute_paths(space) | {"tracking.uri": ctx.tracking_uri}
    if opts.resume and tune.Tuner.can_restore(str(storage / s.name)):
        return tune.Tuner.restore(str(storage / s.name), trainable=trainable, param_space=fixed,
                                  resume_unfinished=True, resume_errored=False, restart_errored=False)
    if s.multi_objective:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(seed=s.seed)
        metric, mode, scheduler = s.metrics, s.modes, None
    else:
        # the baselines are not random exploration: the random start-up trials come after them
        n_baselines = len(space.baselines)
        with warnings.catch_warnings():  # group=True (TPE over conditional spaces) is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=s.seed, multivariate=True, group=True,
                n_startup_trials=n_baselines + max(2, min(10, (s.trials - n_baselines) // 3)))
        metric, mode = s.metrics[0], s.modes[0]
        scheduler = BaselineASHA(time_attr="training_iteration", max_t=s.epochs, grace_period=s.asha_grace_period,
                                 reduction_factor=s.asha_reduction_factor, stops_dir=str(storage / s.name / STOPS_DIR))
    searcher = StudySearch(space=space.suggest, metric=metric, mode=mode, sampler=sampler, epochs=s.epochs,
                           baselines=space.baseline_trials())
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        metric=None if s.multi_objective else metric,
        mode=None if s.multi_objective else mode,
        num_samples=s.trials,
        max_concurrent_trials=s.max_concurrent_trials,
        time_budget_s=s.time_budget_s,
        reuse_actors=s.workers == 1,  # a stopped multi-worker driver never frees its actor in time: a new one
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_dirname,
    )
    return tune.Tuner(trainable, param_space=fixed, tune_config=tune_config, run_config=run_config)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def summarize(space: SearchSpace, results: Any, study_dir: Path, search_s: float = 0.0) -> dict[str, Any]:
    """Every trial's state, why it ended and its objective values; the best trial or the Pareto set of
    full-budget trials. ``search_s``: the search's time over all runs of the study (``clock.py``)."""
    s = space.study
    spent = clock.budget_spent(s.time_budget_s, search_s)
    trials = []
    for r in results:
        m = r.metrics or {}
        # a multi-worker trial's checkpoint stays in Ray Train's run (the checkpoint_path metric)
        ckpt_dir = r.checkpoint.path if r.checkpoint is not None else m.get("checkpoint_path")
        done = int(m.get("epochs_done", 0))
        method = (r.config or {}).get(BASELINE_KEY)
        baseline = next((b for b in space.baselines if b.method == method), None)
        shown = {p.key for p in space.params} | (set(baseline.extra) if baseline else set())
        trials.append({
            "trial_id": m.get("trial_id") or Path(r.path).name.rsplit("_", 1)[-1],
            "name": Path(r.path).name.split("_", 1)[0],  # t003: the trial's index in the study
            "method": (r.config or {}).get("method.name"),
            "mlflow_run_id": m.get("mlflow_run_id"),
            "state": "ERROR" if r.error is not None else ("COMPLETE" if done >= s.epochs else "STOPPED"),
            "epochs_done": done,
            "objectives": {k: m.get(k) for k in s.metrics},
            "train_time_s": m.get("train_time_s"),
            "checkpoint": str(Path(ckpt_dir) / CHECKPOINT_FILE) if ckpt_dir else None,
            "error": str(r.error).strip().splitlines()[-1][:500] if r.error is not None else None,
            "baseline": method,  # the paper recipe's method for a baseline trial, else None
            "config": {k: v for k, v in (r.config or {}).items() if k in shown},
        })
        t = trials[-1]
        t["stop_reason"] = stop_reason(t["state"], done, stop_of(study_dir / STOPS_DIR, t["trial_id"]), spent)
    trials.sort(key=lambda t: t["name"])  # in study order: a restored Tune experiment may list them in any order
    # only trials that ran their full budget compete: an ASHA-stopped trial's early score is not comparable
    complete = [t for t in trials if t["state"] == "COMPLETE"
                and all(isinstance(t["objectives"][k], (int, float)) for k in s.metrics)]
    signs = [1.0 if mode == "max" else -1.0 for mode in s.modes]

    def score(t: dict[str, Any]) -> list[float]:
        return [sign * float(t["objectives"][k]) for sign, k in zip(signs, s.metrics)]

    pareto = [t for t in complete if not any(_dominates(score(o), score(t)) for o in complete if o is not t)]
    pareto.sort(key=score, reverse=True)
    best = pareto[0] if pareto else None
    return {
        "study": s.name,
        "objective": [{"metric": o.metric, "mode": o.mode} for o in s.objectives],
        "storage": str(study_dir),
        "n_trials": len(trials),
        "n_complete": len(complete),
        "n_error": sum(t["state"] == "ERROR" for t in trials),
        "best": best,
        "pareto": pareto if s.multi_objective else ([best] if best else []),
        "baselines": [b.method for b in space.baselines],
        "vs_baselines": versus_baselines(space, complete) if space.baselines else [],
        "trials": trials,
    }


def _best_of(group: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    sign = 1.0 if mode == "max" else -1.0
    return max(group, key=lambda t: sign * float(t["objectives"][metric]), default=None)


def versus_baselines(space: SearchSpace, complete: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per objective: the best searched (non-baseline) trial's value, the best baseline's, and
    ``difference = best_searched - best_baseline`` (None where either side has no full-budget trial)."""
    out = []
    for metric, mode in zip(space.study.metrics, space.study.modes):
        searched = _best_of([t for t in complete if not t["baseline"]], metric, mode)
        paper = _best_of([t for t in complete if t["baseline"]], metric, mode)
        s_value = None if searched is None else float(searched["objectives"][metric])
        p_value = None if paper is None else float(paper["objectives"][metric])
        out.append({"metric": metric, "mode": mode,
                    "best_searched": s_value, "best_searched_trial_id": searched and searched["trial_id"],
                    "best_baseline": p_value, "best_baseline_method": paper and paper["baseline"],
                    "best_baseline_trial_id": paper and paper["trial_id"],
                    "best_baseline_run_id": paper and paper["mlflow_run_id"],
                    "difference": None if s_value is None or p_value is None else s_value - p_value})
    return out


def _log_summary(uri: str, parent_run_id: str, summary: dict[str, Any], study_dir: Path) -> None:
    tracking.log_run_dict(uri, parent_run_id, summary, "summary.json")
    best = summary["best"]
    tags: dict[str, Any] = {"gatesearch.n_trials": summary["n_trials"], "gatesearch.n_complete": summary["n_complete"],
                            "gatesearch.pareto_run_ids": ",".join(t["mlflow_run_id"] or "" for t in summary["pareto"])}
    if best:
        tags |= {"gatesearch.best_trial_id": best["trial_id"], "gatesearch.best_run_id": best["mlflow_run_id"],
                 "gatesearch.best_checkpoint": best["checkpoint"]}
        # the objective under its own name too: the parent's row in the UI's runs table shows the study's best
        tracking.log_trial_metrics(uri, parent_run_id, {**best["objectives"],
                                                        **{f"best_{k}": v for k, v in best["objectives"].items()}}, 0)
    metrics: dict[str, float] = {}
    for row in summary["vs_baselines"]:
        m = row["metric"]
        metrics |= {f"{key}_{m}": row[key] for key in ("best_searched", "best_baseline") if row[key] is not None}
        if row["difference"] is not None:
            metrics[f"baseline_difference_{m}"] = row["difference"]
        if row["best_baseline_method"]:
            tags |= {f"gatesearch.best_baseline_method.{m}": row["best_baseline_method"],
                     f"gatesearch.best_baseline_run_id.{m}": row["best_baseline_run_id"]}
    if summary.get("reeval"):
        m, t = _reeval_record(uri, parent_run_id, summary["reeval"])
        metrics |= m
        tags |= t
    tags["gatesearch.verdict"] = verdict_line(summary)
    if metrics:
        tracking.log_trial_metrics(uri, parent_run_id, metrics, 0)
    tracking.set_run_tags(uri, parent_run_id, tags)
    tracking.end_run(uri, parent_run_id, "KILLED" if summary["interrupted"] else "FINISHED")


def _reeval_record(uri: str, parent_run_id: str, section: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The re-evaluation on the parent run: per finalist (``<name>`` its trial name or baseline method) the
    mean and 95 % interval as metrics, the paired verdict as a tag, and every finalist as one table."""
    metrics: dict[str, float] = {}
    tags = {"gatesearch.reeval.crowned": section.get("crowned") or "", "gatesearch.reeval.tied": ",".join(section["tied"]),
            "gatesearch.reeval.seeds": str(len(section["seeds"]))}
    table: dict[str, list[Any]] = {c: [] for c in ("finalist", "kind", "method", "trial_id", "n_seeds", "values", "mean",
                                                    "std", "low", "high", "vs_baseline", "diff_low", "diff_high",
                                                    "verdict", "holm", "run_ids")}
    for r in section["finalists"]:
        key = r["baseline"] or r["name"]
        if r["complete"]:
            metrics |= {f"reeval_{q}_{key}": r[q] for q in ("mean", "std", "low", "high")}
        v = r.get("vs_baseline")
        if v:
            metrics |= {f"reeval_diff_{key}": v["mean"], f"reeval_diff_low_{key}": v["low"],
                        f"reeval_diff_high_{key}": v["high"]}
            tags[f"gatesearch.reeval.verdict.{key}"] = v["verdict"] + reeval.family_note(v)
        for col, val in (("finalist", r["label"]), ("kind", "paper baseline" if r["baseline"] else "searched"),
                         ("method", r["method"]), ("trial_id", r["trial_id"]), ("n_seeds", r.get("n", 0)),
                         ("values", json.dumps(r["values"])), ("mean", r.get("mean")), ("std", r.get("std")),
                         ("low", r.get("low")), ("high", r.get("high")), ("vs_baseline", v and v["mean"]),
                         ("diff_low", v and v["low"]), ("diff_high", v and v["high"]),
                         ("verdict", v["verdict"] if v else ("reference" if r["baseline"] else "")),
                         ("holm", v and v.get("holm")),  # still apart with Holm over all finalists' comparisons
                         ("run_ids", ",".join(x or "" for x in r["run_ids"]))):
            table[col].append(val)
    tracking.log_table(uri, parent_run_id, table, "reeval_finalists.json")
    return {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}, tags


def _interrupted(space: SearchSpace, study_dir: Path, search_s: float) -> bool:
    """Ctrl+C makes ``Tuner.fit`` save its state and return early: the saved state then has trials
    that are neither terminated nor errored, or fewer trials than the budget while time was left.
    ``search_s`` is the search's time over every run of the study, as Tune's own budget counts it
    (``clock.py``), not this process's: a resumed study that spent its budget has ended."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(study_dir)).trials
    budget_left = not clock.budget_spent(space.study.time_budget_s, search_s)
    return any(t.status not in ("TERMINATED", "ERROR") for t in trials) or (
        len(trials) < space.study.trials and budget_left)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temporary file renamed over ``path``): a crash leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run_search(opts: SearchOptions) -> dict[str, Any]:
    """Validate the space, run (or resume) the study, write summary.json / best.json, return the summary."""
    space = load_space(opts.space, opts.overrides)  # every config problem stops here, before Ray starts

    uri = absolute_tracking_uri(opts.tracking_uri or from_flat(space.fixed).tracking.uri)
    storage = Path(opts.storage or DEFAULT_STORAGE).expanduser().resolve()
    study_dir = storage / space.study.name
    # before any run or file is written; a resume unpickles only from a store that passes the trust check
    reeval_dir = storage / (space.study.name + reeval.SUFFIX)
    check_search(opts.address, uri, storage, study_dir, opts.resume, reeval_dir)
    if opts.resume:
        check_reeval_unchanged(reeval_dir, dataclasses.asdict(space.study.reeval) if space.study.reeval else None)
    # what this study writes must pass that check on --resume: no group/other write, whatever the user's umask
    os.umask(os.umask(0o022) | 0o022)
    with study_lock(study_dir):  # one process per study store; released on every exit, taken over after a crash
        if not opts.resume and (study_dir / "tuner.pkl").exists():
            raise UserError(f"{study_dir} already holds study {space.study.name!r}: pass --resume to continue it, "
                            "or choose another --storage")
        return _run_study(opts, space, uri, storage, study_dir)


def _run_study(opts: SearchOptions, space: SearchSpace, uri: str, storage: Path, study_dir: Path) -> dict[str, Any]:
    """The study under its lock: Ray, the parent run, the Tuner, the re-evaluation, summary.json / best.json."""
    # num_to_keep forces an experiment snapshot per checkpoint; with tiny epochs Tune warns about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    watch = outage.start(uri)  # a tracking server silent for 30 s stops the study, resumable (outage.py)
    searched = clock.start()  # the search's time over all its runs: Tune restores it on --resume (clock.py)
    # Ray first: a cluster that refuses this client (auth) fails before a parent run or marker exists
    started, space = _init_ray(opts, space)
    on_main = threading.current_thread() is threading.main_thread()  # signal.signal works there only
    previous = signal.signal(signal.SIGTERM, _as_ctrl_c) if on_main else None  # after ray.init: see _as_ctrl_c
    try:
        return _run_started(opts, space, uri, storage, study_dir, started, watch, searched)
    finally:
        if on_main:  # Ray's own handler is no Python object (getsignal gives None): the default stands for it
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a batch scheduler) stops the study as Ctrl+C does. ``ray.init``
    installs Ray's own handler for it (``logging.cc``), which ends the driver at once and leaves the study's
    MLflow runs RUNNING; this one, installed after it, calls the SIGINT handler in place: Tune's while a
    ``Tuner.fit`` runs (the experiment state saved, unfinished trials resumable, exit 130), else Python's
    (``KeyboardInterrupt``). A second SIGTERM then acts as a second Ctrl+C."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored or left to the OS: stop as Ctrl+C would by default
        raise KeyboardInterrupt("killed by SIGTERM")
    handler(signal.SIGINT, frame)


def _run_started(opts: SearchOptions, space: SearchSpace, uri: str, storage: Path, study_dir: Path, started: bool,
                 watch: outage.TrackingWatch, searched: clock.SearchClock) -> dict[str, Any]:
    """``_run_study`` once Ray runs (``started``: this process started it and shuts it down)."""
    t0 = time.perf_counter()
    ctx: TrialContext | None = None
    try:
        exp_id, parent_id = _parent_run(opts, space, uri, study_dir)
        ctx = TrialContext(tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent_id, study=space.study.name,
                           epochs=space.study.epochs, objective_metrics=tuple(space.study.metrics),
                           fault=os.environ.get(FAULT_ENV, ""), fault_dir=str(study_dir / "faults"),
                           workers=space.study.workers, cpus_per_worker=space.study.cpu,
                           gpus_per_worker=space.study.gpu, storage=str(study_dir))
        results = _build_tuner(opts, space, ctx, storage).fit()
        # a study created before search/clock.py resumes without it: unknown, judged by this run's wall time
        search_time = searched.spent_s if searched.seen else None
        search_s = search_time if search_time is not None else time.perf_counter() - t0
        interrupted = _interrupted(space, study_dir, search_s) or watch.reason is not None
        summary = summarize(space, results, study_dir, search_s) | {
            "tracking_uri": uri, "parent_run_id": parent_id, "experiment_id": exp_id, "interrupted": interrupted,
            "search_time_s": search_time}
        if space.study.reeval is not None and not interrupted:  # the finalists again, on paired fresh seeds
            summary["reeval"], summary["interrupted"] = _reevaluate(opts, space, ctx, storage, summary, results)
            _crown(summary)
    finally:
        if ctx is not None:
            remove_scratch(ctx)  # this node's trial scratch files of this study run, nothing else
        if started:
            import ray

            ray.shutdown()
    summary["wall_time_s"] = time.perf_counter() - t0
    interrupted = summary["interrupted"]
    write_json(study_dir / "summary.json", summary)
    best = summary["best"]
    write_json(study_dir / "best.json",
               {"study": space.study.name, "trial_id": best and best["trial_id"], "checkpoint": best and best["checkpoint"],
                "mlflow_run_id": best and best["mlflow_run_id"], "objectives": best and best["objectives"],
                "reeval": best and best.get("reeval"), "verdict": verdict_line(summary),
                "tracking_uri": uri, "devices": list(space.study.devices)})
    if watch.reason is not None:  # what the server did not get stays in Tune's state: --resume sends it
        raise tracking.TrackingUnavailable(watch.message(), watch.reason)
    if opts.select and space.study.devices and not interrupted:
        summary["menus"] = select_best(summary, space.study.devices, study_dir, space.study.register)
        write_json(study_dir / "summary.json", summary)
    outage.close_ended_runs(uri, exp_id, parent_id, summary)  # runs a stopped study could not close
    _log_summary(uri, parent_id, summary, study_dir)
    _log_comparison(uri, parent_id, summary, space, results)
    return summary


def _log_comparison(uri: str, parent_run_id: str, summary: dict[str, Any], space: SearchSpace, results: Any) -> None:
    """The study's parent run as the place where trials are compared (``report.py``): the trials table, an
    overlay of every full-budget trial's frontier, the objective per epoch of every trial, and Optuna's
    parameter importances (or the reason there are none). Written again on ``--resume``."""
    metric = space.study.metrics[0]
    searched = [p.key for p in space.params]
    tracking.log_table(uri, parent_run_id, report.trials_table(summary, searched), "trials_table.json")
    for t in summary["trials"]:  # each trial's drawn values and stop reason as its run's description
        if t["mlflow_run_id"]:
            tracking.set_run_tags(uri, t["mlflow_run_id"],
                                  {tracking.NOTE_TAG: report.trial_description(t, searched, metric)})
    names = {t["trial_id"]: f"{t['name']} {t['baseline']} (baseline)" if t["baseline"] else f"{t['name']} {t['method']}"
             for t in summary["trials"]}
    baselines = {names[t["trial_id"]] for t in summary["trials"] if t["baseline"]}
    best = summary["best"] and names.get(summary["best"]["trial_id"])
    points, curves = {}, {}
    for res in results:
        tid = _trial_id(res)
        if tid not in names:
            continue
        m = res.metrics or {}
        if int(m.get("epochs_done", 0)) >= space.study.epochs:
            points[names[tid]] = report.candidate_points(m)
        df = res.metrics_dataframe
        if df is not None and metric in df and "epochs_done" in df:
            curves[names[tid]] = [(int(e), float(v)) for e, v in zip(df["epochs_done"], df[metric]) if v == v]
    if points:
        tracking.log_figure(uri, parent_run_id, report.frontier_figure(points, baselines, best, space.study.cost),
                            "comparison/frontiers.png")
    if curves:
        tracking.log_figure(uri, parent_run_id, report.curves_figure(curves, baselines, metric),
                            "comparison/objective_per_epoch.png")
    found, reason = report.importances(summary, space.params, seed=space.study.seed)
    tracking.log_run_dict(uri, parent_run_id, {"metric": metric, "importances": found, "reason": reason},
                          "comparison/importances.json")
    if found:
        tracking.log_figure(uri, parent_run_id, report.importance_figure(found, metric), "comparison/importances.png")
    report.close_all()


def _reevaluate(opts: SearchOptions, space: SearchSpace, ctx: TrialContext, storage: Path, summary: dict[str, Any],
                results: Any) -> tuple[dict[str, Any], bool]:
    """Train the finalists again on the re-evaluation seeds (``reeval.py``) as trials of this Ray session;
    returns the ``reeval`` section of the summary and whether it was interrupted. A second call (``--resume``)
    restores the re-evaluation experiment: finished seeds are not trained again."""
    from ray import tune  # lazy: as in _init_ray

    s, r = space.study, space.study.reeval
    chosen, note = reeval.finalists(summary, r)
    full = {_trial_id(res): res.config or {} for res in results}
    base = from_flat(space.example_flat())
    seed_keys = reeval.seeds_of(r, base.train.seed, base.data.split_seed)
    plan = {reeval.key(t["trial_id"], i): {**full[t["trial_id"]], **seed_keys[i - 1], "train.final_test": True}
            for t in chosen for i in range(1, r.seeds + 1)}
    if not plan:
        return reeval.aggregate(summary, r, chosen, {}, seed_keys, "no trial ran the full budget: nothing to "
                                "re-evaluate"), False
    ctx = dataclasses.replace(ctx, reeval=plan)
    name = s.name + reeval.SUFFIX
    trainable = tune.with_resources(tune.with_parameters(opts.trainable or run_trial, ctx=ctx), trial_resources(s))
    if tune.Tuner.can_restore(str(storage / name)):
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:  # the block it begins with: a resume with another one is refused (preflight.check_reeval_unchanged)
        (storage / name).mkdir(parents=True, exist_ok=True)
        write_json(storage / name / REEVAL_BLOCK_FILE, dataclasses.asdict(r))
        tuner = tune.Tuner(
            trainable, param_space={reeval.TRIAL_KEY: tune.grid_search(sorted(plan))},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=s.max_concurrent_trials,
                                        reuse_actors=s.workers == 1,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=opts.verbose,
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      callbacks=[_status_callback(ctx), outage.current()]))
    print(f"re-evaluating {len(chosen)} finalist{'' if len(chosen) == 1 else 's'} on {r.seeds} seeds ({len(plan)} runs)"
          + (f"; {note}" if note else ""), flush=True)
    grid = tuner.fit()
    runs = {}
    for res in grid:
        m = res.metrics or {}
        done = int(m.get("epochs_done", 0))
        runs[(res.config or {}).get(reeval.TRIAL_KEY)] = {**m, "state": "ERROR" if res.error is not None else (
            "COMPLETE" if done >= s.epochs else "STOPPED")}
    from ray.tune import ExperimentAnalysis  # lazy: as in _init_ray

    trials = ExperimentAnalysis(str(storage / name)).trials
    interrupted = len(trials) < len(plan) or any(t.status not in ("TERMINATED", "ERROR") for t in trials)
    return reeval.aggregate(summary, r, chosen, runs, seed_keys, note), interrupted


def _trial_id(res: Any) -> str:
    return (res.metrics or {}).get("trial_id") or Path(res.path).name.rsplit("_", 1)[-1]


def _crown(summary: dict[str, Any]) -> None:
    """With a finished re-evaluation, the study's best trial is the crowned finalist (best mean over seeds),
    carrying its interval and its paired verdict against the best baseline; the menus come from it."""
    row = reeval.crowned_row(summary["reeval"])
    if row is None or not summary["reeval"]["complete"]:
        return
    best = next(t for t in summary["trials"] if t["trial_id"] == row["trial_id"])
    best["reeval"] = {k: row.get(k) for k in ("mean", "std", "low", "high", "n", "vs_baseline", "label")}
    best["reeval"]["tied"] = summary["reeval"]["tied"]
    summary["best"], summary["pareto"] = best, [best]


def verdict_line(summary: dict[str, Any]) -> str:
    """One line naming the winner with its uncertainty, or saying the comparison is from single runs."""
    section = summary.get("reeval")
    if section and section.get("complete"):
        row = reeval.crowned_row(section)
        if section["tied"]:
            return f"tie between {', '.join(section['tied'])} over {len(section['seeds'])} seeds"
        if row:
            standing = reeval.crowned_standing(section)
            tail = f"; {standing}" if standing else ""
            return (f"crowned {row['label']}: {section['metric']} {row['mean']:.4f} [{row['low']:.4f}, {row['high']:.4f}] "
                    f"over {row['n']} seeds{tail}")
    return "single runs: no interval (no study.reeval), so no difference is a verdict"


def select_best(summary: dict[str, Any], devices: tuple[str, ...], study_dir: Path,
                register: str | None = None) -> dict[str, str]:
    """DESIGN step 5: score every pattern of the best trial (every Pareto trial when multi-objective) for
    each device, write menus under ``<study>/menus/<trial_id>/`` and log them to the trial's MLflow run.

    Returns ``{trial_id: menu directory}`` and prints each menu's table.
    """
    written: dict[str, str] = {}
    for t in summary["pareto"]:
        # the checkpoint in Tune's storage when this machine sees it, else the one logged to MLflow
        local = t["checkpoint"] if t["checkpoint"] and Path(t["checkpoint"]).is_file() else None
        out = study_dir / "menus" / t["trial_id"]
        try:
            spread = _seed_spread(summary, t["trial_id"])
            menus, _ = run_select(SelectOptions(devices=devices, out=str(out), checkpoint=local, seed_spread=spread,
                                                run=t["mlflow_run_id"], tracking_uri=summary["tracking_uri"]))
        except UserError as e:  # the study's results are written already; say why there is no menu
            print(f"selector skipped for trial {t['trial_id']}: {e}", file=sys.stderr, flush=True)
            continue
        written[t["trial_id"]] = str(out)
        for menu in menus:
            print(format_menu(menu, limit=12), flush=True)
        if register and t["mlflow_run_id"]:  # study.register: a deploy bundle per device, in the model registry
            versions = register_menus(menus, out, menus[0].checkpoint, summary["tracking_uri"], t["mlflow_run_id"],
                                      register)
            print("registered " + ", ".join(f"models:/{register}@{d} (version {v})" for d, v in versions.items()),
                  flush=True)
    return written


def _seed_spread(summary: dict[str, Any], trial_id: str) -> dict[str, dict[str, Any]] | None:
    """A re-evaluated trial's test top-1 per candidate over seeds (``metric_name`` -> interval), else None."""
    rows = (summary.get("reeval") or {}).get("finalists", [])
    row = next((r for r in rows if r["trial_id"] == trial_id and r["complete"]), None)
    return row.get("test") if row else None


def _describe_baselines(summary: dict[str, Any]) -> list[str]:
    """Every baseline's objectives, then per objective the best searched trial against the best baseline."""
    if not summary.get("baselines"):
        return ["  paper baselines: off (study.baselines: false, or no searched method has a paper recipe)"]
    scores = []
    for t in (t for t in summary["trials"] if t["baseline"]):
        vals = ", ".join(f"{k}={v:.4f}" for k, v in t["objectives"].items() if isinstance(v, (int, float)))
        scores.append(f"{t['baseline']} {vals or 'no score'}" + ("" if t["state"] == "COMPLETE" else f" ({t['state']})"))
    lines = [f"  paper baselines: {'; '.join(scores) or 'none ran'}"]

    def show(value: float | None, trial_id: str | None) -> str:
        return "none ran the full budget" if value is None else f"{value:.4f} (trial {trial_id})"

    for row in summary["vs_baselines"]:
        paper = show(row["best_baseline"], row["best_baseline_trial_id"])
        if row["best_baseline_method"]:
            paper = f"{row['best_baseline_method']} {paper}"
        line = (f"  {row['metric']} ({row['mode']}): best searched trial {show(row['best_searched'], row['best_searched_trial_id'])}"
                f" vs best paper baseline {paper}")
        if row["difference"] is not None:
            line += f", single-run difference {row['difference']:+.4f} (one seed each: not a verdict)"
        lines.append(line)
    return lines


def describe(summary: dict[str, Any]) -> str:
    """The lines ``gatesearch search`` prints: results, best trial, where to look next."""
    lines = [f"study {summary['study']}: {summary['n_trials']} trials, {summary['n_complete']} ran the full budget, "
             f"{summary['n_error']} errored ({summary['wall_time_s']:.0f} s"
             # a resumed study's search ran in several runs of the command: its time over all of them
             + (f"; search {summary['search_time_s']:.0f} s over every run" if summary.get("search_time_s") is not None
                else "")
             + ")"]
    for t in summary["pareto"]:
        vals = ", ".join(f"{k}={v:.4f}" for k, v in t["objectives"].items() if isinstance(v, (int, float)))
        is_best = summary["best"] is not None and t["trial_id"] == summary["best"]["trial_id"]  # also for a summary read back
        lines.append(f"  {'best' if is_best else 'pareto'} trial {t['trial_id']}: {vals}  "
                     f"mlflow run {t['mlflow_run_id']}")
    if summary["best"]:
        lines.append(f"  best checkpoint: {summary['best']['checkpoint']}")
    lines += _describe_baselines(summary)
    lines += reeval.describe_lines(summary.get("reeval"))
    lines.append(f"  verdict: {verdict_line(summary)}")
    if summary["interrupted"]:
        lines.append("interrupted: the study's state is saved; continue it with the same command plus --resume")
    lines.append(f"results: {summary['storage']}/summary.json, best trial: {summary['storage']}/best.json")
    for trial_id, out in summary.get("menus", {}).items():
        lines.append(f"menus of trial {trial_id}: {out}/<device>/menu.json|.parquet, plots in {out} "
                     "(also logged to the trial's MLflow run)")
    uri = summary["tracking_uri"]
    mlflow = Path(sys.executable).parent / "mlflow"  # the venv's, which works without activating it
    mlflow_cmd = str(mlflow) if mlflow.is_file() else "mlflow"
    ui = f"{mlflow_cmd} ui --backend-store-uri {uri}" if not uri.startswith("http") else f"open {uri}"
    lines.append(f"MLflow: {ui}   (experiment id {summary['experiment_id']}, parent run {summary['parent_run_id']})")
    lines.append(f"  the study's trials in the UI: {tracking.runs_view_url(uri, summary['experiment_id'], summary['parent_run_id'])}")
    return "\n".join(lines)
