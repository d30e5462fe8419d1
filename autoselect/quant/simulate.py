"""Simulated quantization of a whole model: copy it, fold BatchNorm, wrap every quantizable layer, calibrate.

::

    qmodel = quantize_model(model, w8a8(per_channel=True), input_shape=(1, 3, 32, 32))
    calibrate(qmodel, calibration_batches)
    set_mode(qmodel, "quant")        # or "fp32" for the BN-folded reference

The original model is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.data.batches import split_batch
from autoselect.models.graph import LayerGraph, LayerInfo, build_layer_graph
from autoselect.quant.bn_fold import fold_batchnorm, set_submodule
from autoselect.quant.layer import MODES, QuantLayer
from autoselect.quant.spec import QuantSpec, resolve_specs

__all__ = ["quantize_model", "quant_layers", "set_mode", "calibrate", "fuses_activations", "fold_smoothing",
           "smoothing_folds", "remove_shared_input_hooks", "shared_input_layers", "GridClip"]


def quantize_model(
    model: nn.Module,
    specs: QuantSpec | Mapping[str, QuantSpec | None],
    *,
    graph: LayerGraph | None = None,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    fold_bn: bool = True,
    per_channel_stats: bool = False,
    integer_graph: bool = False,
) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded and each quantizable layer wrapped in :class:`QuantLayer`.

    ``specs`` is one spec for all layers or a per-layer map (see :func:`autoselect.quant.spec.resolve_specs`);
    layers that resolve to ``None`` are wrapped too but stay FP32 in every mode.

    ``integer_graph=True`` simulates what an integer runtime does with a tensor that several ops read: it exists
    once, quantized. A block's input is fake-quantized at the block boundary with the quantizer of the layer that
    reads it, so that a residual shortcut sees the same quantized values as the conv (exported models match).
    """
    graph = graph or build_layer_graph(model, input_shape)
    qmodel = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(qmodel, graph.bn_pairs())
    resolved = resolve_specs(graph.paths, specs)
    fused = fuses_activations(resolved.values())
    if fused:
        resolved = {p: _fused_output(s, graph[p]) for p, s in resolved.items()}
    resolved = {p: _float_gemm_output(s, qmodel.get_submodule(p)) for p, s in resolved.items()}
    for path in graph.paths:
        layer = qmodel.get_submodule(path)
        assert isinstance(layer, (nn.Conv2d, nn.Linear))
        # one sampling seed for every observer: a producer's output grid and its consumer's input grid observe the
        # same tensor, and must come out equal, as the export keeps one grid per tensor (with clipped ranges, two
        # differently sampled estimates requantized it twice: the export strayed from the simulation)
        ql = QuantLayer(layer, resolved[path], per_channel_stats=per_channel_stats, seed=0)
        ql.followed_by = graph[path].activation  # what a reconstruction method applies after the layer
        info = graph[path]
        if fused and ql.out_observer is not None and info.activation in CLAMPING:
            # its output grid sits after the ReLU (as the fused kernel writes it): observed there, it clamps as the
            # ReLU does, so it can be applied to the layer's own output
            ql.observe_output_through(qmodel.get_submodule(info.activation_path) if info.activation_path
                                      else _FUNCTIONAL[info.activation])
        set_submodule(qmodel, path, ql)
    fold_smoothing(qmodel, graph, resolved)
    qmodel.autoselect_graph = graph  # type: ignore[assignment]  # for the methods that work on pairs of layers
    if integer_graph:
        for info in graph:
            spec = resolved[info.path]
            if info.reads_block_input and spec is not None and spec.act is not None and not spec.smooth:
                qmodel.get_submodule(info.block).register_forward_pre_hook(
                    _SharedInput(qmodel.get_submodule(info.path)))  # type: ignore[arg-type]
    return qmodel


CLAMPING = ("ReLU", "ReLU6", "Hardtanh")
_FUNCTIONAL = {"ReLU": nn.ReLU(), "ReLU6": nn.ReLU6(), "Hardtanh": nn.Hardtanh()}  # activations with no module
FOLDABLE = (None, "ReLU", "ReLU6")  # activations f with f(s * z) = s * f(z) for s > 0 (ReLU6: see GridClip)


