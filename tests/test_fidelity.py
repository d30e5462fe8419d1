"""The profile's fidelity (autoselect.search.fidelity): per-group QAT benefit recovered from trials, and the
Spearman of each profile metric against it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from autoselect.search.fidelity import gain_errors, group_benefit, profile_fidelity
from autoselect.search.noise import pack, unpack
from autoselect.space import Group

TRUE = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.2}


def _groups() -> list[Group]:
    groups = [Group(name=n, layers=(f"{n}.0", f"{n}.1"), roles=("x", "x"), params=10, choices=("freeze", "qat"))
              for n in TRUE]
    return groups + [Group(name="never", layers=("never.0",), roles=("x",), params=10, choices=("freeze", "qat"))]


def _trials(seed: int = 0, n: int = 24, noise: float = 0.05) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"state": "pruned", "top1": 0.0, "ptq_top1": 0.0, "params": "{}"}]  # not a measurement
    for _ in range(n):
        on = {g: bool(rng.random() < 0.5) for g in TRUE}
        gain = sum(TRUE[g] for g, v in on.items() if v) + noise * rng.standard_normal()
        params = {f"{g}.action": "qat" if v else "freeze" for g, v in on.items()} | {"never.action": "freeze"}
        rows.append({"state": "complete", "top1": 70.0 + gain, "ptq_top1": 70.0, "params": json.dumps(params)})
    return pd.DataFrame(rows)


def test_group_benefit_recovers_each_groups_gain_and_leaves_unvaried_groups_unmeasured():
    table = group_benefit(_trials(), _groups()).set_index("group")
    assert table.loc["never", "retrained_in"] == 0 and np.isnan(table.loc["never", "benefit"])
    assert (table["trials"] == 24).all()  # the pruned trial is not counted
    for g, b in TRUE.items():
        assert table.loc[g, "benefit"] == pytest.approx(b, abs=0.35)  # ridge shrinks a little toward 0


def test_profile_fidelity_scores_a_metric_that_ranks_like_the_benefit_high_and_one_that_inverts_it_low():
    groups = _groups()
    rows = []
    for g in groups:
        good = TRUE.get(g.name, 0.0)
        for layer in g.layers:  # group sums: local_drift in the benefit's order, qmse in the opposite one
            rows.append({"path": layer, "local_drift": 1.0 + good, "qmse": 10.0 - good, "drift": 1.0})
    fid = profile_fidelity(pd.DataFrame(rows), groups, _trials())
    assert fid["groups"] == 4 and fid["trials"] == 24
    assert fid["spearman"]["local_drift"] == pytest.approx(1.0)
    assert fid["spearman"]["qmse"] == pytest.approx(-1.0)
    assert fid["spearman"]["drift"] is None  # constant over the groups: no ranking to score
    lo, hi = fid["interval"]["local_drift"]
    assert 0.5 < lo <= 1.0 and hi == pytest.approx(1.0)  # 24 clean trials: a tight interval


N_IMAGES = 2000


def _with_images(trials: pd.DataFrame, swapped: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-image results for the trials: PTQ gets the first 70% right; each trial wins its gain's worth of images
    on top, and besides swaps ``swapped`` images each way (it gets as many new images right as it loses)."""
    ptq = np.arange(N_IMAGES) < 0.7 * N_IMAGES
    out = []
    for top1 in trials["top1"]:
        hits = ptq.copy()
        won = int(round((top1 - 70.0) * N_IMAGES / 100))
        hits[int(0.7 * N_IMAGES): int(0.7 * N_IMAGES) + max(0, won) + swapped] = True
        hits[:swapped] = False
        out.append(pack(hits))
    return trials.assign(val_correct=out), ptq


def test_fidelity_interval_is_wide_when_the_validation_images_cannot_resolve_the_gains():
    """The same trials, the same top-1: when each trial disagrees with PTQ on few images its gain is measured
    precisely and the interval is narrow; when it swaps hundreds of images each way, a gain of 1-3 points is within
    its error, and the interval says so."""
    groups = _groups()
    rows = pd.DataFrame([{"path": layer, "local_drift": 1.0 + TRUE.get(g.name, 0.0)} for g in groups
                         for layer in g.layers])
    width = []
    for swapped in (0, 600):
        trials, ptq = _with_images(_trials(n=16), swapped)
        fid = profile_fidelity(rows, groups, trials, ptq_correct=ptq)
        assert fid["spearman"]["local_drift"] == pytest.approx(1.0)  # the point estimate does not see the noise
        lo, hi = fid["interval"]["local_drift"]
        width.append(hi - lo)
    assert width[0] <= 0.25 and width[1] >= 0.75  # (Spearman over 4 groups moves in steps of 0.2)


def test_gain_errors_are_paired_against_ptq_else_binomial():
    trials, ptq = _with_images(_trials(n=3), 100)
    paired = gain_errors(trials, ptq)
    done = trials[trials["state"] == "complete"]
    for se, v in zip(paired, done["val_correct"]):
        assert se == pytest.approx(100 * np.sqrt(np.sum(unpack(v) != ptq)) / N_IMAGES)
    alone = gain_errors(trials, None)
    p = (done["top1"] / 100).to_numpy()
    np.testing.assert_allclose(alone, 100 * np.sqrt(p * (1 - p) / N_IMAGES), atol=0.01)
