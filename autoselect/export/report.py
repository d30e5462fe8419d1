"""``export_and_measure``: export a quantized model, then score and time the integer model next to its simulation
and its FP32 original, and write ``export.json`` — what ``autoselect export`` prints, for Python users too.

Besides top-1 against the labels, it reports **per-image agreement** (the share of images with the same predicted
class, label-free): the exported INT8 model against the simulation, and each against the FP32 model. A gap in
top-1 can hide many disagreements that cancel; agreement does not.

The simulation it compares with is computed with the integer kernels' arithmetic
(:func:`autoselect.quant.integer.integer_arithmetic`: exact int32 sums, float32 requantization, onnxruntime's
QLinearAdd, Sigmoid and ReduceMean): the same quantized model, rounded as the export rounds it, so the two agree
image by image, and usually bit for bit. The float32 simulation (what training and ``ptq`` report) is compared too
(``int8_vs_simulated_float32``): on a model with many near-ties (large inputs, a quantization error close to the
signal's size) float rounding alone flips a few percent of its predictions (experiments/RESULTS.md, issue 18).

``warnings`` lists what the user should not miss: the export agreeing with the simulation on fewer than
:data:`AGREEMENT_WARNING` % of the images (a bug), the float32 simulation predicting differently from the export on
as many (its accuracy then does not describe the exported model; ``simulated_integer_top1`` does), INT8 slower than
FP32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.evaluate import predict
from autoselect.export.onnx_export import export
from autoselect.export.runtime import latency_by_threads, ort_predictions
from autoselect.quant.integer import integer_arithmetic
from autoselect.quant.targets import cpu_facts, resolve_target

__all__ = ["AGREEMENT_WARNING", "export_and_measure"]

AGREEMENT_WARNING = 99.0  # % of images on which the export and the simulation must predict the same class


def _pct(mask: np.ndarray) -> float:
    return 100.0 * float(mask.mean()) if len(mask) else float("nan")


def _integer_logits(qmodel: nn.Module, test: Iterable) -> np.ndarray:
    """The simulation's logits computed with the integer kernels' arithmetic."""
    with integer_arithmetic(qmodel):
        return predict(qmodel, test)[0].numpy()


def export_and_measure(qmodel: nn.Module, calibration: Iterable, test: Iterable, out_dir: str | Path, *,
                       input_shape: tuple[int, ...], latency_runs: int = 200,
                       extra: dict[str, Any] | None = None, fp32_model: nn.Module | None = None) -> dict[str, Any]:
    """Write ``model_fp32.onnx``, ``model_int8.onnx`` and ``export.json`` (with ``extra`` merged in) to
    ``out_dir``; return that summary: sizes, simulated (float32 and integer arithmetic) and onnxruntime top-1
    on ``test`` (a re-iterable of labelled batches), per-image agreement of the INT8 model with the simulation
    (and of both with ``fp32_model``, the original float model, when given), batch latency of both models at 1
    thread and at every core, and ``warnings``."""
    out = Path(out_dir)
    res = export(qmodel, calibration, out, input_shape=input_shape)
    sim32_logits, labels = predict(qmodel.cpu(), test)
    sim32_pred = sim32_logits.argmax(1).numpy()
    sim_pred = _integer_logits(qmodel, test).argmax(1)
    int8_pred = ort_predictions(res.int8_path, test)
    truth = labels.numpy() if labels is not None else None  # top-1 needs labels; agreement does not
    top1 = {k: float("nan") if truth is None else _pct(p == truth)
            for k, p in (("sim32", sim32_pred), ("sim", sim_pred), ("int8", int8_pred))}
    agreement = {"int8_vs_simulated": _pct(int8_pred == sim_pred),
                 "int8_vs_simulated_float32": _pct(int8_pred == sim32_pred)}
    if fp32_model is not None:
        fp32_pred = predict(fp32_model.cpu(), test)[0].argmax(1).numpy()
        agreement.update({"int8_vs_fp32": _pct(int8_pred == fp32_pred),
                          "simulated_vs_fp32": _pct(sim_pred == fp32_pred),
                          "simulated_float32_vs_fp32": _pct(sim32_pred == fp32_pred)})
    batch1 = (1, *input_shape[1:])
    lat = latency_by_threads({"fp32": res.fp32_path, "int8": res.int8_path}, batch1, runs=latency_runs)
    best = {k: min(v.items(), key=lambda item: item[1])[0] for k, v in lat.items()}  # each at its fastest count
    fp32_ms, int8_ms = lat["fp32"][best["fp32"]], lat["int8"][best["int8"]]
    warnings = []
    n = len(sim_pred)
    if agreement["int8_vs_simulated"] < AGREEMENT_WARNING:
        warnings.append(f"the INT8 model predicts what the simulation predicts (computed with the integer kernels' "
                        f"arithmetic) on only {agreement['int8_vs_simulated']:.1f}% of {n} images (below "
                        f"{AGREEMENT_WARNING:g}%): the export does not compute what the simulation computes; please "
                        "report it")
    elif agreement["int8_vs_simulated_float32"] < AGREEMENT_WARNING:
        warnings.append(f"the float32 simulation (what training and ptq report) predicts what the INT8 model predicts "
                        f"on only {agreement['int8_vs_simulated_float32']:.1f}% of {n} images: float rounding flips "
                        f"near-ties on this model, so its accuracy ({top1['sim32']:.2f}%) does not describe the "
                        f"exported model; the integer arithmetic's does ({top1['sim']:.2f}%)")
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
               "int8_bytes": res.int8_bytes, "simulated_top1": top1["sim32"],
               "simulated_integer_top1": top1["sim"], "int8_top1": top1["int8"],
               "agreement": agreement, "agreement_images": n, "warnings": warnings, "measured_on": cpu,
               "fp32_latency_ms": fp32_ms, "int8_latency_ms": int8_ms, "latency_threads": best,
               "latency_ms_by_threads": lat, "int8_over_fp32": int8_ms / fp32_ms,
               "int8_over_fp32_one_thread": lat["int8"][1] / lat["fp32"][1], "fp32_layers": res.fp32_layers,
               "unsimulated_grids": res.unsimulated_grids}
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
