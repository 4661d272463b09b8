"""Record a finished study as data and render its summary into ``docs/RESULTS.md``: no number typed by hand.

    # after `gatesearch search --space search_spaces/cifar10_resnet20_cpu.yaml`:
    python benchmarks/render_study.py --summary ray_results/cifar10_resnet20_cpu/summary.json
    python benchmarks/render_study.py --study cifar10_resnet20_cpu          # re-render the committed record

``--summary`` copies the study's ``summary.json`` (every trial: baseline or searched, config, state,
epochs, objective, MLflow run), each trial's objective after every epoch (its Tune ``progress.csv``),
the best trial's menus (each device's frontier score and Pareto entries) and the MLflow parent run
into ``docs/results/studies/<study>.json``, with the storage paths made relative to the study
directory. The section between ``<!-- study:<study>:begin -->`` and ``<!-- study:<study>:end -->``
is then rendered from that file: the trials, the best searched trial against the best paper
baseline, the winning config, its menus, and where each of them sits in MLflow; the learning curves
go to ``docs/results/studies/<study>.png`` (the objective per epoch of every trial, and where each one stopped).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any

from render_results import _pyplot, _save, write_section  # benchmarks/ is on sys.path when a script here runs

from gatesearch.search.clock import budget_spent
from gatesearch.search.reeval import crown_basis, crowned_standing, family_note
from gatesearch.stats import single_run_difference, verdict_kind

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "studies"
MENU_KEYS = ("pattern", "strategy", "top1", "top1_low", "top1_high", "n_eval", "top1_seed_std", "n_seeds", "macs", "params",
             "latency_ms", "activation")


def _relative(path: str | None, study_dir: Path) -> str | None:
    if not path:
        return path
    p = Path(path)
    return str(p.relative_to(study_dir)) if p.is_relative_to(study_dir) else str(p)


def _mlflow_runs(uri: str | None, run_ids: list[str | None]) -> dict[str, dict[str, str]]:
    """Each child run's name and status as MLflow holds them ({} where the store cannot be read)."""
    if not uri:
        return {}
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        out = {}
        for rid in filter(None, run_ids):
            info = client.get_run(rid).info
            out[rid] = {"mlflow_run_name": info.run_name, "mlflow_status": info.status}
        return out
    except Exception as e:  # noqa: BLE001 - the record is still worth writing without them
        print(f"MLflow store {uri} not read ({type(e).__name__}: {e}); run names left out")
        return {}


def _curve(study_dir: Path, trial_id: str, metric: str) -> list[list[float]]:
    """``[[epochs_done, objective], ...]`` from the trial's Tune ``progress.csv`` (``<name>_<trial_id>/``);
    [] where the file is missing."""
    found = sorted(study_dir.glob(f"*_{trial_id}/progress.csv"))
    if not found:
        return []
    with found[0].open(newline="") as f:
        return [[int(float(r["epochs_done"])), float(r[metric])] for r in csv.DictReader(f)
                if r.get(metric) not in (None, "") and r.get("epochs_done") not in (None, "")]


def _schedule(space: str | None) -> dict[str, Any]:
    """The space's ASHA rungs (the epochs at which ASHA may stop a trial: grace * rf^k below the
    epoch budget, as Ray's ``ASHAScheduler`` places them) and its time budget; {} without a space."""
    if not space:
        return {}
    from gatesearch.search.space import load_space

    s = load_space(space).study
    rungs, r = [], float(s.asha_grace_period)
    while r < s.epochs:
        rungs.append(int(r))
        r *= s.asha_reduction_factor
    return {"asha_rungs": rungs, "time_budget_s": s.time_budget_s}


def _stop_reason(rec: dict[str, Any], t: dict[str, Any]) -> str:
    """Why a trial short of the epoch budget stopped: at an ASHA rung, ASHA; elsewhere, after the
    study ran out of its time budget, the budget (Tune stops every running trial then)."""
    rungs = rec.get("asha_rungs")
    if rungs is None:  # a record made without its space: the reason is not known
        return "stopped early"
    if t["epochs_done"] in rungs:
        return "stopped early (ASHA)"
    # the search's time over every run of a resumed study where the record has it, else this run's wall time
    if budget_spent(rec.get("time_budget_s"), rec.get("search_time_s") or rec.get("wall_time_s") or 0):
        return "stopped by the time budget"
    return "stopped"