class GridClip(nn.Module):
    """The ReLU6 in front of a smoothed layer whose scale is folded into the layer before it.

    Folded, the layer before outputs ``s_c * z_c``, where ReLU6 would need a clip at ``6 * s_c`` per channel: no
    integer kernel has that. In ``quant`` mode this is therefore a plain ReLU and the consumer's input grid does the
    clipping (at ``top / s_c`` in the original units, ``top`` the grid's largest value), as in the exported
    integer model; in the other modes it is the original ReLU6, so calibration and the FP32 reference keep it."""

    def __init__(self, act: nn.Module, consumer: QuantLayer) -> None:
        super().__init__()
        self.act = act
        self._consumer = [consumer]  # a list: not a submodule (it is registered at its own path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if self._consumer[0].mode == "quant" else self.act(x)


def smoothing_folds(info: LayerInfo, graph: Mapping[str, LayerInfo], specs: Mapping[str, QuantSpec | None]) -> bool:
    """Whether a smoothed layer's per-channel scale can be folded into the layer feeding it (seed 003's "moved
    into the preceding layer"), so that the export needs no Mul: that producer must feed only this layer, through
    its BatchNorm and a ReLU, a ReLU6 or nothing, and its weights must be quantized per output channel (or not at
    all), whose grid scales with the fold; a producer that keeps an output quantizer of its own does not fold (a
    ReLU/ReLU6 on an unsigned grid is fused into requantization, so its producer has none)."""
    fed_by = getattr(info, "fed_by", None)  # rows without the graph's wiring do not fold
    if fed_by is None or fed_by not in graph:
        return False
    src = graph[fed_by]
    spec = specs.get(src.path)
    if src.activation not in FOLDABLE or src.out_channels != info.in_channels:
        return False
    if src.activation == "ReLU6" and src.activation_path is None:  # functional: no module to swap for a GridClip
        return False
    if spec is None:
        return True
    own_output = spec.output is not None and not (src.activation in CLAMPING and fuses_activations(specs.values()))
    return not own_output and (spec.weight is None or spec.weight.per_channel)


def fold_smoothing(qmodel: nn.Module, graph: LayerGraph, specs: Mapping[str, QuantSpec | None]) -> list[str]:
    """Fold every smoothed layer's scale into its producer where :func:`smoothing_folds`; a ReLU6 in between becomes
    a :class:`GridClip`. Returns the smoothed layers that were folded; the others keep an explicit per-channel Mul."""
    folded = []
    by_path = {info.path: info for info in graph}
    for info in graph:
        ql = qmodel.get_submodule(info.path)
        if not isinstance(ql, QuantLayer) or ql.smooth_scale is None or not smoothing_folds(info, by_path, specs):
            continue
        assert info.fed_by is not None
        src = by_path[info.fed_by]
        if src.activation == "ReLU6":
            assert src.activation_path is not None
            set_submodule(qmodel, src.activation_path, GridClip(qmodel.get_submodule(src.activation_path), ql))
        ql.smooth_folded_into = src.path
        folded.append(info.path)
    return folded


def fuses_activations(specs: Iterable[QuantSpec | None]) -> bool:
    """Whether ReLU/ReLU6 can be folded into requantization: only onto unsigned (asymmetric) grids, whose zero
    point can sit at the bottom of the range. A signed grid keeps negative values, so the clamp must stay an op
    (and every layer then gets its own output grid). The export makes the same choice."""
    return all(s is None or s.act is None or not s.act.symmetric for s in specs)


def _fused_output(spec: QuantSpec | None, info: LayerInfo) -> QuantSpec | None:
    """A layer followed by ReLU/ReLU6 is requantized after the activation, as fused conv+relu integer kernels do.
    Where only quantizable layers read that output, their input quantizers (zero-point 0, clipped at the observed
    maximum) are that requantization, so the layer itself gets no separate output quantizer; where a pool, a
    concatenation or an Add reads it too, the layer keeps one, observed after the activation (see
    :meth:`QuantLayer.observe_output_through`)."""
    if spec is not None and spec.output is not None and info.activation in CLAMPING and info.feeds_layers_only:
        return replace(spec, output=None)
    return spec


