"""The profile as a prior: rank the space's groups by measured sensitivity, warm-start the study from that
ranking, and optionally search only the most sensitive groups.

A group's sensitivity is the sum of its layers' ranking metric (``local_drift`` by default: the error each
layer's own quantizers add). A warm-start plan for a budget ``b`` (a fraction of all parameters) retrains the
groups with the highest sensitivity per retrained parameter until ``b`` is spent, freezing the rest: the cheap,
sensitive groups first, as the seed study's depthwise finding suggests.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from autoselect.space import Group, SearchSpace

__all__ = ["group_sensitivity", "narrow", "smooth_candidates", "warm_starts"]

QAT_ACTIONS = ("qat", "qat_asym", "qat_sym")
SMOOTH_SPREAD = 2.5  # w_channel_spread from which smoothing is tried first (MobileNetV2: depthwise median 3.7,
#                      expand and project at most 2.6 on the reference checkpoint)


def group_sensitivity(groups: Sequence[Group], layer_scores: Mapping[str, float]) -> dict[str, float]:
    return {g.name: float(sum(layer_scores.get(p, 0.0) for p in g.layers)) for g in groups}


def narrow(groups: Sequence[Group], sensitivity: Mapping[str, float], top: int | None) -> tuple[list[Group], dict[str, str]]:
    """The groups to search (the ``top`` most sensitive, all when None) and the rest, fixed at freeze."""
    if top is None or top >= len(groups):
        return list(groups), {}
    ranked = sorted(groups, key=lambda g: -sensitivity[g.name])
    keep = {g.name for g in ranked[:top]}
    fixed = {g.name: g.untrained for g in groups if g.name not in keep}
    return [g for g in groups if g.name in keep], fixed


def smooth_candidates(groups: Sequence[Group], spread: Mapping[str, float], *, per_channel_weights: bool,
                      threshold: float = SMOOTH_SPREAD) -> set[str]:
    """Groups the profile says smoothing should help: weights quantized per tensor, and a layer whose largest
    channel range is ``threshold`` times its median one (``w_channel_spread``), so that one scale fits no channel
    well. With per-channel weights smoothing cannot help the weights: none."""
    if per_channel_weights:
        return set()
    return {g.name for g in groups if max((spread.get(p, 0.0) for p in g.layers), default=0.0) >= threshold}


def warm_starts(space: SearchSpace, groups: Sequence[Group], sensitivity: Mapping[str, float], total_params: int,
                budgets: Sequence[float], smooth: Collection[str] = ()) -> list[dict[str, Any]]:
    """Parameter sets for the study to try first: everything frozen (PTQ: free to evaluate, and the answer when
    PTQ loses nothing), then one per budget (duplicates dropped). Where the space offers smoothing, the groups in
    ``smooth`` (see :func:`smooth_candidates`) are smoothed in every plan after an unsmoothed all-frozen one."""
    searchable = [g for g in groups if any(a in g.choices for a in QAT_ACTIONS) and len(g.choices) > 1]
    order = sorted(searchable, key=lambda g: -sensitivity[g.name] / max(1, g.params))
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    offers_smoothing = any(True in space.parameters(g).get(f"{g.name}.smooth", ()) for g in groups)
    rounds = [(0.0, False)] + [(b, True) for b in (0.0, *sorted(budgets))] if smooth and offers_smoothing else \
        [(b, False) for b in (0.0, *sorted(budgets))]
    for budget, smoothed in rounds:
        chosen: set[str] = set()
        spent = 0
        for g in order:
            if sensitivity[g.name] <= 0:
                break
            if spent + g.params <= budget * total_params:
                chosen.add(g.name)
                spent += g.params
        params: dict[str, Any] = {}
        for g in groups:
            names = space.parameters(g)
            if f"{g.name}.action" in names:
                qat = next(a for a in g.choices if a in QAT_ACTIONS) if g.name in chosen else g.untrained
                params[f"{g.name}.action"] = qat
            if f"{g.name}.bits" in names:
                params[f"{g.name}.bits"] = names[f"{g.name}.bits"][0]
            if f"{g.name}.smooth" in names:
                on = smoothed and g.name in smooth and True in names[f"{g.name}.smooth"]
                params[f"{g.name}.smooth"] = True if on else names[f"{g.name}.smooth"][0]
        signature = tuple(sorted((k, str(v)) for k, v in params.items()))
        if (chosen or budget == 0.0) and signature not in seen:
            seen.add(signature)
            out.append(params)
    return out
