"""What a study's parent MLflow run shows, so trials are compared in one place (``runner._log_summary``):

- ``trials_table``: one row per trial (kind, method, the searched values, state, why it stopped, the
  objective, epochs, training time, child run id), logged as an MLflow table artifact;
- ``frontier_figure``: every full-budget trial's candidates as (cost relative to the super-net, top-1)
  with its frontier, the paper baselines drawn thick and dashed, the best trial marked;
- ``curves_figure``: the objective per epoch of every trial (baselines solid, ASHA stops visible as
  short curves);
- ``importances``: Optuna's parameter importances (``optuna.importance.get_param_importances``,
  fANOVA) over the study's complete trials, or the reason there are none;
- ``study_view``: the MLflow UI's first screen of the study, a saved view of the runs page (the trials, best
  first, the objective and the searched values as columns, their charts); ``trial_description``: each trial
  run's description (the values it drew, its objective, why it stopped).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gatesearch.evaluate.frontier import pareto_mask  # noqa: E402
from gatesearch.search.params import Param, choice_label  # noqa: E402

#: Fewer complete trials than this: importances would rank noise, so none are computed (the reason is logged).
MIN_TRIALS_FOR_IMPORTANCE = 4


def trials_table(summary: dict[str, Any], searched: Sequence[str]) -> dict[str, list[Any]]:
    """Column -> values, one row per trial, in the study's order."""
    metric = summary["objective"][0]["metric"]
    cols: dict[str, list[Any]] = {c: [] for c in ("trial", "trial_id", "kind", "method", *searched, "state",
                                                  "stop_reason", metric, "epochs", "train_time_s", "child_run_id")}
    for t in summary["trials"]:
        cfg = t.get("config") or {}
        row = {"trial": t.get("name"), "trial_id": t["trial_id"], "kind": "paper baseline" if t["baseline"] else "searched",
               "method": t.get("method") or cfg.get("method.name"), "state": t["state"],
               "stop_reason": t.get("stop_reason"), metric: t["objectives"].get(metric), "epochs": t["epochs_done"],
               "train_time_s": t.get("train_time_s"), "child_run_id": t.get("mlflow_run_id"),
               **{k: _cell(cfg.get(k)) for k in searched}}
        for c in cols:
            cols[c].append(row.get(c))
    return cols


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def candidate_points(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """``(cost, top1)`` of every candidate in a trial's last result (``top1_<name>`` / ``cost_<name>``, the
    numbers its frontier score was computed from)."""
    names = [k[len("cost_"):] for k in metrics if k.startswith("cost_") and not k.startswith("cost_gated")]
    return sorted((float(metrics[f"cost_{n}"]), float(metrics[f"top1_{n}"])) for n in names
                  if isinstance(metrics.get(f"top1_{n}"), (int, float)) and math.isfinite(float(metrics[f"cost_{n}"])))


def frontier_figure(points: dict[str, list[tuple[float, float]]], baselines: set[str], best: str | None,
                    metric_note: str = "") -> Figure:
    """Top-1 against cost relative to the super-net for every full-budget trial: dots are its candidates,
    steps its frontier; baselines thick and dashed, the best trial's line black."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in sorted(points.items()):
        pts = [(c, a) for c, a in pts if c <= 1.0 + 1e-9]
        if not pts:
            continue
        mask = pareto_mask([c for c, _ in pts], [a for _, a in pts])
        front = sorted(p for p, m in zip(pts, mask) if m)
        xs, ys = [c for c, _ in front] + [1.0], [100 * a for _, a in front] + [100 * front[-1][1]]
        style = {"lw": 2.5, "ls": "--"} if name in baselines else {"lw": 1.2}
        if name == best:
            style |= {"color": "black", "lw": 2.5}
        line = ax.step(xs, ys, where="post", label=name + (" (best)" if name == best else ""), **style)
        ax.scatter([c for c, _ in pts], [100 * a for _, a in pts], s=8, alpha=0.4, color=line[0].get_color())
    return _finish(fig, ax, "cost relative to the super-net" + (f" ({metric_note})" if metric_note else ""),
                   "top-1 (%), validation", "every full-budget trial's candidates and frontier (dashed: paper baselines)")


def curves_figure(curves: dict[str, list[tuple[int, float]]], baselines: set[str], metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in sorted(curves.items()):
        if pts:
            ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", ls="-" if name in baselines else "--",
                    label=name)
    return _finish(fig, ax, "epoch", f"{metric} (validation)",
                   "objective per epoch of every trial (solid: paper baselines; short curves: stopped early)")


def _finish(fig: Figure, ax: Any, xlabel: str, ylabel: str, title: str) -> Figure:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a study whose trials all stopped early draws no curve
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _distribution(p: Param) -> Any:
    if p.kind == "choice":
        return optuna.distributions.CategoricalDistribution([choice_label(c) for c in p.choices])
    if p.kind == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.kind == "loguniform")


def importances(summary: dict[str, Any], params: Sequence[Param], seed: int = 0) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances of the searched keys for the first objective, over the complete trials
    (params every such trial has: a key searched only under a condition is left out); ``({}, reason)``
    when there are too few trials or nothing varies."""
    metric, mode = summary["objective"][0]["metric"], summary["objective"][0]["mode"]
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"
                and isinstance(t["objectives"].get(metric), (int, float))]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (f"{len(complete)} complete trial(s); importances need at least {MIN_TRIALS_FOR_IMPORTANCE} "
                    "(fewer would rank noise)")
    dists = {p.key: _distribution(p) for p in params}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in complete:
        cfg = t.get("config") or {}
        values = {k: choice_label(cfg[k]) for k in dists if k in cfg}
        study.add_trial(optuna.trial.create_trial(params=values, distributions={k: dists[k] for k in values},
                                                  value=float(t["objectives"][metric])))
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError) as e:  # e.g. no parameter common to every trial, or none varies
        return {}, f"optuna could not rank the parameters: {str(e).splitlines()[0][:200]}"
    return {k: float(v) for k, v in found.items()}, ""


