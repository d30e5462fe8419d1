"""``apply_plan``: a plan + an FP32 model + calibration data → a model ready for an ordinary training loop.

Frozen layers are quantized with calibrated parameters and have ``requires_grad=False``; ``qat`` layers train
their (BN-folded) weight and bias through straight-through fake quantization; every other parameter is frozen.
BatchNorm is folded before training (MQBench's simplest deployable strategy): the folded weights are what is
trained and what is exported, so training and deployment see the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn as nn

from autoselect.errors import AutoselectError
from autoselect.models.graph import LayerGraph, build_layer_graph
from autoselect.plan import LayerAction, Plan
from autoselect.quant.layer import QuantLayer
from autoselect.quant.lsq import learn_scales
from autoselect.quant.methods import with_defaults
from autoselect.quant.simulate import calibrate, quant_layers, quantize_model
from autoselect.quant.spec import QuantSpec
from autoselect.quant.targets import Target, get_target

__all__ = ["apply_plan", "calibrated_model", "finish_plan", "plan_specs", "planned_size_bytes", "quantized_size_bytes",
           "quantizer_params", "retrained_fraction", "trainable_layers"]


def _check(path: str, action: LayerAction, target: Target) -> None:
    if action.kind == "fp32":
        return
    if not target.name.startswith("generic") and action.weight_bits is not None and action.weight_bits not in target.weight_bits:
        raise AutoselectError(f"layer {path}: {action.weight_bits}-bit weights cannot run on target {target.name} "
                              f"(it runs {', '.join(map(str, target.weight_bits))}-bit weights)")
    if action.act == "asym" and target.act_symmetric:
        raise AutoselectError(f"layer {path}: asymmetric activations cannot run on target {target.name}, "
                              "whose integer kernels take symmetric activations only")
    if action.act == "sym" and not target.signed_act_ok:
        raise AutoselectError(f"layer {path}: symmetric (signed) activations cannot run faithfully on target "
                              f"{target.name}: its kernels shift them to unsigned, undoing the 7-bit saturation guard")


def _spec(action: LayerAction, target: Target, observers: dict[str, str]) -> QuantSpec | None:
    if action.kind == "fp32":
        return None
    # act_bits the target cannot run are refused by Target.spec (plan_specs names the layer)
    spec = target.spec(weight_bits=action.weight_bits, weight_observer=observers.get("weight") or "minmax",
                       act_observer=observers.get("act"), act_bits=action.act_bits)
    if action.act is not None and spec.act is not None:
        spec = replace(spec, act=replace(spec.act, symmetric=action.act == "sym"))
    spec = replace(spec, smooth=action.smooth)
    chosen = {"rounding": action.rounding, "bias_correction": action.bias_correction, "equalize": action.equalize}
    return with_defaults(spec, chosen, observer_named="weight" in observers)


def plan_specs(plan: Plan, graph: LayerGraph) -> tuple[dict[str, QuantSpec | None], dict[str, LayerAction | None]]:
    """Resolve and check the plan against the model's layers and the plan's target."""
    target = get_target(plan.target)
    roles = {layer.path: layer.role for layer in graph}
    actions = plan.resolve(graph.paths, roles)
    specs: dict[str, QuantSpec | None] = {}
    for path, action in actions.items():
        if action is None:
            specs[path] = None
            continue
        _check(path, action, target)
        if action.smooth and graph[path].kind == "conv" and 1 < graph[path].groups != graph[path].in_channels:
            raise AutoselectError(f"layer {path}: smoothing supports depthwise and ungrouped layers only")
        try:
            specs[path] = _spec(action, target, plan.observers)
        except AutoselectError as exc:
            raise AutoselectError(f"layer {path}: {exc}") from None
    return specs, actions


def apply_plan(
    model: nn.Module,
    plan: Plan,
    calibration: Iterable,
    *,
    graph: LayerGraph | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> nn.Module:
    """A quantized copy of ``model`` following ``plan``, calibrated on ``calibration``, in ``"quant"`` mode.

    The copy carries ``autoselect_plan`` (the plan) and ``autoselect_total_params`` (the FP32 model's parameter
    count, the denominator of :func:`retrained_fraction`).
    """
    if plan.model is not None and plan.model.input_size and input_shape is None:
        input_shape = (1, 3, plan.model.input_size, plan.model.input_size)
    graph = graph or build_layer_graph(model, input_shape or (1, 3, 32, 32))
    specs, actions = plan_specs(plan, graph)
    qmodel = calibrated_model(model, specs, graph, calibration, target=plan.target, device=device,
                              progress=progress)
    return finish_plan(qmodel, plan, actions, graph)


def calibrated_model(model: nn.Module, specs: dict[str, QuantSpec | None], graph: LayerGraph, calibration: Iterable,
                     *, target: str, device: torch.device | str = "cpu", progress: bool = False,
                     reuse: dict | None = None, effort: float = 1.0) -> nn.Module:
    """The quantized, calibrated copy of ``model`` for resolved ``specs`` (post-training methods applied), every
    parameter frozen: the part of :func:`apply_plan` that depends only on how layers are quantized, not on which
    are retrained (so that a search can reuse it across plans). ``reuse``: learned roundings shared between
    calibrations of this model (see ``MethodContext.reuse``)."""
    qmodel = quantize_model(model.to(device), specs, graph=graph, integer_graph=get_target(target).runs_here)
    for p in qmodel.parameters():
        p.requires_grad_(False)
    calibrate(qmodel, calibration, device=device, progress=progress, reuse=reuse, effort=effort)
    return qmodel


def finish_plan(qmodel: nn.Module, plan: Plan, actions: dict[str, LayerAction | None], graph: LayerGraph) -> nn.Module:
    """Make the plan's ``qat`` layers trainable in a :func:`calibrated_model` and record the plan on it.

    A retrained layer that learns its steps (the default, LSQ) starts from its whole post-training state: the
    grids the range observer, calibration and rounding method chose, and its bias correction folded into the
    trained bias. One with ``learn_scales: false`` drops the correction (its weight grid follows the weight)."""
    for path, layer in quant_layers(qmodel).items():
        action = actions[path]
        if action is not None and action.trainable:
            if action.learns_scales:
                _fold_bias_delta(layer)
                learn_scales(layer)
            else:
                layer.bias_delta = None
            for p in layer.parameters():
                p.requires_grad_(True)
    qmodel.autoselect_plan = plan  # type: ignore[assignment]
    qmodel.autoselect_total_params = graph.total_params  # type: ignore[assignment]
    return qmodel


@torch.no_grad()
def _fold_bias_delta(layer: QuantLayer) -> None:
    """Move a bias correction into the layer's own bias, which QAT then trains (the quantized output is the same)."""
    if layer.bias_delta is None:
        return
    inner = layer.layer
    if inner.bias is None:
        inner.bias = nn.Parameter(layer.bias_delta.detach().clone().to(inner.weight))
    else:
        inner.bias.add_(layer.bias_delta.to(inner.bias))
    layer.bias_delta = None


