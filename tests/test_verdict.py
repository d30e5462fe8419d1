"""The search's one-line verdict says what it measured."""

from __future__ import annotations

import pandas as pd

from autoselect.search.pareto import Constraints, verdict


def _row(top1: float, retrained: float) -> pd.Series:
    return pd.Series({"trial": 0, "top1": top1, "retrained": retrained, "latency": 1.0})


def test_frozen_winner_is_ptq_is_enough_only_when_ptq_is_close_to_fp32():
    c = Constraints(tolerance=0.5)
    close = verdict(_row(79.6, 0.0), fp32_top1=79.9, ptq_top1=79.6, constraints=c, proxy_steps=60)
    assert close.startswith("PTQ is enough") and "0.30 points" in close
    far = verdict(_row(82.0, 0.0), fp32_top1=91.8, ptq_top1=82.0, constraints=c, proxy_steps=60)
    assert "PTQ is enough" not in far
    assert "no trained plan beat PTQ" in far and "60 steps" in far and "9.80 points" in far
    forced = verdict(_row(82.0, 0.0), fp32_top1=91.8, ptq_top1=82.0, constraints=Constraints(max_retrained=0),
                     proxy_steps=60)
    assert "allow no retraining" in forced and "9.80 points" in forced


def test_trained_winner_names_its_fraction():
    v = verdict(_row(85.0, 0.125), fp32_top1=86.0, ptq_top1=80.0, constraints=Constraints(), proxy_steps=60)
    assert v.startswith("retrain 12.5% of the parameters") and "80.00% all frozen" in v
