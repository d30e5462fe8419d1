"""The search: profile-guided, multi-objective choice of per-layer actions (``autoselect search``).

Backends load lazily: ``optuna`` (trials in this process) and ``ray`` (trials on a Ray cluster through Tune). Stable entry point: :func:`search`.
"""

from __future__ import annotations

from autoselect.search.objective import Outcome, ProxyBudget, Pruned, TrialEvaluator
from autoselect.search.pareto import Constraints, choose, hypervolume, pareto_mask
from autoselect.search.run import RayOptions, SearchConfig, SearchResult, search

__all__ = ["Constraints", "Outcome", "ProxyBudget", "Pruned", "RayOptions", "SearchConfig", "SearchResult", "TrialEvaluator",
           "choose", "hypervolume", "pareto_mask", "search"]