def _float_gemm_output(spec: QuantSpec | None, layer: nn.Module) -> QuantSpec | None:
    """A fully connected layer keeps a float output, as onnxruntime's QGemm writes it when no QuantizeLinear
    follows (the export asks for that): its consumers quantize their own inputs, and a classifier's logits are not
    squeezed onto 256 levels. Measured on a digits RegNet-X-400MF at 64 pixels: quantizing the logits alone took
    x86 PTQ from 90.3% to 67.2% (their range spanned 1,900 at a step of 7.5)."""
    if spec is not None and spec.output is not None and isinstance(layer, nn.Linear):
        return replace(spec, output=None)
    return spec


class _SharedInput:
    """Forward pre-hook: quantize a block's input with its first layer's input quantizer (quant mode only)."""

    def __init__(self, layer: QuantLayer) -> None:
        self.layer = layer

    def __call__(self, module: nn.Module, args: tuple):
        if self.layer.mode != "quant" or not args or not isinstance(args[0], torch.Tensor):
            return None
        return (self.layer.quantize_input(args[0]), *args[1:])


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """Path → QuantLayer for every wrapped layer, in module order."""
    return {p: m for p, m in model.named_modules() if isinstance(m, QuantLayer)}


def set_mode(model: nn.Module, mode: str, only: Iterable[str] | None = None) -> None:
    """Set ``mode`` on every QuantLayer (or on those in ``only``; the others are set to ``"fp32"``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    chosen = None if only is None else set(only)
    for path, layer in quant_layers(model).items():
        layer.mode = mode if chosen is None or path in chosen else "fp32"


@torch.no_grad()
def calibrate(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu",
              progress: bool = False, reuse: dict | None = None, effort: float = 1.0) -> int:
    """Run ``data`` through ``model`` observing activations, then fix activation scales, then apply the
    post-training methods the layers' specs ask for (:mod:`autoselect.quant.methods`; their seconds are in
    ``model.autoselect_method_seconds``). The ``transform`` methods (equalization) run first, on the float model.
    ``data`` must be re-iterable when a method runs. ``reuse``: learned roundings shared between calibrations
    (:attr:`autoselect.quant.methods.MethodContext.reuse`); ``effort``: the fraction of the learned methods' steps
    (:attr:`~autoselect.quant.methods.MethodContext.effort`). Returns images seen."""
    from autoselect.quant.methods import run_methods, run_transforms

    transform_seconds = run_transforms(model, data, device=device, progress=progress)
    set_mode(model, "observe")
    seen = 0
    for batch in tqdm(data, desc="calibrate", disable=not progress, leave=False):
        x, _ = split_batch(batch)
        model(x.to(device))
        seen += x.shape[0]
    if seen == 0:
        raise ValueError("calibration data is empty")
    for layer in quant_layers(model).values():
        layer.finish_calibration()
    set_mode(model, "quant")
    model.autoselect_method_seconds = dict(transform_seconds)  # type: ignore[assignment]
    run_methods(model, data, device=device, progress=progress, reuse=reuse, effort=effort)
    return seen


def shared_input_layers(model: nn.Module) -> list[str]:
    """The layers whose input quantizer ``integer_graph=True`` applies at their block's boundary, for every op of
    the block that reads the block's input (a shortcut's Add, a pool), not only for the layer."""
    path_of = {id(m): p for p, m in quant_layers(model).items()}
    return sorted({path_of[id(hook.layer)] for module in model.modules()
                   for hook in module._forward_pre_hooks.values() if isinstance(hook, _SharedInput)})


def remove_shared_input_hooks(model: nn.Module) -> int:
    """Drop the block-input quantizers of ``integer_graph=True`` (for a float copy of the model)."""
    removed = 0
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, _SharedInput):
                del module._forward_pre_hooks[key]
                removed += 1
    return removed
