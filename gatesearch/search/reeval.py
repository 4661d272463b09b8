"""Re-evaluation of a study's finalists on paired fresh seeds: the study's verdict with its uncertainty.

A search ranks trials by single runs, and two recipes a few tenths of a point apart are inside the seed
noise (plain ResNet-20's seed std on CIFAR-10 is 0.31 points, ``docs/RESULTS.md``). So after the search,
``study.reeval: {finalists: K, seeds: N}`` trains again, at the full epoch budget and without early
stopping, the K best searched configs that ran the full budget and the best paper baseline (``baselines:
all``: the best baseline of every searched method), each on the same N fresh seed indices i = 1..N:
index i sets ``train.seed = s0 + i`` and, with ``vary_split`` (default), ``data.split_seed = d0 + i``
(s0, d0: the study's own, which the search used). Every comparison is then paired by seed index, and
varying the split with the seed estimates the expected performance better at the same cost (Bouthillier
et al., MLSys 2021, "Accounting for Variance in Machine Learning Benchmarks"); this is racing as in
SMAC's intensification, done once on the finalists.

The verdict: per finalist the mean, sample std and 95 % t-interval of the objective on validation and of
each candidate's top-1 on the test split (``train.final_test``); the paired difference against the best
baseline (oriented so that a positive value is an improvement for the objective's mode) with its 95 %
t-interval, and "better" / "worse" / "no difference detected with N seeds (interval [a, b])"
(``gatesearch.stats``). The crowned config is the finalist with the best mean; a tie is a tie.

This module plans and aggregates (no Ray); ``runner.py`` runs the plan as trials of the same Ray session.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Sequence

from gatesearch.search.space import Reeval
from gatesearch.stats import Interval, crown, holm, p_value, paired_difference, t_interval, verdict, verdict_kind

#: The Tune config key of a re-evaluation trial (no dot: never a Config key): ``"<trial_id>/<seed index>"``.
TRIAL_KEY = "gatesearch_reeval"
#: Tags on the re-evaluation's MLflow child runs: the trial it repeats and the seed index.
TAG_OF = "gatesearch.reeval_of"
TAG_SEED = "gatesearch.reeval_seed"
#: Experiment (Tune) name suffix: the re-evaluation is its own Tune experiment beside the search's.
SUFFIX = "-reeval"


def key(trial_id: str, index: int) -> str:
    return f"{trial_id}/{index}"


def parse_key(value: str) -> tuple[str, int]:
    trial_id, _, index = value.rpartition("/")
    return trial_id, int(index)


def seeds_of(reeval: Reeval, base_seed: int, base_split: int) -> list[dict[str, int]]:
    """The seed keys of indices 1..N (index 0 is what the search ran)."""
    return [{"train.seed": base_seed + i, **({"data.split_seed": base_split + i} if reeval.vary_split else {})}
            for i in range(1, reeval.seeds + 1)]


def _sign(mode: str) -> float:
    return 1.0 if mode == "max" else -1.0


def finalists(summary: dict[str, Any], reeval: Reeval) -> tuple[list[dict[str, Any]], str]:
    """The trials to re-evaluate (from ``summary["trials"]``, full-budget ones only): the ``reeval.finalists``
    best searched trials, then the best baseline (or the best of each method with ``baselines: all``).
    Returns ``(finalists, note)``; the note says when fewer searched trials than asked ran the full budget."""
    metric, mode = summary["objective"][0]["metric"], summary["objective"][0]["mode"]
    sign = _sign(mode)
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"
                and isinstance(t["objectives"].get(metric), (int, float)) and math.isfinite(t["objectives"][metric])]
    ranked = sorted(complete, key=lambda t: -sign * float(t["objectives"][metric]))
    searched = [t for t in ranked if not t["baseline"]]
    chosen = searched[: reeval.finalists]
    note, short = "", f"study.reeval.finalists is {reeval.finalists} but"
    if not chosen:
        note = f"{short} no searched trial ran the full budget: only the paper baselines are re-evaluated"
    elif len(chosen) < reeval.finalists:
        note = f"{short} {len(searched)} searched trial(s) ran the full budget: re-evaluating all {len(chosen)}"
    paper = [t for t in ranked if t["baseline"]]
    if reeval.baselines == "best":
        paper = paper[:1]
    else:  # the best baseline trial of each method
        paper = [t for i, t in enumerate(paper) if t["baseline"] not in {p["baseline"] for p in paper[:i]}]
    return chosen + paper, note


def name_of(trial: dict[str, Any]) -> str:
    """How a finalist is called in tables: ``t003 (probgates)`` or ``adn (paper baseline)``."""
    method = trial.get("method") or trial["config"].get("method.name", "")
    return f"{trial['baseline']} (paper baseline)" if trial["baseline"] else f"{trial['name']} ({method})".replace(" ()", "")


def _interval(values: Sequence[float]) -> dict[str, Any]:
    iv = t_interval(values)
    return {"mean": iv.mean, "std": iv.std, "low": iv.low, "high": iv.high, "n": iv.n}


def _test_candidates(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per candidate (``test_top1_<name>`` metric), the interval of its test top-1 over seeds."""
    names = sorted({k[len("test_top1_"):] for r in runs for k in r if k.startswith("test_top1_")})
    out = {}
    for n in names:
        vals = [r[f"test_top1_{n}"] for r in runs if isinstance(r.get(f"test_top1_{n}"), (int, float))]
        if len(vals) == len(runs):
            out[n] = _interval(vals)
    return out


