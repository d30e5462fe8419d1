"""Post-training methods: each a registered, self-contained piece that a layer's :class:`QuantSpec` names.

A method runs once the activation quantizers are calibrated (``calibrate`` calls :func:`run_methods`), in the
quantized model, on the calibration images (no labels). It leaves its result in the generic state every
:class:`~autoselect.quant.layer.QuantLayer` has, so that the simulation, QAT and the export all apply it without
knowing the method:

- a **rounding** method chooses each weight's integer and calls ``QuantLayer.fix_weight`` (the float weight then
  lies on that grid and its qparams are fixed; the exported integer weights are those);
- a **correction** sets ``QuantLayer.bias_delta``, which the quantized layer adds to its bias and the export folds
  into the bias.

Registered here: ``adaround`` (rounding, :mod:`.adaround`), ``bias_correction`` (correction,
:mod:`.bias_correction`); ``nearest`` is plain rounding (no method). A new method is one new module that calls
:func:`register_method` and is imported below.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from autoselect.errors import AutoselectError
from autoselect.quant.layer import QuantLayer
from autoselect.quant.spec import QuantSpec

__all__ = ["MethodContext", "METHODS", "ROUNDINGS", "check_methods", "register_method", "run_methods"]


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

    def layer(self, path: str) -> QuantLayer:
        ql = self.model.get_submodule(path)
        assert isinstance(ql, QuantLayer)
        return ql

    def reference_layer(self, path: str) -> QuantLayer:
        ql = self.reference.get_submodule(path)
        assert isinstance(ql, QuantLayer)
        return ql


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "rounding" | "correction"
    order: int  # methods run by increasing order: rounding (10) before corrections (20)
    selects: Callable[[QuantSpec], bool]
    run: Callable[[MethodContext], None]


METHODS: dict[str, Method] = {}
ROUNDINGS = ["nearest"]  # rounding names a spec may ask for; "nearest" is no method


def register_method(name: str, *, kind: str, order: int,
                    selects: Callable[[QuantSpec], bool]) -> Callable[[Callable[[MethodContext], None]],
                                                                      Callable[[MethodContext], None]]:
    """Decorator: ``run(ctx)`` becomes the method ``name``, applied to every layer whose spec ``selects`` it."""
    if kind not in ("rounding", "correction"):
        raise ValueError(f"method kind must be 'rounding' or 'correction', got {kind!r}")

    def deco(fn: Callable[[MethodContext], None]) -> Callable[[MethodContext], None]:
        if name in METHODS:
            raise ValueError(f"post-training method {name!r} is registered twice")
        METHODS[name] = Method(name=name, kind=kind, order=order, selects=selects, run=fn)
        if kind == "rounding":
            ROUNDINGS.append(name)
        return fn

    return deco


def check_methods(spec: QuantSpec, where: str = "") -> None:
    """Refuse a spec that names a rounding method nobody registered."""
    if spec.rounding not in ROUNDINGS:
        raise AutoselectError(f"{where}unknown rounding {spec.rounding!r}; choose one of {', '.join(ROUNDINGS)}")


def run_methods(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu",
                progress: bool = False) -> dict[str, float]:
    """Apply every registered method to the layers whose spec asks for it; returns seconds per method run (also
    kept as ``model.autoselect_method_seconds``). ``model`` must be calibrated and is left in quant mode."""
    from autoselect.quant.simulate import quant_layers, set_mode

    layers = {p: ql for p, ql in quant_layers(model).items() if ql.spec is not None}
    for path, ql in layers.items():
        assert ql.spec is not None
        check_methods(ql.spec, f"layer {path}: ")
    todo = [(m, [p for p, ql in layers.items() if ql.spec is not None and m.selects(ql.spec)])
            for m in sorted(METHODS.values(), key=lambda m: m.order)]
    todo = [(m, paths) for m, paths in todo if paths]
    seconds: dict[str, float] = {}
    if todo:
        reference = copy.deepcopy(model)
        set_mode(reference, "fp32")
        for method, paths in todo:
            t0 = time.perf_counter()
            set_mode(model, "quant")
            method.run(MethodContext(model=model, reference=reference, paths=paths, data=data,
                                     device=torch.device(device), progress=progress))
            seconds[method.name] = time.perf_counter() - t0
    set_mode(model, "quant")
    model.autoselect_method_seconds = seconds  # type: ignore[assignment]
    return seconds


# the registered methods (imported for their registration)
from autoselect.quant.methods import adaround as _adaround  # noqa: E402,F401
from autoselect.quant.methods import bias_correction as _bias_correction  # noqa: E402,F401
