"""Post-training quantization accuracy: FP32 vs simulated INT8 schemes on the same data, with the cost of each."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from autoselect.evaluate import predict
from autoselect.models.graph import LayerGraph
from autoselect.quant.simulate import calibrate, quantize_model
from autoselect.quant.spec import QuantSpec

__all__ = ["PTQRow", "evaluate_ptq", "ptq_table"]


@dataclass
class PTQRow:
    """One scheme's result: top-1 (%), the share of images whose prediction matches FP32's (%, label-free: it
    means something for any model on any data), seconds of calibration including the post-training methods, and
    the seconds of each method (``equalize``, ``adaround``, ``bias_correction``...)."""

    name: str
    top1: float
    seconds: float = 0.0
    method_seconds: dict[str, float] = field(default_factory=dict)
    agreement: float = 100.0


def ptq_table(
    model: nn.Module,
    calibration: Iterable,
    evaluation: Iterable,
    schemes: Mapping[str, QuantSpec | Mapping[str, QuantSpec | None]],
    *,
    graph: LayerGraph | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    integer_graph: bool = False,
) -> list[PTQRow]:
    """FP32 first, then each named PTQ scheme (BN folded, calibrated on ``calibration``, its post-training methods
    applied), scored on ``evaluation``. ``calibration`` must be re-iterable when a scheme names a method.

    ``integer_graph`` simulates tensors shared by several ops as integer runtimes hold them (see
    :func:`autoselect.quant.quantize_model`); the CLI sets it for targets that run here, as ``apply_plan`` does.
    """
    model = model.to(device).eval()
    fp_logits, labels = predict(model, evaluation, device=device, progress=progress, desc="fp32")
    if labels is None:
        raise ValueError("ptq_table needs labelled evaluation batches")
    fp_pred = fp_logits.argmax(1)

    def percent(mask: torch.Tensor) -> float:
        return 100.0 * mask.float().mean().item()

    rows = [PTQRow("fp32", percent(fp_pred == labels))]
    for name, spec in schemes.items():
        qmodel = quantize_model(model, spec, graph=graph, integer_graph=integer_graph)
        t0 = time.perf_counter()
        calibrate(qmodel, calibration, device=device, progress=progress)
        seconds = time.perf_counter() - t0
        pred = predict(qmodel, evaluation, device=device, progress=progress, desc=name)[0].argmax(1)
        rows.append(PTQRow(name, percent(pred == labels), seconds,
                           dict(getattr(qmodel, "autoselect_method_seconds", {})), percent(pred == fp_pred)))
    return rows


def evaluate_ptq(
    model: nn.Module,
    calibration: Iterable,
    evaluation: Iterable,
    schemes: Mapping[str, QuantSpec | Mapping[str, QuantSpec | None]],
    **kw,
) -> dict[str, float]:
    """Top-1 (%) of the FP32 model and of each named PTQ scheme (see :func:`ptq_table`, which also times them)."""
    return {row.name: row.top1 for row in ptq_table(model, calibration, evaluation, schemes, **kw)}