def aggregate(summary: dict[str, Any], reeval: Reeval, chosen: Sequence[dict[str, Any]],
              results: dict[str, dict[str, Any]], seed_keys: Sequence[dict[str, int]], note: str = "") -> dict[str, Any]:
    """The ``reeval`` section of ``summary.json`` from ``results`` (``key(trial, i)`` -> the run's final
    metrics, ``state`` and ``mlflow_run_id``). A finalist with a seed that did not finish gets no interval."""
    metric, mode = summary["objective"][0]["metric"], summary["objective"][0]["mode"]
    sign = _sign(mode)
    indices = list(range(1, reeval.seeds + 1))
    rows = []
    for t in chosen:
        runs = [results.get(key(t["trial_id"], i)) or {} for i in indices]
        done = [r.get("state") == "COMPLETE" and isinstance(r.get(metric), (int, float)) for r in runs]
        row = {"trial_id": t["trial_id"], "name": t.get("name") or t["trial_id"], "baseline": t["baseline"],
               "method": t["config"].get("method.name") or t.get("method"), "config": t["config"],
               "search_value": t["objectives"].get(metric), "values": [r.get(metric) for r in runs],
               "states": [r.get("state", "MISSING") for r in runs], "run_ids": [r.get("mlflow_run_id") for r in runs],
               "complete": all(done)}
        if all(done):
            row |= _interval([float(r[metric]) for r in runs])
            row["test"] = _test_candidates(runs)
            if all(isinstance(r.get("test_frontier_score"), (int, float)) for r in runs):
                row["test_frontier_score"] = _interval([float(r["test_frontier_score"]) for r in runs])
        rows.append(row)
    for row in rows:
        row["label"] = name_of(row)
    ready = [r for r in rows if r["complete"]]
    paper = [r for r in ready if r["baseline"]]
    best_paper = max(paper, key=lambda r: sign * r["mean"], default=None)
    for row in rows:
        row["vs_baseline"] = None
        if best_paper is not None and row is not best_paper and row["complete"]:
            diff = paired_difference([sign * v for v in row["values"]], [sign * v for v in best_paper["values"]])
            row["vs_baseline"] = {"baseline": best_paper["label"], "differences": [
                sign * (a - b) for a, b in zip(row["values"], best_paper["values"])], **_diff(diff)}
    # all finalists are compared with one baseline on the same seeds: read together (Holm, family-wise 5 %), the
    # best of K cannot look apart by chance alone (stats.holm; family_note says it in words)
    compared = [r for r in rows if r["vs_baseline"]]
    kept = set(holm({r["label"]: r["vs_baseline"]["p"] for r in compared}))
    for r in compared:
        r["vs_baseline"] |= {"comparisons": len(compared), "holm": r["label"] in kept}
    # means equal up to float rounding (the same values summed in another order) are a tie
    won = crown({r["label"]: sign * r["mean"] for r in ready}, tolerance=1e-12) if ready else None
    return {
        "metric": metric, "mode": mode, "finalists_requested": reeval.finalists, "seeds": indices,
        "seed_keys": list(seed_keys), "vary_split": reeval.vary_split, "baselines": reeval.baselines,
        "note": note, "complete": bool(rows) and all(r["complete"] for r in rows),
        "finalists": rows, "best_baseline": best_paper["label"] if best_paper else None,
        "crowned": won.winner if won else None, "tied": list(won.tied) if won else [],
    }


