"""The sensitivity profiler: FP32 vs quantized activations of every layer and block, in two passes.

Pass 1 runs the BN-folded FP32 model over the calibration set, calibrating every activation quantizer at once and
keeping each layer's and block's output while they fit in ``cache_mb``. Pass 2 runs the quantized model and
compares, batch by batch:

- **drift** ``||A_fp32 - A_q|| / ||A_fp32||`` (seed 001) and **QMSE** of every layer output and block output —
  errors accumulated from the input up to there;
- **local drift**: the error a layer's own quantizers add, ``||L_q(x) - L(x)|| / ||L(x)||`` on the activation ``x``
  that reaches it in the quantized model. Accumulated drift mostly grows with depth; local drift says where it is
  made, which is why layers are ranked by it by default;
- activation range and average precision per layer input, weight statistics before/after BN folding, and QMSE,
  QCE, QKL-div and top-1 at the logits.

When the outputs do not fit, pass 2 reruns the FP32 model per batch (three passes instead of two). Optionally,
**isolated sensitivity** quantizes one layer at a time (one more pass per layer) and measures the logits' KL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.data.batches import split_batch
from autoselect.errors import AutoselectError
from autoselect.models.graph import LayerGraph, build_layer_graph
from autoselect.profiling.metrics import avg_precision_bits, output_metrics, weight_stats
from autoselect.profiling.report import SensitivityReport
from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import run_methods, run_transforms
from autoselect.quant.simulate import quant_layers, quantize_model, set_mode
from autoselect.quant.spec import QuantSpec, w8a8

__all__ = ["profile", "check_rank_by", "LAYER_METRICS", "ISOLATED_METRICS"]

LAYER_METRICS = ("local_drift", "drift", "qmse", "act_range", "act_avg_precision", "w_range", "w_range_unfolded",
                 "bn_fold_range_ratio", "w_channel_spread", "w_avg_precision", "params", "macs")
ISOLATED_METRICS = ("iso_qkl", "iso_agreement", "iso_top1_drop")


def check_rank_by(rank_by: str, *, isolated: bool) -> None:
    """Refuse an unknown ranking column before any pass is run."""
    allowed = LAYER_METRICS + (ISOLATED_METRICS if isolated else ())
    if rank_by not in allowed:
        extra = " (iso_* columns need isolated=True / --isolated)" if rank_by in ISOLATED_METRICS else ""
        raise AutoselectError(f"cannot rank by {rank_by!r}{extra}; choose one of {', '.join(allowed)}")


class _Tap:
    """Forward hooks on the measured modules: ``store`` keeps outputs, ``compare`` accumulates errors."""

    def __init__(self, modules: dict[str, nn.Module], local_fraction: float) -> None:
        self.mode = "off"
        self.local_fraction = local_fraction
        self.out: dict[str, torch.Tensor] = {}
        self.ref: dict[str, torch.Tensor] = {}
        self.acc: dict[str, list[float]] = {p: [0.0, 0.0, 0.0, 0.0, 0.0] for p in modules}  # d2, r2, n, ld2, lr2
        self.handles = [m.register_forward_hook(self._hook(p)) for p, m in modules.items()]

    def _hook(self, path: str):
        def fn(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.mode == "store":
                self.out[path] = output.detach().clone()  # a later in-place activation would change it
            elif self.mode == "compare":
                ref = self.ref[path]
                a = self.acc[path]
                a[0] += _sq(output - ref)
                a[1] += _sq(ref)
                a[2] += ref.numel()
                if isinstance(mod, QuantLayer) and mod.mode == "quant":
                    k = max(1, math.ceil(len(output) * self.local_fraction))
                    local = mod.layer(inputs[0][:k])
                    a[3] += _sq(output[:k] - local)
                    a[4] += _sq(local)

        return fn

    def take(self) -> dict[str, torch.Tensor]:
        out, self.out = self.out, {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _sq(t: torch.Tensor) -> float:
    """Squared L2 norm; a dot product is about 3x faster than ``pow(2).sum()`` on CPU."""
    flat = t.reshape(-1)
    return float(torch.dot(flat, flat))


def _reiterable(data: Iterable) -> Iterable:
    return data if iter(data) is not data else list(data)


TAP_BATCH_MB = 512  # the most one batch's stored outputs (every layer and block) may take


class _Rebatched:
    """``data`` with every batch cut into pieces of at most ``size`` images (re-iterable as ``data`` is)."""

    def __init__(self, data: Iterable, size: int) -> None:
        self.data, self.size = data, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for batch in self.data:
            x, y = split_batch(batch)
            for i in range(0, len(x), self.size):
                yield x[i : i + self.size], (y[i : i + self.size] if y is not None else None)


def _bounded(data: Iterable, tap: _Tap, qmodel: nn.Module, x0: torch.Tensor, device: torch.device) -> Iterable:
    """``data`` in batches whose stored layer outputs fit :data:`TAP_BATCH_MB` (at 224x224, MobileNetV2 stores
    about 90 MB per image: a batch of 128 would hold 12 GB)."""
    set_mode(qmodel, "fp32")
    tap.mode = "store"
    qmodel(x0[:1].to(device))
    per_image = max(1, _nbytes(tap.take()))
    tap.mode = "off"
    size = max(1, TAP_BATCH_MB * 2**20 // per_image)
    return data if size >= len(x0) else _Rebatched(data, size)


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def profile(
    model: nn.Module,
    data: Iterable,
    *,
    spec: QuantSpec | Mapping[str, QuantSpec | None] | None = None,
    graph: LayerGraph | None = None,
    isolated: bool = False,
    isolated_images: int | None = None,
    rank_by: str = "local_drift",
    device: torch.device | str = "cpu",
    cache_mb: int = 2048,
    local_fraction: float = 0.25,
    progress: bool = False,
    model_name: str = "",
    reuse: dict | None = None,
    effort: float = 1.0,
) -> SensitivityReport:
    """Profile ``model`` over ``data`` (re-iterable batches of ``x`` or ``(x, y)``) under ``spec`` (default W8A8).

    Returns a :class:`SensitivityReport` whose ``layers`` DataFrame is ranked by ``rank_by`` (any numeric column:
    ``local_drift``, ``drift``, ``qmse``, ``iso_qkl`` with ``isolated=True``, ...). Local drift is estimated on the
    first ``local_fraction`` of each batch: it needs one more FP32 run of each layer, the largest cost after the
    two passes themselves.

    Post-training methods the spec names (:mod:`autoselect.quant.methods`) are applied as :func:`calibrate` does:
    transforms (equalization) before the FP32 pass, which is then the equalized float model, the others after
    calibration; the quantized pass measures the result. Their seconds are in the report's timings
    (``method_<name>_s``). ``reuse``: learned roundings shared with later calibrations (``MethodContext.reuse``);
    ``effort``: the fraction of the learned methods' steps (``MethodContext.effort``).
    """
    if not 0.0 < local_fraction <= 1.0:
        raise AutoselectError(f"local_fraction must be in (0, 1], got {local_fraction}")
    check_rank_by(rank_by, isolated=isolated)
    t_setup = time.perf_counter()
    device = torch.device(device)
    data = _reiterable(data)
    spec = spec if spec is not None else w8a8()
    x0, _ = split_batch(next(iter(data)))
    model = model.to(device).eval()
    graph = graph or build_layer_graph(model, (1, *x0.shape[1:]))
    qmodel = quantize_model(model, spec, graph=graph, per_channel_stats=True)
    layers = quant_layers(qmodel)
    measured = {p: qmodel.get_submodule(p) for p in dict.fromkeys(graph.paths + graph.blocks)}
    tap = _Tap(measured, local_fraction)
    timings: dict[str, float] = {"setup_s": time.perf_counter() - t_setup}
    try:
        data = _bounded(data, tap, qmodel, x0, device)
        transform_seconds = run_transforms(qmodel, data, device=device, progress=progress)  # tap is "off"
        # pass 1: FP32 reference + calibration, keeping the outputs while they fit
        t0 = time.perf_counter()
        set_mode(qmodel, "observe")
        tap.mode = "store"
        cache: list[dict[str, torch.Tensor]] | None = []
        cached_bytes = 0
        fp_logits, labels = [], []
        for batch in tqdm(data, desc="profile: fp32 + calibrate", disable=not progress, leave=False):
            x, y = split_batch(batch)
            fp_logits.append(qmodel(x.to(device)).float().cpu())
            if y is not None:
                labels.append(y.cpu())
            outs = tap.take()
            if cache is not None:
                cache.append(outs)
                cached_bytes += _nbytes(outs)
                if cached_bytes > cache_mb * 2**20:
                    cache = None
        for layer in layers.values():
            layer.finish_calibration()
        timings["pass_fp32_calibrate_s"] = time.perf_counter() - t0
        tap.mode = "off"
        set_mode(qmodel, "quant")
        method_seconds = {**transform_seconds, **run_methods(qmodel, data, device=device, progress=progress,
                                                                  reuse=reuse, effort=effort)}
        timings.update({f"method_{name}_s": secs for name, secs in method_seconds.items()})
        # pass 2: quantized, compared batch by batch with the FP32 outputs
        t0 = time.perf_counter()
        q_logits = []
        for i, batch in enumerate(tqdm(data, desc="profile: quantized", disable=not progress, leave=False)):
            x, _ = split_batch(batch)
            x = x.to(device)
            if cache is None:
                set_mode(qmodel, "fp32")
                tap.mode = "store"
                qmodel(x)
                tap.ref = tap.take()
            else:
                tap.ref, cache[i] = cache[i], {}
            set_mode(qmodel, "quant")
            tap.mode = "compare"
            q_logits.append(qmodel(x).float().cpu())
        timings["pass_quant_s"] = time.perf_counter() - t0
        timings["reference_cached"] = float(cache is not None)
        tap.mode = "off"
        fp = torch.cat(fp_logits)
        lab = torch.cat(labels) if len(labels) == len(fp_logits) and labels else None
        output = output_metrics(fp, torch.cat(q_logits), lab)
        iso = _isolated(qmodel, data, graph, fp, lab, device, isolated_images, progress, timings) if isolated else {}
    finally:
        tap.close()
    layer_rows = _layer_rows(model, graph, layers, tap, iso)
    block_rows = _block_rows(graph, tap, layer_rows)
    return SensitivityReport.build(
        layer_rows, block_rows, output, rank_by=rank_by, spec=_describe(spec), model=model_name,
        timings=timings, input_shape=graph.input_shape, total_params=graph.total_params,
    )


def _describe(spec: QuantSpec | Mapping[str, QuantSpec | None]) -> str:
    if isinstance(spec, QuantSpec):
        return spec.describe()
    return "; ".join(f"{k}: {v.describe() if v else 'fp32'}" for k, v in spec.items())


def _isolated(qmodel: nn.Module, data: Iterable, graph: LayerGraph, fp: torch.Tensor, lab: torch.Tensor | None,
              device: torch.device, limit: int | None, progress: bool, timings: dict[str, float]) -> dict[str, dict]:
    """Quantize one layer at a time; KL/agreement/top-1 drop of the logits against FP32."""
    t0 = time.perf_counter()
    batches, n = [], 0
    for batch in data:
        if limit is not None and n >= limit:
            break
        x, _ = split_batch(batch)
        batches.append(x.to(device))
        n += x.shape[0]
    ref = fp[:n]
    ref_lab = lab[:n] if lab is not None else None
    out = {}
    for path in tqdm(graph.paths, desc="profile: isolated", disable=not progress, leave=False):
        set_mode(qmodel, "quant", only=[path])
        logits = torch.cat([qmodel(x).float().cpu() for x in batches])
        m = output_metrics(ref, logits, ref_lab)
        row = {"iso_qkl": m["qkl"], "iso_agreement": m["agreement"]}
        if ref_lab is not None:
            row["iso_top1_drop"] = m["top1_fp32"] - m["top1_quant"]
        out[path] = row
    set_mode(qmodel, "quant")
    timings["isolated_s"] = time.perf_counter() - t0
    timings["isolated_images"] = float(n)
    return out


def _ratio(num: float, den: float) -> float:
    return (num / den) ** 0.5 if den > 0 else 0.0


def _layer_rows(model: nn.Module, graph: LayerGraph, layers: dict[str, QuantLayer], tap: _Tap,
                iso: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for info in graph:
        ql = layers[info.path]
        d2, r2, n, ld2, lr2 = tap.acc[info.path]
        row: dict[str, Any] = {
            "path": info.path, "block": info.block, "role": info.role, "order": info.order,
            "params": info.params, "macs": info.macs,
            "drift": _ratio(d2, r2), "qmse": d2 / n if n else 0.0, "local_drift": _ratio(ld2, lr2),
        }
        obs = ql.observer
        if obs is not None and obs.min is not None and obs.max is not None:
            rng = float(obs.max - obs.min)
            row["act_range"] = rng
            row["act_scale"] = float(ql.act_qparams()[0])
            if obs.ch_min is not None and obs.ch_max is not None and ql.spec is not None and ql.spec.act is not None:
                row["act_avg_precision"] = avg_precision_bits((obs.ch_max - obs.ch_min).cpu(), rng, ql.spec.act.bits)
        bits = ql.spec.weight.bits if ql.spec is not None and ql.spec.weight is not None else 8
        original = model.get_submodule(info.path)
        row.update(weight_stats(original.weight, ql.layer.weight, bits))  # type: ignore[arg-type]
        row.update(iso.get(info.path, {}))
        rows.append(row)
    return rows


def _block_rows(graph: LayerGraph, tap: _Tap, layer_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, block in enumerate(graph.blocks):
        members = [r for r in layer_rows if r["block"] == block]
        d2, r2, n, _, _ = tap.acc[block]
        row: dict[str, Any] = {
            "block": block, "order": i,
            "roles": "+".join(dict.fromkeys(r["role"] for r in members)),
            "layers": len(members), "params": sum(r["params"] for r in members),
            "macs": sum(r["macs"] for r in members),
            "drift": _ratio(d2, r2), "qmse": d2 / n if n else 0.0,
            "max_local_drift": max(r["local_drift"] for r in members),
        }
        if members and "iso_qkl" in members[0]:
            row["iso_qkl_sum"] = sum(r["iso_qkl"] for r in members)
        rows.append(row)
    return rows
