"""Post-training methods: each a registered, self-contained piece that a layer's :class:`QuantSpec` names.

A method runs once the activation quantizers are calibrated (``calibrate`` calls :func:`run_methods`), in the
quantized model, on the calibration images (no labels). It leaves its result in the generic state every
:class:`~autoselect.quant.layer.QuantLayer` has, so that the simulation, QAT and the export all apply it without
knowing the method:

- a **rounding** method chooses each weight's integer and calls ``QuantLayer.fix_weight`` (the float weight then
  lies on that grid and its qparams are fixed; the exported integer weights are those);
- a **correction** sets ``QuantLayer.bias_delta``, which the quantized layer adds to its bias and the export folds
  into the bias;
- a **transform** runs *before* calibration, on the float (BN-folded) model, and changes only what the export
  traces anyway (weights, biases, activation modules): cross-layer equalization.

Registered here: ``equalize`` (transform, :mod:`.equalization`), ``adaround`` (rounding, :mod:`.adaround`),
``brecq`` (rounding: block reconstruction with QDrop, :mod:`.block_reconstruction`), ``bias_correction`` (correction, :mod:`.bias_correction`); ``nearest`` is plain rounding (no method). A new method
is one new module that calls :func:`register_method` and is imported below.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from autoselect.errors import AutoselectError
from autoselect.models.graph import LayerGraph
from autoselect.quant.layer import QuantLayer
from autoselect.quant.spec import QuantSpec

__all__ = ["MethodContext", "METHODS", "ROUNDINGS", "block_of", "check_methods", "default_rounding",
           "default_weight_observer", "defaults", "fixed_rounding", "rounding_key",
           "register_method", "run_methods", "run_transforms", "with_defaults"]


@dataclass
class MethodContext:
    """What a method gets: the quantized model (quant mode, activations calibrated), an untouched float copy of it
    taken before any method ran (``reference``, fp32 mode: the target of reconstruction), the layers it should
    treat (paths, in forward order), and the calibration batches."""

    model: nn.Module
    reference: nn.Module
    paths: list[str]
    data: Iterable
    device: torch.device
    progress: bool = False
    graph: LayerGraph | None = None  # the model's layer graph (``quantize_model`` keeps it on the model)
    # roundings learned in earlier calibrations of the same model, by :func:`rounding_key`: a caller that calibrates
    # many quantization configurations (the search: its profile, then its trials) passes one dict, and a rounding
    # method reuses a layer found there instead of learning it again. An approximation where the layers before it
    # are quantized otherwise now, or the calibration images differ (the rounding was learned on the inputs it had
    # then); None: every layer is learned
    reuse: dict | None = None
    # the fraction of each learned method's steps to run (AdaRound's, block reconstruction's): 1 for a plan's
    # calibration; less where the result only ranks configurations (the search's trials, beside a shortened QAT)
    effort: float = 1.0
    _keys: dict = field(default_factory=dict)  # path -> its rounding_key before the method changed the weight

    def steps(self, default: int) -> int:
        """A learned method's step count at this context's :attr:`effort`."""
        return max(1, round(default * self.effort))

    def layer(self, path: str) -> QuantLayer:
        ql = self.model.get_submodule(path)
        assert isinstance(ql, QuantLayer)
        return ql

    def reused(self, path: str) -> bool:
        """Whether ``path``'s rounding was found in :attr:`reuse` (and is now fixed as it was learned there)."""
        if self.reuse is None:
            return False
        ql = self.layer(path)
        self._keys[path] = key = rounding_key(path, ql)
        hit = self.reuse.get(key)
        if hit is not None:
            ql.fix_weight(*hit)
        return hit is not None

    def keep(self, path: str) -> None:
        """Put ``path``'s fixed rounding into :attr:`reuse` (after the method learned it)."""
        if self.reuse is not None and path in self._keys:
            self.reuse[self._keys.pop(path)] = fixed_rounding(self.layer(path))

    def block_of(self, path: str) -> str | None:
        """The block (``LayerInfo.block``) layer ``path`` belongs to; None without a layer graph."""
        return block_of(self.graph, path)

    def reference_layer(self, path: str) -> QuantLayer:
        ql = self.reference.get_submodule(path)
        assert isinstance(ql, QuantLayer)
        return ql


