"""The profile's fidelity (autoselect.search.fidelity): per-group QAT benefit recovered from trials, and the
Spearman of each profile metric against it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from autoselect.search.fidelity import group_benefit, profile_fidelity
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fidelity_interval_widens_when_the_trials_are_noise(seed):
    groups = _groups()
    rows = pd.DataFrame([{"path": layer, "local_drift": 1.0 + TRUE.get(g.name, 0.0)} for g in groups
                         for layer in g.layers])
    width = []
    for noise in (0.05, 10.0):  # gains clean, then buried in noise 3-50 times their size
        lo, hi = profile_fidelity(rows, groups, _trials(seed=seed, n=12, noise=noise))["interval"]["local_drift"]
        width.append(hi - lo)
    assert width[0] <= 0.25 and width[1] >= 0.8
