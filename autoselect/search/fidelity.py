"""The profile's own fidelity: how well each of its metrics predicts what retraining a group bought in the trials.

A search's trials retrain different sets of groups from the same post-training start. A group's **measured QAT
benefit** is its coefficient in a ridge regression of each complete trial's gain over its own PTQ start
(``top1 - ptq_top1``, validation points) on which groups it retrained (1 or 0 per group, no intercept: a plan that
retrains nothing gains nothing). Groups that every trial, or no trial, retrained have no measured benefit and are
left out. The other choices of a trial (bit-widths, smoothing) are not in the regression: they add noise.

Each profile metric (``local_drift``, ``drift``, ``qmse``, and the ``iso_*`` columns of an isolated profile) is
summed over a group's layers, as the prior does (:func:`autoselect.search.prior.group_sensitivity`), and compared
with the benefits by Spearman rank correlation over the groups. With a few dozen trials for tens of groups each
benefit is a noisy estimate, and so is each trial's gain (a few hundred validation images decide it): each
correlation comes with a bootstrap interval that resamples the trials and their gains' measurement error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from autoselect.search.noise import spearman, unpack
from autoselect.search.prior import QAT_ACTIONS, group_sensitivity
from autoselect.space import Group

__all__ = ["METRICS", "RIDGE", "gain_errors", "group_benefit", "profile_fidelity"]

METRICS = ("local_drift", "drift", "qmse", "iso_qkl", "iso_top1_drop")  # those present in a profile are scored
RESAMPLES = 200  # bootstrap resamples of the trials for the interval of each Spearman
RIDGE = 1.0  # ridge penalty, in squared points: shrinks the benefit of a group seldom varied toward 0


def _retrained(params: str, groups: Sequence[Group]) -> list[float]:
    p = json.loads(params)
    return [1.0 if p.get(f"{g.name}.action", g.untrained) in QAT_ACTIONS else 0.0 for g in groups]


def _design(done: pd.DataFrame, groups: Sequence[Group]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([_retrained(p, groups) for p in done["params"]], dtype=float).reshape(len(done), len(groups))
    return x, (done["top1"] - done["ptq_top1"]).to_numpy(dtype=float)


def _fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    counts = x.sum(0)
    varied = (counts > 0) & (counts < len(x))
    benefit = np.full(x.shape[1], np.nan)
    if varied.any():
        xv = x[:, varied]
        benefit[varied] = np.linalg.solve(xv.T @ xv + ridge * np.eye(xv.shape[1]), xv.T @ y)
    return benefit


def _table(groups: Sequence[Group], x: np.ndarray, y: np.ndarray, ridge: float) -> pd.DataFrame:
    return pd.DataFrame({"group": [g.name for g in groups], "params": [g.params for g in groups],
                         "retrained_in": x.sum(0).astype(int), "trials": len(x), "benefit": _fit(x, y, ridge)})


def group_benefit(trials: pd.DataFrame, groups: Sequence[Group], *, ridge: float = RIDGE) -> pd.DataFrame:
    """One row per group: ``retrained_in`` (complete trials that retrained it), ``trials`` and ``benefit`` (points
    of proxy top-1 the regression gives it; NaN where the trials never or always retrained it)."""
    return _table(groups, *_design(trials[trials["state"] == "complete"], groups), ridge)


def gain_errors(trials: pd.DataFrame, ptq_correct: np.ndarray | None) -> np.ndarray:
    """Each complete trial's standard error of its gain over PTQ, in points, from its per-image results
    (``val_correct``): paired against ``ptq_correct`` (the all-frozen plan's; ``sqrt(discordant) / n``), else
    binomial (``sqrt(p (1 - p) / n)``); 0 where a trial has none."""
    done = trials[trials["state"] == "complete"]
    out = np.zeros(len(done))
    if "val_correct" not in done:
        return out
    for i, v in enumerate(done["val_correct"]):
        if not isinstance(v, str):
            continue
        hits = unpack(v)
        n = len(hits)
        if ptq_correct is not None and len(ptq_correct) == n:
            out[i] = 100.0 * np.sqrt(np.sum(hits != ptq_correct)) / n
        else:
            p = hits.mean()
            out[i] = 100.0 * np.sqrt(p * (1 - p) / n)
    return out


def profile_fidelity(layers: pd.DataFrame, groups: Sequence[Group], trials: pd.DataFrame, *,
                     ptq_correct: np.ndarray | None = None, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman, over the groups with a measured benefit, of each profile metric (``layers``: the profile's
    ``layers.csv``) against :func:`group_benefit`, with a 90% bootstrap interval (``interval``): ``resamples`` times,
    the trials are drawn with replacement and each gain moved by a normal draw of its own measurement error
    (:func:`gain_errors`, paired against ``ptq_correct`` when given), so that gains the validation images cannot
    resolve give a wide interval. And the table behind it (``table``: one row per group)."""
    done = trials[trials["state"] == "complete"].reset_index(drop=True)
    x, y = _design(done, groups)
    table = _table(groups, x, y, RIDGE)
    sums = {}
    for metric in METRICS:
        if metric in layers.columns:
            scores = dict(zip(layers["path"], layers[metric].astype(float)))
            sums[metric] = table["group"].map(group_sensitivity(groups, scores))
            table[metric] = sums[metric]
    known = table["benefit"].notna()
    rhos = {m: spearman(v[known], table.loc[known, "benefit"]) for m, v in sums.items()}
    se = gain_errors(done, ptq_correct)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in sums}
    for _ in range(resamples if len(done) >= 3 else 0):
        idx = rng.integers(0, len(done), len(done))
        b = pd.Series(_fit(x[idx], y[idx] + rng.normal(0.0, 1.0, len(idx)) * se[idx], RIDGE))
        for m, v in sums.items():
            rho = spearman(v[b.notna()], b[b.notna()])
            if rho is not None:
                draws[m].append(rho)
    interval = {m: [float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))] if len(d) >= 10 else None
                for m, d in draws.items()}
    return {"spearman": rhos, "interval": interval, "groups": int(known.sum()), "trials": len(done),
            "table": table}


def describe(fidelity: dict[str, Any], rank_by: str) -> str:
    """One line for the search's output."""
    def one(m: str, v: float | None) -> str:
        ci = fidelity["interval"].get(m)
        return f"{m} {'-' if v is None else f'{v:+.2f}'}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")

    scored = ", ".join(one(m, v) for m, v in fidelity["spearman"].items())
    return (f"profile fidelity: Spearman of each metric with the groups' measured QAT benefit ({fidelity['groups']} "
            f"groups, {fidelity['trials']} trials; 90% bootstrap interval): {scored}; the prior ranks by {rank_by}")
