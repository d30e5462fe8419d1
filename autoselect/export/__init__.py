"""Export: real integer models (ONNX QDQ run by onnxruntime), their size, accuracy and latency.

Importing this package does not import onnxruntime; its functions do.
"""

from __future__ import annotations

from autoselect.export.deploy import SmoothedLayer, deploy_model
from autoselect.export.onnx_export import ExportResult, export, export_fp32_onnx
from autoselect.export.report import export_and_measure
from autoselect.export.runtime import latency_by_threads, ort_accuracy, ort_latency_ms, ort_session

__all__ = ["ExportResult", "SmoothedLayer", "deploy_model", "export", "export_and_measure", "export_fp32_onnx", "ort_accuracy",
           "latency_by_threads", "ort_latency_ms", "ort_session"]
