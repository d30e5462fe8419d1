"""Training: the FP32 baseline and selective QAT of a plan."""

from __future__ import annotations

from autoselect.train.baseline import BaselineResult, train_baseline
from autoselect.train.qat import QATConfig, QATResult, dampening_loss, train_qat

__all__ = ["BaselineResult", "QATConfig", "QATResult", "dampening_loss", "train_baseline", "train_qat"]