def record_from_summary(summary_path: Path, space: str | None = None) -> dict[str, Any]:
    """The committed record of one study: its summary with relative paths, plus the best trial's menus."""
    summary = json.loads(summary_path.read_text())
    study_dir = summary_path.resolve().parent
    runs = _mlflow_runs(summary.get("tracking_uri"), [t.get("mlflow_run_id") for t in summary["trials"]])
    metric = summary["objective"][0]["metric"]
    trials = [{**t, "checkpoint": _relative(t.get("checkpoint"), study_dir), **runs.get(t.get("mlflow_run_id"), {}),
               "curve": _curve(study_dir, t["trial_id"], metric)}
              for t in sorted(summary["trials"], key=lambda t: t.get("name") or "")]  # study order (t000, t001, ...)
    menus: dict[str, Any] = {}
    for trial_id, folder in (summary.get("menus") or {}).items():
        for menu_file in sorted(Path(folder).glob("*/menu.json")):
            m = json.loads(menu_file.read_text())
            menus.setdefault(trial_id, {})[m["device"]] = {
                "frontier_score": m["frontier_score"], "latency_source": m["latency_source"], "split": m["extras"].get("split"),
                "search": m["search"], "n_entries": len(m["entries"]),
                "pareto": [{k: e.get(k) for k in MENU_KEYS} for e in m["entries"] if e.get("pareto")],
            }
    keep = ("study", "objective", "n_trials", "n_complete", "n_error", "baselines", "vs_baselines", "wall_time_s", "search_time_s",
            "experiment_id", "parent_run_id", "interrupted", "reeval")
    best = summary.get("best")
    return {**{k: summary.get(k) for k in keep}, "space": space, **_schedule(space), "tracking_uri": summary.get("tracking_uri"),
            "best_trial_id": best and best["trial_id"], "trials": trials, "menus": menus}


def _objective(rec: dict[str, Any], t: dict[str, Any]) -> str:
    metric = rec["objective"][0]["metric"]
    v = (t.get("objectives") or {}).get(metric)
    return "-" if v is None else f"{v:.4f}"


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _short_config(cfg: dict[str, Any]) -> str:
    """The trial's sampled keys but ``method.name``, without the ``method.<name>.`` prefix."""
    method = cfg.get("method.name")
    prefix = f"method.{method}."
    return ", ".join(f"{k.removeprefix(prefix)}={_value(v)}" for k, v in sorted(cfg.items()) if k != "method.name")