def importance_figure(found: dict[str, float], metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(found)))
    keys = list(found)[::-1]
    ax.barh(keys, [found[k] for k in keys])
    ax.set_xlabel(f"importance for {metric} (fANOVA, Optuna)")
    fig.tight_layout()
    return fig


def close_all() -> None:
    """Free the figures once logged (a long-lived driver draws a set per study)."""
    plt.close("all")


#: The most searched keys a study's view lists as columns (an MLflow experiment tag holds at most 20,000 characters).
VIEW_MAX_KEYS = 24


def _col(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it: ``metrics.`frontier_score```, ``params.`optim.lr```."""
    return f"{kind}.`{key}`"


def study_view(parent_run_id: str, objectives: Sequence[tuple[str, str]], params: Sequence[Param]) -> dict[str, Any]:
    """MLflow's runs-page state (its "Views" menu, ``tracking.save_runs_view``) that opens on a study's trials.

    ``objectives``: ``(metric, mode)`` pairs, the first one sorts. The view lists this study's trial runs
    flat (not folded under the parent; re-evaluation runs left out), best first, with columns the objectives,
    the searched keys every trial draws (a conditional key would show the config default where it was not
    drawn), why the run stopped, the paper baseline it ran and its description (``trial_description``: the
    values it drew). Its charts: the objective per trial, per epoch, and parallel coordinates of the
    unconditional searched keys against it; MLflow's one chart per logged metric stays, folded. Field names
    are MLflow 3.17's UI state (``ExperimentPageUIState``, ``RunsChartsCardConfig``)."""
    metric, mode = objectives[0]
    metrics = [m for m, _ in objectives]
    always = [p.key for p in params if not p.when][:VIEW_MAX_KEYS]
    section = "gatesearch-study"
    card = {"metricSectionId": section, "runsCountToCompare": 100, "deleted": False, "isGenerated": False}
    charts = [{**card, "uuid": "gatesearch-objective", "type": "BAR", "metricKey": metric},  # its last epoch
              {**card, "uuid": "gatesearch-parallel", "type": "PARALLEL", "selectedParams": always,
               "selectedMetrics": metrics, "showAllRuns": True},
              {**card, "uuid": "gatesearch-curves", "type": "LINE", "metricKey": metric, "selectedMetricKeys": [metric],
               "xAxisKey": "step", "useGlobalXaxisKey": False, "scaleType": "linear", "xAxisScaleType": "linear",
               "lineSmoothness": 0}]  # per epoch (step = epoch)
    note, stop = _col("attributes", "Description"), _col("tags", "gatesearch.stop_reason")
    columns = [*(_col("metrics", m) for m in metrics), *(_col("params", k) for k in always), stop,
               _col("tags", "gatesearch.baseline"), note]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`gatesearch.kind` = 'trial'",
        "orderByKey": _col("metrics", metric), "orderByAsc": mode == "min", "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        # columnOrder: the UI would put its attribute columns (the description) before the metrics
        "selectedColumns": columns, "columnOrder": columns, "columnWidths": {stop: 220, note: 560},
        "runsExpanded": {}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts, "isAccordionReordered": True,
        "compareRunSections": [{"uuid": section, "name": "Study: the objective and the searched values",
                                "display": True, "isReordered": False},
                               {"uuid": "gatesearch-model", "name": "Model metrics", "display": False, "isReordered": False},
                               {"uuid": "gatesearch-system", "name": "System metrics", "display": False,
                                "isReordered": False}],
        "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {}, "viewMaximized": False, "runListHidden": False,
        "autoRefreshEnabled": True, "useGroupedValuesInCharts": True,
    }


def trial_description(trial: dict[str, Any], searched: Sequence[str], metric: str) -> str:
    """A trial's run description (the UI's Description column and run page): the values it drew, why it stopped."""
    cfg = trial.get("config") or {}
    drawn = ", ".join(f"{k}={_short(cfg[k])}" for k in searched if k in cfg)
    value = trial["objectives"].get(metric)
    head = f"paper baseline {trial['baseline']}" if trial["baseline"] else "searched"
    score = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {metric}"
    return f"{head}: {drawn or 'no searched key'}; {score}; {trial.get('stop_reason') or trial['state']}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(_cell(value))