def block_of(graph: LayerGraph | None, path: str) -> str | None:
    """The block (``LayerInfo.block``) layer ``path`` belongs to in ``graph``; None without a graph or the layer."""
    return graph[path].block if graph is not None and path in graph else None


def rounding_key(path: str, ql: QuantLayer) -> tuple:
    """What a learned rounding depends on besides the calibration images and the layers before it: the layer, its
    spec (bit-width, grid, range observer, methods) and its float weight before rounding."""
    w = ql.effective_weight().detach().double()
    return (path, repr(ql.spec), tuple(w.shape), round(float(w.sum()), 9), round(float(w.pow(2).sum()), 9))


def fixed_rounding(ql: QuantLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weight_int, scale, zero_point)`` of a layer whose rounding is fixed, as ``QuantLayer.fix_weight`` takes."""
    scale, zp = ql.weight_qparams()
    w = ql.effective_weight().detach()
    shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
    # on the CPU: a search ships them to its Ray trials, which may run where the driver's device is not
    return (torch.round(w / scale.view(shape).to(w)) + zp.view(shape).to(w)).cpu(), scale.cpu().clone(), \
        zp.cpu().clone()


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "transform" | "rounding" | "correction"
    order: int  # methods run by increasing order: transforms (0), rounding (10), corrections (20)
    selects: Callable[[QuantSpec], bool]
    run: Callable[[MethodContext], None]


KINDS = ("transform", "rounding", "correction")
METHODS: dict[str, Method] = {}
ROUNDINGS = ["nearest"]  # rounding names a spec may ask for; "nearest" is no method


def register_method(name: str, *, kind: str, order: int,
                    selects: Callable[[QuantSpec], bool]) -> Callable[[Callable[[MethodContext], None]],
                                                                      Callable[[MethodContext], None]]:
    """Decorator: ``run(ctx)`` becomes the method ``name``, applied to every layer whose spec ``selects`` it."""
    if kind not in KINDS:
        raise ValueError(f"method kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: Callable[[MethodContext], None]) -> Callable[[MethodContext], None]:
        if name in METHODS:
            raise ValueError(f"post-training method {name!r} is registered twice")
        METHODS[name] = Method(name=name, kind=kind, order=order, selects=selects, run=fn)
        if kind == "rounding":
            ROUNDINGS.append(name)
        return fn

    return deco


def defaults(spec: QuantSpec) -> dict[str, object]:
    """The post-training methods a layer gets when its plan action names none: the strongest treatment measured
    on the reference checkpoint for its weight granularity (experiments/RESULTS.md, issue 13). Frozen and retrained
    layers get the same spec, so both quantize alike before training (``apply.finish_plan`` then drops a retrained
    layer's bias correction). Cross-layer equalization only for per-tensor weights (per-channel scales already fit
    each channel) and never with smoothing, which rescales the same channels."""
    if spec.weight is None:
        return {"rounding": "nearest", "bias_correction": False, "equalize": False}
    return {"rounding": default_rounding(spec),
            "bias_correction": True,
            "equalize": not spec.weight.per_channel and not spec.smooth}


def default_weight_observer(spec: QuantSpec) -> str:
    """The weight range observer a layer gets when its plan names none: ``mse`` (the clipping ratio with the least
    squared weight error). Measured on the reference checkpoint, 10,000 test images (experiments/RESULTS.md,
    issue 13): with AdaRound at W4 per-tensor 79.03% against 78.59% with min-max ranges; rounding to nearest at W5
    per-tensor 79.61% against 79.34%, at W8 per-tensor 79.79% against 79.77% (a tie)."""
    return "mse"


def default_rounding(spec: QuantSpec) -> str:
    """Below :data:`ADAROUND_BELOW_BITS`-bit weights a learned rounding: block reconstruction (``brecq``) where the
    layer's activations are below 8 bits, else AdaRound; rounding to nearest above. Measured on the reference
    checkpoint, calibration draw 0, 10,000 test images (experiments/RESULTS.md, issue 14): W4 per-channel / A4
    77.19% with ``brecq`` against 76.84% with AdaRound (137 s against 101 s); W4 per-tensor / A8 79.10% against
    79.04%, a tie, so AdaRound (with its spread over three draws, issue 13) stays the A8 default."""
    assert spec.weight is not None
    if spec.weight.bits >= ADAROUND_BELOW_BITS:
        return "nearest"
    return BLOCK_ROUNDING if spec.act is not None and spec.act.bits < 8 else DEFAULT_ROUNDING


# AdaRound by default only below 5 bits. At 8 bits rounding to nearest already matched FP32 with equalization and bias correction; at 5-bit
# per-tensor weights AdaRound (500 steps) scored what rounding to nearest did (79.34% both, 10,000 test images,
# calibration seed 0) in 134 s against 2 s (experiments/RESULTS.md, issue 13)
ADAROUND_BELOW_BITS = 5
DEFAULT_ROUNDING = "adaround"
BLOCK_ROUNDING = "brecq"


def with_defaults(spec: QuantSpec, chosen: Mapping[str, object] | None = None, *,
                  observer_named: bool = True) -> QuantSpec:
    """``spec`` with the methods ``chosen`` names (``None`` values: not named) and :func:`defaults` for the rest;
    where the weight observer was not named, :func:`default_weight_observer`. Refuses an unknown rounding."""
    named = {k: v for k, v in (chosen or {}).items() if v is not None}
    spec = replace(spec, **{**defaults(spec), **named})  # type: ignore[arg-type]
    check_methods(spec)
    if not observer_named and spec.weight is not None:
        spec = replace(spec, weight=replace(spec.weight, observer=default_weight_observer(spec)))
    return spec


def check_methods(spec: QuantSpec, where: str = "") -> None:
    """Refuse a spec that names a rounding method nobody registered."""
    if spec.rounding not in ROUNDINGS:
        raise AutoselectError(f"{where}unknown rounding {spec.rounding!r}; choose one of {', '.join(ROUNDINGS)}")


def run_transforms(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu",
                   progress: bool = False) -> dict[str, float]:
    """Apply the ``transform`` methods (before calibration; once per model); returns seconds per method."""
    if getattr(model, "autoselect_transformed", False):
        return {}
    seconds = _run(model, data, ("transform",), device, progress, reference=False)
    model.autoselect_transformed = True  # type: ignore[assignment]
    return seconds


def run_methods(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu",
                progress: bool = False, reuse: dict | None = None, effort: float = 1.0) -> dict[str, float]:
    """Apply every registered rounding and correction method to the layers whose spec asks for it; returns seconds
    per method run (kept, with the transforms', in ``model.autoselect_method_seconds``). ``model`` must be
    calibrated and is left in quant mode. ``effort``: :attr:`MethodContext.effort`."""
    seconds = _run(model, data, ("rounding", "correction"), device, progress, reference=True, reuse=reuse,
                   effort=effort)
    model.autoselect_method_seconds = {**getattr(model, "autoselect_method_seconds", {}),  # type: ignore[assignment]
                                       **seconds}
    return seconds


def _run(model: nn.Module, data: Iterable, kinds: tuple[str, ...], device: torch.device | str, progress: bool, *,
         reference: bool, reuse: dict | None = None, effort: float = 1.0) -> dict[str, float]:
    from autoselect.quant.simulate import quant_layers, set_mode

    layers = {p: ql for p, ql in quant_layers(model).items() if ql.spec is not None}
    for path, ql in layers.items():
        assert ql.spec is not None
        check_methods(ql.spec, f"layer {path}: ")
    todo = [(m, [p for p, ql in layers.items() if ql.spec is not None and m.selects(ql.spec)])
            for m in sorted(METHODS.values(), key=lambda m: m.order) if m.kind in kinds]
    todo = [(m, paths) for m, paths in todo if paths]
    seconds: dict[str, float] = {}
    mode = "quant" if reference else "fp32"
    if todo:
        ref = copy.deepcopy(model) if reference else model
        set_mode(ref, "fp32")
        for method, paths in todo:
            t0 = time.perf_counter()
            set_mode(model, mode)
            method.run(MethodContext(model=model, reference=ref, paths=paths, data=data,
                                     device=torch.device(device), progress=progress,
                                     graph=getattr(model, "autoselect_graph", None), reuse=reuse,
                                     effort=effort))
            seconds[method.name] = time.perf_counter() - t0
    set_mode(model, mode)
    return seconds


# the registered methods (imported for their registration)
from autoselect.quant.methods import equalization as _equalization  # noqa: E402,F401
from autoselect.quant.methods import adaround as _adaround  # noqa: E402,F401
from autoselect.quant.methods import block_reconstruction as _block_reconstruction  # noqa: E402,F401
from autoselect.quant.methods import bias_correction as _bias_correction  # noqa: E402,F401
