"""Training: the FP32 baseline (selective QAT comes with plans)."""

from __future__ import annotations

from autoselect.train.baseline import BaselineResult, train_baseline

__all__ = ["BaselineResult", "train_baseline"]
