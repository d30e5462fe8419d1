"""Real integer models: ONNX with QuantizeLinear/DequantizeLinear, run by onnxruntime's integer kernels.

1. the deploy model (:mod:`autoselect.export.deploy`) is exported to FP32 ONNX (``torch.onnx``, dynamo exporter);
2. onnxruntime's static quantizer inserts QDQ pairs around every Conv/Gemm (inputs, weights, outputs) in the
   QDQ format its CPU kernels fuse into ``QLinearConv``/``QGemm``; every layer's input and output are forced onto
   the exact grids the simulation used (``TensorQuantOverrides``: our scales and zero-points — deployable targets
   simulate the output requantization too), weights are quantized with the target's granularity and symmetry
   (symmetric min-max, the same grid as ours), and FP32 layers are excluded;
3. anything left unquantized by the simulation (a layer kept in FP32) is excluded from quantization;
4. a block input the simulation quantizes once for all its readers is read quantized by every op, pools included.

onnxruntime is imported lazily: ``import autoselect`` never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.data.batches import split_batch
from autoselect.errors import AutoselectError, first_line
from autoselect.export.deploy import deploy_model
from autoselect.quant.simulate import fuses_activations, quant_layers, shared_input_layers
from autoselect.quant.targets import get_target

__all__ = ["ExportResult", "export_fp32_onnx", "export"]


@dataclass
class ExportResult:
    fp32_path: Path
    int8_path: Path
    fp32_bytes: int
    int8_bytes: int
    quantized_layers: int
    fp32_layers: list[str]
    # tensors onnxruntime quantized on a range it calibrated itself, which the simulation does not have (QDQ only;
    # empty when the export computes what the simulation computes, up to integer rounding)
    unsimulated_grids: list[str] = field(default_factory=list)


def export_fp32_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Export a float model with a dynamic batch dimension (input ``input``, output ``logits``)."""
    import onnx

    example = torch.zeros(input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "model.onnx"
        try:
            torch.onnx.export(model.cpu().eval(), (example,), str(raw), dynamo=True, opset_version=18,
                              input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
                              verbose=False)
        except Exception as exc:  # noqa: BLE001 - exporter failures are many; name the model's problem
            raise AutoselectError(f"ONNX export failed: {first_line(exc)}") from None
        proto = onnx.load(str(raw))  # pulls in weights the exporter may have put in an external .data file
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return Path(path)


class _Reader:
    """onnxruntime CalibrationDataReader over our batches (numpy, CPU)."""

    def __init__(self, data: Iterable, limit: int | None) -> None:
        self._batches = []
        n = 0
        for batch in data:
            x, _ = split_batch(batch)
            self._batches.append(x.detach().cpu().numpy().astype(np.float32))
            n += len(x)
            if limit is not None and n >= limit:
                break
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"input": x}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _layer_nodes(graph: Any) -> dict[str, Any]:
    """Layer path → its Conv/Gemm node in ``graph`` (an ONNX GraphProto), found by the ``<path>.weight``
    initializer the node consumes."""
    inits = {i.name for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            name = node.input[1]
            for suffix in (".layer.weight", ".weight"):  # a SmoothedLayer keeps its conv at <path>.layer
                if name.endswith(suffix):
                    out[name[: -len(suffix)]] = node
                    break
    return out


def _activation_grids(graph: Any, overrides: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Give every ReLU/ReLU6 node the grids the simulation has around it; returns the names of those left without a
    grid on their output, to be kept in float.

    - A grid that starts at zero (unsigned, zero-point 0) on one side of a ReLU/ReLU6 and none on the other is put on
      both: the simulation quantizes once, after the activation, which is what that grid computes on either side (it
      clamps at zero and at its top). This covers an Add's output before a residual block's ReLU, and a layer whose
      output grid is observed after its ReLU because a pool or a concatenation reads it.
    - A ReLU whose output still has no grid feeds no quantized layer (a concatenation, a pool, the model's output)
      and is not quantized in the simulation: quantizing it on a range onnxruntime calibrated itself would requantize
      values the simulation keeps."""

    def zero_based(grid: list[dict[str, Any]] | None) -> bool:
        return grid is not None and len(grid) == 1 and "axis" not in grid[0] \
            and grid[0]["quant_type"].name == "QUInt8" and int(grid[0]["zero_point"]) == 0

    float_nodes = []
    for node in graph.node:
        if node.op_type not in ("Relu", "Clip"):
            continue
        src, dst = node.input[0], node.output[0]
        if zero_based(overrides.get(dst)) and src not in overrides:
            overrides[src] = overrides[dst]
        elif zero_based(overrides.get(src)) and dst not in overrides:
            overrides[dst] = overrides[src]
        if dst not in overrides:
            float_nodes.append(node.name)
    return float_nodes


def _override(symmetric: bool, scale: torch.Tensor, zp: torch.Tensor) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    return {"quant_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
            "scale": np.array(scale.item(), dtype=np.float32),
            "zero_point": np.array(int(zp), dtype=np.int8 if symmetric else np.uint8)}


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _no_preprocessing_advice() -> Iterator[None]:
    """onnxruntime's quantizer logs, on the root logger, advice to run its pre-processing first; we do not, on
    purpose (it rewrites the graph whose tensor names our overrides are keyed by), so the advice is dropped."""
    root = logging.getLogger()
    if not root.handlers:  # logging.warning() would add a stderr handler of its own for the advice
        root.addHandler(logging.NullHandler())
    drop = _DropAdvice()
    for h in root.handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in root.handlers:
            h.removeFilter(drop)


def export(
    qmodel: nn.Module,
    calibration: Iterable,
    out_dir: str | Path,
    *,
    target: str | None = None,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    calibration_images: int | None = 1024,
    quant_format: str = "qdq",
) -> ExportResult:
    """Write ``model_fp32.onnx`` and ``model_int8.onnx`` to ``out_dir``; returns paths and sizes.

    ``quant_format``: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs, fused by onnxruntime when the session is
    created) or ``"qoperator"`` (QLinearConv etc. written out directly).
    """
    if quant_format not in ("qdq", "qoperator"):
        raise AutoselectError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    plan = getattr(qmodel, "autoselect_plan", None)
    tgt = get_target(target or (plan.target if plan is not None else "x86"))
    if tgt.name.startswith("generic") or not tgt.runs_here:
        raise AutoselectError(f"target {tgt.name} has no integer kernels here; export for x86 or qnnpack")
    layers = quant_layers(qmodel)
    for path, ql in layers.items():
        if ql.spec is not None and ql.spec.weight is not None and ql.spec.weight.bits not in tgt.weight_bits:
            bits = "/".join(map(str, tgt.weight_bits))
            raise AutoselectError(f"layer {path} has {ql.spec.weight.bits}-bit weights; {tgt.name} runs {bits}-bit "
                                  "only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32_path = export_fp32_onnx(deploy_model(qmodel), out / "model_fp32.onnx", input_shape)
    fp32_graph = onnx.load(str(fp32_path)).graph
    nodes = _layer_nodes(fp32_graph)
    missing = sorted(set(layers) - set(nodes))
    if missing:
        raise AutoselectError(f"exported graph lost layer {missing[0]!r} ({len(missing)} in all)")
    overrides: dict[str, list[dict[str, Any]]] = {}
    exclude, fp32_layers = [], []
    folded = {ql.smooth_folded_into: ql.smooth_scale for ql in layers.values()
              if ql.smooth_folded_into is not None and ql.smooth_scale is not None}
    for path, ql in layers.items():
        node = nodes[path]
        if ql.spec is None:
            exclude.append(node.name)
            fp32_layers.append(path)
            continue
        act_scale, act_zp = ql.act_qparams()
        for tensor, tq, scale, zp in ((node.input[0], ql.spec.act, act_scale, act_zp),
                                      (node.output[0], ql.spec.output, ql.out_scale, ql.out_zero_point)):
            if tq is not None:
                overrides[tensor] = [_override(tq.symmetric, scale, zp)]
        if ql.spec.weight is not None:  # the weights' exact grid too, channel by channel
            w_scale, w_zp = ql.weight_qparams()
            if path in folded:  # the consumer's smoothing scale is folded into these weights (per channel)
                w_scale = w_scale.reshape(-1) * folded[path].reshape(-1).to(w_scale)
            sym = ql.spec.weight.symmetric
            per_channel = [_override(sym, s_, z_) for s_, z_ in zip(w_scale.reshape(-1).cpu(), w_zp.reshape(-1).cpu())]
            if ql.spec.weight.per_channel:
                per_channel[0]["axis"] = 0  # onnxruntime reads a list without "axis" as per-tensor
            overrides[node.input[1]] = per_channel
    exclude += _activation_grids(fp32_graph, overrides)
    shared = {nodes[path].input[0] for path in shared_input_layers(qmodel)}
    int8_path = out / "model_int8.onnx"
    with atomic_path(int8_path) as tmp, _no_preprocessing_advice():
        quantize_static(
            str(fp32_path), str(tmp), _Reader(calibration, calibration_images),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=["Conv", "Gemm", "Clip", "Relu"],
            per_channel=tgt.weight_per_channel, reduce_range=False,
            activation_type=QuantType.QInt8 if tgt.act_symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            extra_options={"WeightSymmetric": tgt.weight_symmetric, "ActivationSymmetric": tgt.act_symmetric,
                           "TensorQuantOverrides": overrides, "QDQDisableWeightAdjustForInt32Bias": True,
                           # a signed activation grid cannot absorb ReLU/ReLU6: keep the Clip (as simulated)
                           "QDQKeepRemovableActivations": not fuses_activations(ql.spec for ql in layers.values()),
                           "DedicatedQDQPair": True,
                           # fully connected layers write float, as simulated (see simulate._float_gemm_output)
                           "OpTypesToExcludeOutputQuantization": ["Gemm"]},
        )
        unsimulated: list[str] = []
        if quant_format == "qdq":  # the QDQ graph, read once: rewired where needed, then checked
            proto = onnx.load(str(tmp))
            if shared and _read_shared_inputs_quantized(proto.graph, shared):
                onnx.save_model(proto, str(tmp))
            unsimulated = _unsimulated_grids(proto.graph, overrides)
    return ExportResult(fp32_path=fp32_path, int8_path=int8_path, fp32_bytes=fp32_path.stat().st_size,
                        int8_bytes=int8_path.stat().st_size, quantized_layers=len(layers) - len(fp32_layers),
                        fp32_layers=fp32_layers, unsimulated_grids=unsimulated)


def _read_shared_inputs_quantized(graph: Any, tensors: set[str]) -> int:
    """Make every op that reads one of ``tensors`` (block inputs the simulation quantizes once for all their readers,
    see ``quantize_model(integer_graph=True)``) read its quantized values. onnxruntime's QDQ quantizer does so only
    when a single quantized node reads the tensor; with several (an inception block's branches), each quantized
    reader gets a pair of its own and the others (the pool of a GoogLeNet branch) read the float tensor, which the
    simulation never has. Returns the inputs rewired."""
    q_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    dequantized: dict[str, str] = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and q_input.get(n.input[0]) in tensors:
            dequantized.setdefault(q_input[n.input[0]], n.output[0])
    rewired = 0
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            continue
        for i, name in enumerate(n.input):
            if name in dequantized:
                n.input[i] = dequantized[name]
                rewired += 1
    if rewired:
        _sort_topologically(graph)
    return rewired


def _sort_topologically(graph: Any) -> None:
    """Order ``graph.node`` so that every node comes after the producers of its inputs (ONNX requires it)."""
    ready = {"", *(i.name for i in graph.input), *(i.name for i in graph.initializer)}
    pending, ordered = list(graph.node), []
    while pending:  # the quantizer's order is nearly topological already: a pass or two
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise AutoselectError("exported graph has a cycle or an input nothing produces")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _unsimulated_grids(graph: Any, overrides: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Tensors the QDQ model (``graph``, an ONNX GraphProto) quantizes that have no grid from the simulation."""
    return sorted({n.input[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in overrides})