def trainable_layers(qmodel: nn.Module) -> list[str]:
    return [p for p, layer in quant_layers(qmodel).items() if any(x.requires_grad for x in layer.parameters())]


def quantizer_params(qmodel: nn.Module) -> set[int]:
    """``id`` of every learned quantizer step and offset (LSQ) in ``qmodel``."""
    return {id(p) for layer in quant_layers(qmodel).values()
            for learner in (layer.weight_learner, layer.act_learner) if learner is not None
            for p in learner.parameters()}


def retrained_fraction(qmodel: nn.Module) -> float:
    """The model's parameters with ``requires_grad`` over all parameters of the FP32 model (BatchNorm included).
    Learned quantizer steps and offsets (one or two per tensor or output channel) are not the model's and are not
    counted."""
    total = getattr(qmodel, "autoselect_total_params", None) or sum(p.numel() for p in qmodel.parameters())
    steps = quantizer_params(qmodel)
    return sum(p.numel() for p in qmodel.parameters() if p.requires_grad and id(p) not in steps) / total


def _layer_bytes(weight: torch.Tensor, bias: int, spec: QuantSpec | None) -> int:
    """One layer deployed: its weight at its bit-width (FP32 when unquantized), its bias as int32 and one
    scale/zero-point per output channel (or tensor)."""
    if spec is None or spec.weight is None:
        return 4 * (weight.numel() + bias)
    channels = weight.shape[0] if spec.weight.per_channel else 1
    return (weight.numel() * spec.weight.bits + 7) // 8 + 4 * bias + 8 * channels + 8


def quantized_size_bytes(qmodel: nn.Module) -> int:
    """Deployed size: quantized weights at their bit-width, biases as int32, FP32 layers and other parameters at
    4 bytes, plus one scale/zero-point per channel or tensor."""
    size = 0
    counted: set[int] = set()
    for layer in quant_layers(qmodel).values():
        counted.update(id(p) for p in layer.layer.parameters())
        bias = layer.layer.bias.numel() if layer.layer.bias is not None else 0
        size += _layer_bytes(layer.layer.weight, bias, layer.spec)
    size += sum(4 * p.numel() for p in qmodel.parameters() if id(p) not in counted)
    return size


def planned_size_bytes(model: nn.Module, graph: LayerGraph, specs: dict[str, QuantSpec | None]) -> int:
    """:func:`quantized_size_bytes` of the model ``specs`` (from :func:`plan_specs`) would give, computed on the
    FP32 ``model`` without quantizing it: each layer's BatchNorm is folded into its bias (a bias the layer gains)."""
    size = 0
    counted: set[int] = set()
    for info in graph:
        layer = model.get_submodule(info.path)
        counted.update(id(p) for p in layer.parameters())
        bias = info.out_channels if layer.bias is not None or info.bn is not None else 0
        if info.bn is not None:
            counted.update(id(p) for p in model.get_submodule(info.bn).parameters())
        assert isinstance(layer.weight, torch.Tensor)
        size += _layer_bytes(layer.weight, bias, specs.get(info.path))
    size += sum(4 * p.numel() for p in model.parameters() if id(p) not in counted)
    return size
