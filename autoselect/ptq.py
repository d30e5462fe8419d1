"""Post-training quantization accuracy: FP32 vs simulated INT8 schemes on the same data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from autoselect.evaluate import accuracy
from autoselect.models.graph import LayerGraph
from autoselect.quant.simulate import calibrate, quantize_model
from autoselect.quant.spec import QuantSpec

__all__ = ["evaluate_ptq"]


def evaluate_ptq(
    model: nn.Module,
    calibration: Iterable,
    evaluation: Iterable,
    schemes: Mapping[str, QuantSpec | Mapping[str, QuantSpec | None]],
    *,
    graph: LayerGraph | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    integer_graph: bool = False,
) -> dict[str, float]:
    """Top-1 (%) of the FP32 model and of each named PTQ scheme (BN folded, calibrated on ``calibration``).

    ``integer_graph`` simulates tensors shared by several ops as integer runtimes hold them (see
    :func:`autoselect.quant.quantize_model`); the CLI sets it for targets that run here, as ``apply_plan`` does.
    """
    model = model.to(device).eval()
    results = {"fp32": accuracy(model, evaluation, device=device, progress=progress, desc="fp32")}
    for name, spec in schemes.items():
        qmodel = quantize_model(model, spec, graph=graph, integer_graph=integer_graph)
        calibrate(qmodel, calibration, device=device, progress=progress)
        results[name] = accuracy(qmodel, evaluation, device=device, progress=progress, desc=name)
    return results
