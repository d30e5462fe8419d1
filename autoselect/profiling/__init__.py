"""The sensitivity profiler and its report."""

from __future__ import annotations

from autoselect.profiling.profiler import ISOLATED_METRICS, LAYER_METRICS, check_rank_by, profile
from autoselect.profiling.report import REPORT_VERSION, SensitivityReport

__all__ = ["ISOLATED_METRICS", "LAYER_METRICS", "REPORT_VERSION", "SensitivityReport", "check_rank_by", "profile"]