def render_section(rec: dict[str, Any]) -> list[str]:
    metric, mode = rec["objective"][0]["metric"], rec["objective"][0]["mode"]
    lines = [f"Study `{rec['study']}`" + (f" (`{rec['space']}`)" if rec.get("space") else "")
             + f": {rec['n_trials']} trials, {rec['n_complete']} ran the full budget, {rec['n_error']} failed, "
             f"{rec['wall_time_s'] / 3600:.2f} h wall time{' (interrupted)' if rec.get('interrupted') else ''}"
             + (f" in its last run, {rec['search_time_s'] / 3600:.2f} h of search over every run"
                if rec.get("search_time_s") is not None else "") + "; "
             f"objective `{metric}` ({mode}), on validation. Rendered by `python benchmarks/render_study.py --study "
             f"{rec['study']}` from `docs/results/studies/{rec['study']}.json`.", "",
             f"| # | trial | kind | method | config | state | epochs | {metric} | train h |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, t in enumerate(rec["trials"]):
        cfg = t.get("config") or {}
        kind = "paper baseline" if t.get("baseline") else "searched"
        star = " **best**" if t["trial_id"] == rec.get("best_trial_id") else ""
        # the runner records why a trial stopped (summary "stop_reason"); older records are inferred from the rungs
        state = (t.get("stop_reason") or _stop_reason(rec, t)) if t["state"] == "STOPPED" else t["state"]
        lines.append(f"| {i} | `{t['trial_id']}`{star} | {kind} | {cfg.get('method.name', '')} | {_short_config(cfg)}"
                     f" | {state} | {t['epochs_done']} | {_objective(rec, t)} | {(t.get('train_time_s') or 0) / 3600:.2f} |")
    lines.append("")
    for row in rec.get("vs_baselines") or []:
        if row["best_searched"] is None or row["best_baseline"] is None:
            lines.append(f"- `{row['metric']}`: no searched trial or no baseline ran the full budget; nothing to compare.")
            continue
        lines.append(f"- **Best searched vs best paper baseline** (`{row['metric']}`, single runs): searched "
                     f"`{row['best_searched_trial_id']}` {row['best_searched']:.4f} vs baseline {row['best_baseline_method']} "
                     f"`{row['best_baseline_trial_id']}` {row['best_baseline']:.4f}: difference {row['difference']:+.4f} "
                     "from one run each, which is no verdict (" + ("the re-evaluation below gives it" if rec.get("reeval")
                                                                   else "this study ran without `study.reeval`") + ").")
    lines += render_reeval(rec.get("reeval")) + baseline_single_runs(rec)
    best = next((t for t in rec["trials"] if t["trial_id"] == rec.get("best_trial_id")), None)
    if best:
        cfg = ", ".join(f"`{k}={_value(v)}`" for k, v in sorted((best.get("config") or {}).items()))
        lines.append(f"- **Winning config** (`{best['trial_id']}`, {'paper baseline ' + best['baseline'] if best.get('baseline') else 'searched'}): "
                     f"{cfg}; {metric} {_objective(rec, best)}; checkpoint `<storage>/{rec['study']}/{best['checkpoint']}`.")
    for trial_id, devices in (rec.get("menus") or {}).items():
        for device, m in devices.items():
            front = ", ".join(f"`{e['pattern']}`{'' if e['strategy'] == 'pattern' else ' ' + e['strategy']} "
                              f"{100 * e['top1']:.2f} %{_menu_uncertainty(e)} @ {e['latency_ms']:.3g} ms" for e in m["pareto"])
            lines.append(f"- Menu of `{trial_id}` for `{device}` ({m['latency_source']} latency, {m['split']} split, "
                         f"{m['n_entries']} candidates, frontier score {m['frontier_score']:.4f}): {front}"
                         + _menu_reading(m["pareto"]) + ".")
    lines += ["", f"In MLflow (`{rec['tracking_uri']}`, experiment id {rec['experiment_id']}): the parent run "
              f"`study-{rec['study']}` (`{rec['parent_run_id']}`) holds the study's params, `summary.json` and the metrics "
              f"`best_{metric}`, `best_searched_{metric}`, `best_baseline_{metric}`, `baseline_difference_{metric}`; one "
              f"child run per trial (`{rec['study']}-<index>-<method>`, `-baseline` for a paper baseline):",
              "", "| # | trial | child run | MLflow status |", "|---|---|---|---|"]
    for i, t in enumerate(rec["trials"]):
        name = t.get("mlflow_run_name") or "?"
        lines.append(f"| {i} | `{t['trial_id']}` | `{name}` (`{t.get('mlflow_run_id')}`) | {t.get('mlflow_status') or '?'} |")
    return lines


def _menu_uncertainty(e: dict[str, Any]) -> str:
    """An entry's 95 % Wilson interval of top-1 over the images it was scored on and, where its config was
    re-evaluated, the std over seeds (records of menus written before those columns show neither)."""
    low, high, sd, n = e.get("top1_low"), e.get("top1_high"), e.get("top1_seed_std"), e.get("n_seeds") or 0
    ci = "" if low is None or high is None else f" [{100 * low:.2f}, {100 * high:.2f}]"
    return ci + ("" if sd is None or n < 2 else f" (std {100 * sd:.2f} over {n} seeds)")


def _menu_reading(pareto: list[dict[str, Any]]) -> str:
    """How to read the intervals (docs/selection.md): said once per menu line, with the split's image count."""
    n = {e.get("n_eval") for e in pareto if e.get("top1_low") is not None}
    if len(n) != 1:
        return ""
    return (f" (top-1 with its 95 % Wilson interval over the {n.pop()} images; entries whose intervals overlap are not "
            "shown apart by this split)")


def render_reeval(section: dict[str, Any] | None) -> list[str]:
    """The re-evaluation: each finalist's per-seed values, mean, 95 % t-interval and paired verdict."""
    if not section:
        return []
    seeds = section["seeds"]
    which = "`train.seed` and `data.split_seed`" if section["vary_split"] else "`train.seed`"
    n = len(section["finalists"])
    lines = ["", f"Re-evaluation ({n} finalist{'' if n == 1 else 's'}, seed indices {seeds[0]}..{seeds[-1]} setting {which}; "
             f"`{section['metric']}` on validation; 95 % Student-t intervals over seeds; paired differences against the "
             f"best baseline, {section['best_baseline'] or 'none'}):" + (f" {section['note']}." if section.get("note") else ""),
             "", "| finalist | per seed | mean | std | 95 % interval | paired difference | 95 % interval | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in section["finalists"]:
        vals = ", ".join("-" if v is None else f"{v:.4f}" for v in r["values"])
        if not r["complete"]:
            lines.append(f"| {r['label']} | {vals} | incomplete | | | | | |")
            continue
        v = r.get("vs_baseline")
        diff = (f"{v['mean']:+.4f} | [{v['low']:+.4f}, {v['high']:+.4f}] | {v['verdict']}{family_note(v)}" if v
                else "| | reference")
        lines.append(f"| {r['label']} | {vals} | {r['mean']:.4f} | {r['std']:.4f} | [{r['low']:.4f}, {r['high']:.4f}] | {diff} |")
    standing = crowned_standing(section) if section["crowned"] else ""
    crowned = (f"tie between {', '.join(section['tied'])}" if section["tied"]
               else f"**{section['crowned']}** ({crown_basis(section)}{'; ' + standing if standing else ''})"
               if section["crowned"]
               else "none (incomplete)")
    tested = [f"{r['label']} {t['mean']:.4f} [{t['low']:.4f}, {t['high']:.4f}] (std {t['std']:.4f})"
              for r in section["finalists"] if (t := r.get("test_frontier_score"))]
    return lines + ["", f"- Crowned: {crowned}."] + (
        [f"- On the test split (no choice in the study used it), frontier score over the {len(seeds)} seeds, 95 % interval: "
         + "; ".join(tested) + "."] if tested else [])


def baseline_single_runs(rec: dict[str, Any]) -> list[str]:
    """The paper baselines' search runs, one run each, read against seed noise when the re-evaluation
    re-trained one of them only (``reeval.baselines: best``): its runs over the re-evaluation seeds stand for
    every baseline's seed noise (``stats.single_run_difference``; seed and split vary together there, as
    they do between two studies). Differences are oriented so that + favours the re-evaluated baseline for
    the objective's mode. Empty without a re-evaluation, with several baselines re-evaluated (compared paired
    above), or with no other full-budget baseline."""
    section = rec.get("reeval")
    if not section:
        return []
    paper = [r for r in section["finalists"] if r["baseline"] and r["complete"]]
    if len(paper) != 1 or len(paper[0]["values"]) < 2:
        return []
    ref, sign = paper[0], (1.0 if section["mode"] == "max" else -1.0)
    metric = section["metric"]
    others = [t for t in rec["trials"] if t["baseline"] and t["state"] == "COMPLETE" and t["trial_id"] != ref["trial_id"]
              and isinstance(t["objectives"].get(metric), (int, float))]
    if not others or not isinstance(ref.get("search_value"), (int, float)):
        return []
    said = {"better": "higher", "worse": "lower"}
    parts = []
    for t in others:
        d = single_run_difference(sign * ref["search_value"], sign * t["objectives"][metric], [sign * v for v in ref["values"]])
        parts.append(f"{ref['method']} - {t['baseline']} {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]: "
                     f"{said.get(verdict_kind(d), 'no difference detected')}")
    return [f"- **Paper baselines, one search run each** (`{metric}`), read against the seed noise of {ref['label']}'s "
            f"{len(ref['values'])} re-evaluation runs (`stats.single_run_difference`, 95 %): " + "; ".join(parts) + "."]


METHOD_COLORS = {"adn": "tab:blue", "gated_depth": "tab:orange", "probgates": "tab:green", "plain": "tab:gray",
                 "stochastic_depth": "tab:purple"}


def plot(rec: dict[str, Any], path: Path) -> bool:
    """The objective after every epoch of each trial: paper baselines solid, searched trials dashed,
    coloured by method; an x where a trial stopped early, a star on the best; right of the last epoch, each
    re-evaluated finalist's mean with its 95 % interval over seeds. Left every epoch, right the last four
    epochs within 5 points of the best value, where the trials differ. False when no trial has a curve
    (nothing drawn)."""
    trials = [(i, t) for i, t in enumerate(rec["trials"]) if t.get("curve")]
    if not trials:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    metric = rec["objective"][0]["metric"]
    top = max(v for _, t in trials for _, v in t["curve"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax in axes:
        for i, t in trials:
            method = (t.get("config") or {}).get("method.name", "?")
            x, y = zip(*t["curve"])
            kind = "paper baseline" if t.get("baseline") else "searched"
            ax.plot(x, y, color=METHOD_COLORS.get(method, "black"), ls="-" if t.get("baseline") else "--",
                    lw=2.0 if t.get("baseline") else 1.2, marker=".", label=f"#{i} {method} ({kind})")
            if t["state"] == "STOPPED":
                ax.plot(x[-1], y[-1], "x", color="black", ms=8)
            if t["trial_id"] == rec.get("best_trial_id"):
                ax.plot(x[-1], y[-1], "*", color="gold", mec="black", ms=14, zorder=5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (validation)")
    axes[0].set_title(f"study {rec['study']}: x = stopped early, star = best")
    last = max(x for _, t in trials for x, _ in t["curve"])
    # each re-evaluated finalist's mean and 95 % interval over the seeds, just right of the last epoch
    finalists = [r for r in (rec.get("reeval") or {}).get("finalists", []) if r.get("complete")]
    for k, r in enumerate(finalists):
        bar = last + 0.2 + 0.12 * k
        for ax in axes:
            ax.errorbar([bar], [r["mean"]], yerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], fmt="s",
                        color=METHOD_COLORS.get(r.get("method") or "", "black"), ms=5, capsize=4, lw=1.5,
                        label=f"{r['label']}: mean, 95 % interval over {r['n']} seeds" if ax is axes[1] else None)
        top = max(top, r["high"])
    axes[1].set_xlim(max(0.5, last - 3.5), last + 0.5 + 0.12 * len(finalists))
    axes[1].set_ylim(top - 0.05, top + 0.005)
    axes[1].set_title("last epochs, within 5 points of the best value")
    axes[1].legend(fontsize=8, loc="best")
    _save(fig, path)
    return True


def render(rec: dict[str, Any], doc: Path, results: Path) -> str:
    """Write the learning-curve figure next to the record and the section into ``doc``."""
    begin, end = f"<!-- study:{rec['study']}:begin -->", f"<!-- study:{rec['study']}:end -->"
    body = render_section(rec)
    png = results / f"{rec['study']}.png"
    if plot(rec, png):
        rel = Path(os.path.relpath(png, doc.resolve().parent)).as_posix()
        body += ["", f"![objective per epoch of every trial]({rel})"]
    return write_section(doc, begin, end, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--summary", help="a finished study's <storage>/<study>/summary.json: record it, then render")
    g.add_argument("--study", help="render the committed docs/results/studies/<study>.json")
    p.add_argument("--space", default=None, help="the space file the study ran (recorded with --summary)")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = p.parse_args()
    results = Path(args.results_dir)
    if args.summary:
        rec = record_from_summary(Path(args.summary), args.space)
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{rec['study']}.json").write_text(json.dumps(rec, indent=1, allow_nan=False) + "\n")
    else:
        rec = json.loads((results / f"{args.study}.json").read_text())
    print(render(rec, Path(args.doc), results))


if __name__ == "__main__":
    main()
