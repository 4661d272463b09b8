"""The one evaluation path: what training, the search objective, the selector and the menus all score
with, so one checkpoint gives the same numbers everywhere.

- ``passes``: accuracy of one sub-network or gate source, stochastic / ensemble inference, KL between
  sub-networks, BatchNorm re-estimation;
- ``walk``: every fixed pattern through a prefix trie (identical numbers, shared prefixes), beam search;
- ``strategies``: probabilistic gates' inference strategies (threshold, always-on, stochastic, ensemble);
- ``frontier``: the Pareto mask and the frontier score of (cost, top-1) points;
- ``table``: ``candidate_table``, every candidate a model deploys with its top-1 and cost.

The names below are the package's public API, re-exported from those modules.
"""

from gatesearch.evaluate.frontier import FRONTIER_BUDGETS, frontier_score, pareto_mask
from gatesearch.evaluate.passes import (
    EvalResult,
    GateSource,
    PerBatch,
    evaluate,
    evaluate_ensemble,
    evaluate_stochastic,
    kl_between,
    reestimate_bn,
)
from gatesearch.evaluate.strategies import DEFAULT_THRESHOLDS, score_strategies, strategy_source
from gatesearch.evaluate.table import (
    EXHAUSTIVE_MAX_UNITS,
    candidate_table,
    frontier_of,
    ladder,
    metric_name,
    table_metrics,
)
from gatesearch.evaluate.walk import PatternScore, beam_search, evaluate_patterns_naive, evaluate_patterns_trie

__all__ = [
    "DEFAULT_THRESHOLDS", "EXHAUSTIVE_MAX_UNITS", "FRONTIER_BUDGETS", "EvalResult", "GateSource", "PatternScore",
    "PerBatch", "beam_search", "candidate_table", "evaluate", "evaluate_ensemble", "evaluate_patterns_naive",
    "evaluate_patterns_trie", "evaluate_stochastic", "frontier_of", "frontier_score", "kl_between", "ladder",
    "metric_name", "pareto_mask", "reestimate_bn", "score_strategies", "strategy_source", "table_metrics",
]