def _diff(diff: Interval) -> dict[str, Any]:
    return {**asdict(diff), "verdict": verdict(diff), "kind": verdict_kind(diff), "p": p_value(diff)}


def family_note(v: dict[str, Any]) -> str:
    """How a finalist's "better"/"worse" against the baseline reads once all finalists' comparisons are read
    together (``aggregate``'s ``holm``): empty for a single comparison or no difference; else whether it
    survives Holm's correction. The crowned finalist is the best of K on the same seeds, so its own verdict
    alone overstates how sure the study is when K > 1."""
    m = v.get("comparisons") or 1
    if m < 2 or v.get("kind") not in ("better", "worse"):
        return ""
    return f" ({'still' if v.get('holm') else 'not'} apart with Holm's correction over the {m} comparisons)"


def crowned_row(section: dict[str, Any]) -> dict[str, Any] | None:
    """The crowned finalist's row (the first of the tied ones on a tie), None when nothing finished."""
    label = section.get("crowned") or (section.get("tied") or [None])[0]
    return next((r for r in section.get("finalists", []) if r["label"] == label), None)


def crowned_standing(section: dict[str, Any]) -> str:
    """How sure the crown is, in words: a crowned searched finalist's verdict against the best baseline; a
    crowned baseline's, the searched finalists' verdicts against it (a best mean inside the noise is no
    win, so the line says "no difference detected" where it is one). Empty when nothing was compared."""
    row = crowned_row(section)
    if row is None:
        return ""
    if len(section.get("finalists", [])) == 1:  # e.g. ASHA stopped every searched trial: the baseline alone
        return "the only finalist: no other config was re-evaluated on these seeds, so this is its interval, not a win"
    v = row.get("vs_baseline")
    if v:
        return f"against {v['baseline']}: {v['verdict']}{family_note(v)}"
    others = [r for r in section.get("finalists", []) if r is not row and r.get("vs_baseline")]
    return "; ".join(f"{r['label']} against it: {r['vs_baseline']['verdict']}{family_note(r['vs_baseline'])}"
                     for r in others)


def crown_basis(section: dict[str, Any]) -> str:
    """What the crown rests on: the best mean over the seeds, or a lone finalist's seeds."""
    n = len(section["seeds"])
    return f"best mean over {n} seeds" if len(section.get("finalists", [])) > 1 else f"{n} seeds"


def describe_lines(section: dict[str, Any] | None) -> list[str]:
    """What ``gatesearch search`` prints about the verdict: each finalist's interval, the paired
    differences against the best baseline, the crowned config; or that the comparison is single-run."""
    if not section:
        return ["  verdict: from single runs (no re-evaluation; add study.reeval: {finalists: K, seeds: N} to re-train "
                "the finalists on paired seeds): a difference above is not a result"]
    seeds = section["seeds"]
    which = "train.seed and data.split_seed" if section["vary_split"] else "train.seed"
    n = len(section["finalists"])
    lines = [f"  re-evaluation: {n} finalist{'' if n == 1 else 's'} x {len(seeds)} seeds ({which} index "
             f"{seeds[0]}..{seeds[-1]}), {section['metric']} on validation, 95% t-intervals:"]
    if section.get("note"):
        lines.append(f"    note: {section['note']}")
    for r in section["finalists"]:
        if not r["complete"]:
            lines.append(f"    {r['label']:<34} incomplete ({', '.join(r['states'])}): no interval")
            continue
        lines.append(f"    {r['label']:<34} mean {r['mean']:.4f}  [{r['low']:.4f}, {r['high']:.4f}]  std {r['std']:.4f}"
                     f"  n={r['n']}  (search run {r['search_value']:.4f})")
    for r in section["finalists"]:
        v = r.get("vs_baseline")
        if v:
            lines.append(f"    {r['label']} vs {v['baseline']}: {v['mean']:+.4f} paired, "
                         f"[{v['low']:+.4f}, {v['high']:+.4f}] -> {v['verdict']}{family_note(v)}")
    if section["tied"]:
        lines.append(f"  crowned: tie between {', '.join(section['tied'])} (equal mean {section['metric']})")
    elif section["crowned"]:
        standing = crowned_standing(section)
        tail = f"; {standing}" if standing else ""
        lines.append(f"  crowned: {section['crowned']} ({crown_basis(section)}{tail})")
    return lines
