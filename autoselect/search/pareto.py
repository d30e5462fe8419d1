"""Pareto fronts over (top-1 up, retrained fraction down, latency down), hypervolume, and picking one plan.

Pure numpy/pandas: no torch, no optuna. With ``Constraints.tolerance`` None ("auto", the default), which plans tie
with the best is decided by a paired test on the validation images (:mod:`autoselect.search.noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoselect.errors import AutoselectError
from autoselect.search.noise import ALPHA, mcnemar_p, tied, unpack

__all__ = ["Constraints", "choose", "hypervolume", "pareto_mask", "verdict"]

OBJECTIVES = ("top1", "retrained", "latency")
FALLBACK_TOLERANCE = 0.5  # "auto" where trials carry no per-image results (a study from before they did)


def _as_min(df: pd.DataFrame) -> np.ndarray:
    """Objectives as columns to minimise."""
    return np.stack([-df["top1"].to_numpy(float), df["retrained"].to_numpy(float), df["latency"].to_numpy(float)], 1)


def pareto_mask(df: pd.DataFrame) -> np.ndarray:
    """True for rows no other row dominates (at least as good in all three objectives, better in one)."""
    pts = _as_min(df)
    mask = np.ones(len(pts), dtype=bool)
    for i, p in enumerate(pts):
        dominated = np.all(pts <= p, axis=1) & np.any(pts < p, axis=1)
        mask[i] = not dominated.any()
    return mask


def hypervolume(df: pd.DataFrame, *, ref_top1: float, ref_latency: float) -> float:
    """The volume dominated by the rows, bounded by (``ref_top1``, all parameters retrained, ``ref_latency``).

    Units: top-1 points x retrained fraction x latency units. Rows worse than the reference in any objective add
    nothing. Exact: the region is sliced along latency, each slice a 2-D staircase.
    """
    pts = _as_min(df)
    ref = np.array([-ref_top1, 1.0, ref_latency])
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    lats = np.unique(np.append(pts[:, 2], ref[2]))
    volume = 0.0
    for lo, hi in zip(lats[:-1], lats[1:]):
        layer = pts[pts[:, 2] <= lo][:, :2]
        volume += _area(layer, ref[:2]) * (hi - lo)
    return float(volume)


def _area(pts: np.ndarray, ref: np.ndarray) -> float:
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 0])]
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


@dataclass(frozen=True, kw_only=True)
class Constraints:
    """Limits on the emitted plan. ``max_accuracy_drop``: points of top-1 below the FP32 model on the same
    validation images; ``max_retrained``: a fraction; ``max_latency``: in the study's latency unit.
    ``max_model_mb``: deployed weights in MB (each layer's weights at its bit-width, biases and scales; the
    trials' ``size_mb``). ``tolerance``: among feasible trials within this many points of the best, the one
    retraining least wins; None ("auto"): among those whose per-image validation results do not differ from the
    best's by McNemar's exact test at ``alpha``."""

    max_accuracy_drop: float | None = None
    max_retrained: float | None = None
    max_latency: float | None = None
    max_model_mb: float | None = None
    tolerance: float | None = None
    alpha: float = ALPHA

    def describe_tolerance(self) -> str:
        if self.tolerance is None:
            return f"auto: paired McNemar test, alpha {self.alpha:g}"
        return f"{self.tolerance:g} points"

    def feasible(self, df: pd.DataFrame, fp32_top1: float) -> np.ndarray:
        ok = np.ones(len(df), dtype=bool)
        if self.max_accuracy_drop is not None:
            ok &= df["top1"].to_numpy(float) >= fp32_top1 - self.max_accuracy_drop
        if self.max_retrained is not None:
            ok &= df["retrained"].to_numpy(float) <= self.max_retrained
        if self.max_latency is not None:
            ok &= df["latency"].to_numpy(float) <= self.max_latency
        if self.max_model_mb is not None:
            size = df["size_mb"].to_numpy(float) if "size_mb" in df else np.full(len(df), np.nan)
            ok &= size <= self.max_model_mb  # a trial without a measured size (NaN) is not feasible
        return ok


def choose(df: pd.DataFrame, constraints: Constraints, *, fp32_top1: float) -> pd.Series:
    """The trial to emit: feasible; within ``tolerance`` of the best feasible top-1; then fewest parameters
    retrained, lowest latency, highest top-1. Raises when no finished trial satisfies the constraints."""
    if df.empty:
        raise AutoselectError("no trial finished: nothing to choose from")
    feasible = df[constraints.feasible(df, fp32_top1)]
    if feasible.empty:
        best = df.sort_values("top1", ascending=False).iloc[0]
        raise AutoselectError(
            f"no finished trial meets the constraints (best top-1 {best['top1']:.2f}% with "
            f"{100 * best['retrained']:.1f}% retrained, latency {best['latency']:.4g}); relax them or run more trials")
    near = feasible.loc[near_best(feasible, constraints)]
    order = near.assign(_neg=-near["top1"]).sort_values(["retrained", "latency", "_neg"], kind="stable")
    return order.drop(columns="_neg").iloc[0]


def near_best(feasible: pd.DataFrame, constraints: Constraints) -> np.ndarray:
    """Which rows tie with the best top-1: within ``tolerance`` points, or, with ``tolerance`` None, not
    distinguishable from it by the paired test (each row's ``val_correct``, see :func:`~autoselect.search.noise
    .pack`). Without per-image results, "auto" falls back to :data:`FALLBACK_TOLERANCE`."""
    top1 = feasible["top1"].to_numpy(float)
    tol = constraints.tolerance
    paired = tol is None and "val_correct" in feasible and feasible["val_correct"].notna().all()
    if not paired:
        return top1 >= top1.max() - (FALLBACK_TOLERANCE if tol is None else tol)
    vectors = [unpack(v) for v in feasible["val_correct"]]
    best = vectors[int(np.argmax(top1))]
    return np.array([t == top1.max() or tied(best, v, constraints.alpha) for t, v in zip(top1, vectors)])


def verdict(chosen: pd.Series, *, fp32_top1: float, ptq_top1: float, constraints: Constraints,
            proxy_steps: int, fp32_correct: np.ndarray | None = None, ptq_correct: np.ndarray | None = None) -> str:
    """What the choice means, in one line, saying what was measured: a plan that retrains nothing is "PTQ is
    enough" only when PTQ itself ties with FP32 (within the tolerance; with "auto", by the paired test on the
    per-image results ``fp32_correct`` / ``ptq_correct``); otherwise no trained trial beat PTQ within the proxy
    budget (or the constraints allowed none), which is a different statement."""
    top1, retrained, tol = float(chosen["top1"]), float(chosen["retrained"]), constraints.tolerance
    if retrained > 0:
        return (f"retrain {100 * retrained:.1f}% of the parameters: {top1:.2f}% on validation (proxy), against "
                f"{ptq_top1:.2f}% all frozen (PTQ) and {fp32_top1:.2f}% FP32")
    loss = fp32_top1 - ptq_top1
    if tol is None and fp32_correct is not None and ptq_correct is not None:
        p = mcnemar_p(fp32_correct, ptq_correct)
        within, how = loss <= 0 or p >= constraints.alpha, f"McNemar p {p:.2g} on {len(fp32_correct)} images"
        where = f"within noise ({how})"
        beaten = "no trained plan beat PTQ beyond noise"
    else:
        tol = FALLBACK_TOLERANCE if tol is None else tol
        within, how = loss <= tol, f"tolerance {tol:g}"
        where = f"within the tolerance ({tol:g} points)"
        beaten = f"no trained plan beat PTQ by more than {tol:g} points"
    if within:
        return (f"PTQ is enough here: all frozen loses {loss:.2f} points against FP32, {where}: nothing to "
                f"retrain")
    if constraints.max_retrained == 0:
        return f"the constraints allow no retraining; all frozen (PTQ) loses {loss:.2f} points against FP32"
    return (f"{beaten} within the proxy budget ({proxy_steps} steps per trial); PTQ loses {loss:.2f} points "
            f"against FP32 ({how}): more --proxy-steps or --trials, or full QAT (autoselect train), may recover "
            f"them")
