"""``export_and_measure``: export a quantized model, then score and time the integer model next to its simulation
and its FP32 original, and write ``export.json`` — what ``autoselect export`` prints, for Python users too.

Besides top-1 against the labels, it reports **per-image agreement** (the share of images with the same predicted
class, label-free): the exported INT8 model against the simulation, and each against the FP32 model. A gap in
top-1 can hide many disagreements that cancel; agreement does not. ``warnings`` lists what the user should not
miss: the export agreeing with the simulation on fewer than :data:`AGREEMENT_WARNING` % of the images, INT8 slower
than FP32.

Below that threshold the report also measures the **floor of float rounding**: the simulation computed in float64
against itself in float32, on the same images (``simulated_float64_vs_float32``), and the export against the float64
simulation (``int8_vs_simulated_float64``). Integer kernels accumulate exactly, the simulation in float32; on a
model with many near-ties (large inputs, a quantization error near the signal's size) rounding alone flips
predictions, and the warning then says whether the export is further from the simulation than that floor (more
than twice its flips, plus one image: a bug to report) or within it (measured in experiments/RESULTS.md, issue 18).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.evaluate import float64_logits, predict
from autoselect.export.onnx_export import export
from autoselect.export.runtime import latency_by_threads, ort_predictions
from autoselect.quant.targets import cpu_facts, resolve_target

__all__ = ["AGREEMENT_WARNING", "export_and_measure"]

AGREEMENT_WARNING = 99.0  # % of images on which the export and the simulation must predict the same class


def _pct(mask: np.ndarray) -> float:
    return 100.0 * float(mask.mean()) if len(mask) else float("nan")


def export_and_measure(qmodel: nn.Module, calibration: Iterable, test: Iterable, out_dir: str | Path, *,
                       input_shape: tuple[int, ...], latency_runs: int = 200,
                       extra: dict[str, Any] | None = None, fp32_model: nn.Module | None = None) -> dict[str, Any]:
    """Write ``model_fp32.onnx``, ``model_int8.onnx`` and ``export.json`` (with ``extra`` merged in) to
    ``out_dir``; return that summary: sizes, simulated and onnxruntime top-1 on ``test`` (a re-iterable of
    labelled batches), per-image agreement of the INT8 model with the simulation (and of both with ``fp32_model``,
    the original float model, when given), batch latency of both models at 1 thread and at every core, and
    ``warnings``."""
    out = Path(out_dir)
    res = export(qmodel, calibration, out, input_shape=input_shape)
    sim_logits, labels = predict(qmodel.cpu(), test)
    sim_pred = sim_logits.argmax(1).numpy()
    int8_pred = ort_predictions(res.int8_path, test)
    truth = labels.numpy() if labels is not None else None  # top-1 needs labels; agreement does not
    sim, real = (float("nan"), float("nan")) if truth is None else (_pct(sim_pred == truth), _pct(int8_pred == truth))
    agreement = {"int8_vs_simulated": _pct(int8_pred == sim_pred)}
    if fp32_model is not None:
        fp32_pred = predict(fp32_model.cpu(), test)[0].argmax(1).numpy()
        agreement.update({"int8_vs_fp32": _pct(int8_pred == fp32_pred),
                          "simulated_vs_fp32": _pct(sim_pred == fp32_pred)})
    batch1 = (1, *input_shape[1:])
    lat = latency_by_threads({"fp32": res.fp32_path, "int8": res.int8_path}, batch1, runs=latency_runs)
    best = {k: min(v.items(), key=lambda item: item[1])[0] for k, v in lat.items()}  # each at its fastest count
    fp32_ms, int8_ms = lat["fp32"][best["fp32"]], lat["int8"][best["int8"]]
    warnings = []
    if agreement["int8_vs_simulated"] < AGREEMENT_WARNING:
        sim64_pred = float64_logits(qmodel, test).argmax(1).numpy()
        agreement.update({"simulated_float64_vs_float32": _pct(sim64_pred == sim_pred),
                          "int8_vs_simulated_float64": _pct(int8_pred == sim64_pred)})
        floor = agreement["simulated_float64_vs_float32"]
        # a count of near-tie flips is itself noisy: at the floor means at most twice its flips, plus one image
        within = int((int8_pred != sim_pred).sum()) <= 2 * int((sim64_pred != sim_pred).sum()) + 1
        why = (f"the simulation computed in float64 agrees with itself in float32 on {floor:.1f}%, so float rounding "
               f"alone flips as many near-tie images: the export is at that floor" if within else
               f"float rounding alone flips fewer (the simulation in float64 agrees with itself in float32 on "
               f"{floor:.1f}%): the simulated accuracy does not describe the exported model")
        warnings.append(f"the INT8 model predicts what the simulation predicts on only "
                        f"{agreement['int8_vs_simulated']:.1f}% of {len(sim_pred)} images (below "
                        f"{AGREEMENT_WARNING:g}%); {why}")
    if res.unsimulated_grids:
        names = ", ".join(res.unsimulated_grids[:3]) + (", ..." if len(res.unsimulated_grids) > 3 else "")
        warnings.append(f"onnxruntime quantized {len(res.unsimulated_grids)} tensor(s) on ranges the simulation "
                        f"does not have ({names}): the export requantizes where the simulation does not")
    cpu = cpu_facts()
    target = getattr(getattr(qmodel, "autoselect_plan", None), "target", None)
    if target is not None and resolve_target(target)[0] == "x86-vnni" and cpu["x86_target"] != "x86-vnni":
        warnings.append("exported for x86-vnni (8-bit weights and activations), but this CPU has no VNNI: its int8 "
                        "kernels may saturate 16-bit sums; export for x86-avx2 to run here")
    if int8_ms > fp32_ms:
        warnings.append(f"INT8 is slower than FP32 here ({int8_ms:.3f} ms against {fp32_ms:.3f} ms at batch 1, each "
                        "at its fastest thread count)")
    summary = {**(extra or {}),
               "fp32_onnx": str(res.fp32_path), "int8_onnx": str(res.int8_path), "fp32_bytes": res.fp32_bytes,
               "int8_bytes": res.int8_bytes, "simulated_top1": sim, "int8_top1": real,
               "agreement": agreement, "agreement_images": len(sim_pred), "warnings": warnings, "measured_on": cpu,
               "fp32_latency_ms": fp32_ms, "int8_latency_ms": int8_ms, "latency_threads": best,
               "latency_ms_by_threads": lat, "int8_over_fp32": int8_ms / fp32_ms,
               "int8_over_fp32_one_thread": lat["int8"][1] / lat["fp32"][1], "fp32_layers": res.fp32_layers,
               "unsimulated_grids": res.unsimulated_grids}
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
