"""``export_and_measure``: export a quantized model, then score and time the integer model next to its simulation
and its FP32 original, and write ``export.json`` — what ``autoselect export`` prints, for Python users too."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.evaluate import accuracy
from autoselect.export.onnx_export import export
from autoselect.export.runtime import latency_by_threads, ort_accuracy

__all__ = ["export_and_measure"]


def export_and_measure(qmodel: nn.Module, calibration: Iterable, test: Iterable, out_dir: str | Path, *,
                       input_shape: tuple[int, ...], latency_runs: int = 200,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model_fp32.onnx``, ``model_int8.onnx`` and ``export.json`` (with ``extra`` merged in) to
    ``out_dir``; return that summary: sizes, simulated and onnxruntime top-1 on ``test`` (a re-iterable of
    labelled batches), and batch latency of both models at 1 thread and at every core."""
    out = Path(out_dir)
    res = export(qmodel, calibration, out, input_shape=input_shape)
    sim = accuracy(qmodel, test)
    real = ort_accuracy(res.int8_path, test)
    batch1 = (1, *input_shape[1:])
    lat = latency_by_threads({"fp32": res.fp32_path, "int8": res.int8_path}, batch1, runs=latency_runs)
    best = {k: min(v.items(), key=lambda item: item[1])[0] for k, v in lat.items()}  # each at its fastest count
    fp32_ms, int8_ms = lat["fp32"][best["fp32"]], lat["int8"][best["int8"]]
    summary = {**(extra or {}),
               "fp32_onnx": str(res.fp32_path), "int8_onnx": str(res.int8_path), "fp32_bytes": res.fp32_bytes,
               "int8_bytes": res.int8_bytes, "simulated_top1": sim, "int8_top1": real,
               "fp32_latency_ms": fp32_ms, "int8_latency_ms": int8_ms, "latency_threads": best,
               "latency_ms_by_threads": lat, "int8_over_fp32": int8_ms / fp32_ms,
               "int8_over_fp32_one_thread": lat["int8"][1] / lat["fp32"][1], "fp32_layers": res.fp32_layers}
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
