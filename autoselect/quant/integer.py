"""Integer arithmetic: the simulation computed the way onnxruntime's integer kernels compute it, for evaluation.

The simulation (:class:`~autoselect.quant.layer.QuantLayer` in ``quant`` mode) computes a layer in float32 on
dequantized values, ``conv(k_x * s_x, k_w * s_w) + b``, then rounds ``y / s_y``. The exported model computes the
same grids differently: exact int32 sums, requantized with a float32 multiplier straight onto the grid of whatever
reads them; an Add of two quantized tensors from their integers (``QLinearAdd``); and its float ops (Sigmoid, the
global average) with kernels of its own (:mod:`autoselect.quant.mlas`). Both are the same quantized model and differ
only in rounding, but on a model with many near-ties (a large input, a quantization error close to the signal's
size) that alone flips a few percent of the predictions (experiments/RESULTS.md, issue 18).

:func:`integer_arithmetic` computes the simulation as the export does, so the export can be held to the simulation
image by image: bit for bit on every family measured, except DenseNet (its un-folded BatchNorms run in PyTorch's
float arithmetic) and, rarely, a squeeze-excitation's mean (onnxruntime sums it in NHWC in the deployed graph, in an
order not reproduced: 2 of 360 images of EfficientNet-B0 at 224 px, same predictions; RESULTS, issue 18).
The sums are exact: in float64, or in float32 where every partial sum stays below 2^24. It is for evaluation only:
no gradient is recorded, and it is slower than the float32 simulation.

It follows tensors through the model with a :class:`~torch.overrides.TorchFunctionMode`: what a layer writes is on a
grid (its own output grid), or pending (its sums, requantized by the quantizer that reads them, through a fused
ReLU/ReLU6); an Add of two tensors on grids is pending until a quantizer reads it.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from autoselect.quant import mlas
from autoselect.quant.layer import QuantLayer
from autoselect.quant.spec import TensorQuant
from autoselect.quant.targets import mlas_fma_kernels

__all__ = ["integer_arithmetic", "FLOAT32_SUMS"]

FLOAT32_SUMS = True  # sum in float32 where that is exact (see _integer_forward); False: float64 throughout


@dataclass
class _OnGrid:
    """A tensor that holds ``k * scale`` exactly, ``k`` its integer levels (``q - zero_point``)."""

    k: torch.Tensor
    scale: torch.Tensor
    zp: torch.Tensor


@dataclass
class _PendingAdd:
    """The sum of two tensors on grids, not yet requantized: onnxruntime fuses it with the QuantizeLinear that
    follows into one ``QLinearAdd`` (a ReLU/ReLU6 after it is the clamp of that grid)."""

    a: _OnGrid
    b: _OnGrid
    lo: float | None = None
    hi: float | None = None


@dataclass
class _PendingSum:
    """A layer's int32 sums (as float32) not yet requantized: the kernel writes them onto the grid of the quantizer
    that reads them; a ReLU/ReLU6 in between is the clamp of that grid."""

    acc: torch.Tensor
    step: torch.Tensor  # s_x * s_w, shaped against acc
    lo: float | None = None
    hi: float | None = None


_Info = _OnGrid | _PendingAdd | _PendingSum


class _Tracked:
    """What is known of a tensor, by identity and version (an in-place change forgets it)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref, int, _Info]] = {}

    def get(self, t: object) -> _Info | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._by_id.get(id(t))
        if entry is None or entry[0]() is not t or entry[1] != t._version:  # type: ignore[union-attr]
            return None
        return entry[2]

    def set(self, t: torch.Tensor, info: _Info | None) -> None:
        key = id(t)
        if info is None:
            self._by_id.pop(key, None)
        else:  # the entry (and the tensors it holds) goes when the tensor does
            self._by_id[key] = (weakref.ref(t, lambda _: self._by_id.pop(key, None)), t._version, info)

    def __len__(self) -> int:
        return len(self._by_id)


_ADDS = {torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__, torch.add}
_CLAMPS = {torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu, F.relu6, F.hardtanh,
           F.hardtanh_}
_SIGMOIDS = {torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid}
_SIGMOIDS_ = {torch.sigmoid_, torch.Tensor.sigmoid_}
_MEANS = {F.adaptive_avg_pool2d, torch.mean, torch.Tensor.mean}


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: object) -> object:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _is_global(func: object, args: tuple, kwargs: dict) -> bool:
    """Whether the call averages a 4-D tensor over H and W (what the ONNX exporter writes as ReduceMean)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return False
    if func is F.adaptive_avg_pool2d:
        return _arg(args, kwargs, 1, "output_size", None) in (1, (1, 1), [1, 1])
    dims = _arg(args, kwargs, 1, "dim", None)
    return isinstance(dims, (tuple, list)) and sorted(int(d) % 4 for d in dims) == [2, 3] and "dtype" not in kwargs


def _clamp_bounds(func: object, args: tuple, kwargs: dict) -> tuple[float, float | None]:
    if func is F.relu6:
        return 0.0, 6.0
    if func in (F.hardtanh, F.hardtanh_):
        lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        return float(lo), float(hi)  # type: ignore[arg-type]
    return 0.0, None


class _IntegerOps(TorchFunctionMode):
    """The ops between layers as onnxruntime computes them: Adds of tensors on grids and the ReLU/ReLU6 after them
    (pending until a quantizer reads them), Sigmoid and SiLU (MLAS's logistic), the global average (Eigen's
    ReduceMean)."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked = _Tracked()
        self.fma = mlas_fma_kernels()
        self.weight_levels: dict[int, torch.Tensor] = {}  # each layer's integer weights, computed once per block

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _SIGMOIDS and len(args) == 1 and not kwargs:
            return mlas.logistic(args[0], self.fma).to(args[0].dtype)
        if func in _SIGMOIDS_ and len(args) == 1 and not kwargs:
            return args[0].copy_(mlas.logistic(args[0], self.fma))
        if func is F.silu and args:
            out = (args[0] * mlas.logistic(args[0], self.fma)).to(args[0].dtype)
            return args[0].copy_(out) if _arg(args, kwargs, 1, "inplace", False) else out
        if func in _MEANS and _is_global(func, args, kwargs):
            out = mlas.reduce_mean(args[0].contiguous())
            keep = func is F.adaptive_avg_pool2d or _arg(args, kwargs, 2, "keepdim", False)
            return out if keep else out.flatten(1)
        if func in _ADDS and len(args) == 2 and kwargs.get("alpha", 1) == 1:
            a, b = self.tracked.get(args[0]), self.tracked.get(args[1])  # before an in-place add changes them
            out = func(*args, **kwargs)
            pending = _PendingAdd(a, b) if isinstance(a, _OnGrid) and isinstance(b, _OnGrid) else None
            self.tracked.set(out, pending)
            return out
        if func in _CLAMPS and args:
            info = self.tracked.get(args[0])
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                lo, hi = _clamp_bounds(func, args, kwargs)
                clamped = replace(info, lo=lo, hi=hi) if isinstance(info, (_PendingAdd, _PendingSum)) else None
                self.tracked.set(out, clamped)
            return out
        return func(*args, **kwargs)

    def levels(self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, tq: TensorQuant) -> torch.Tensor:
        """The levels a quantizer reading ``x`` gets: QuantizeLinear's, or the fused QLinearAdd's or requantization's
        for a pending tensor."""
        info = self.tracked.get(x)
        if isinstance(info, _PendingAdd) and not scale.dim():
            a, b = info.a, info.b
            return mlas.qlinear_add(a.k, a.scale, a.zp, b.k, b.scale, b.zp, scale, zp, tq, fma=self.fma,
                                    lo=info.lo, hi=info.hi)
        if isinstance(info, _PendingSum) and not scale.dim():
            return mlas.requantize(info.acc, info.step, scale, zp, tq, info.lo, info.hi)
        return mlas.quantize(x, scale, zp, tq)


def _integer_forward(ql: QuantLayer, x: torch.Tensor, ops: _IntegerOps) -> torch.Tensor:
    spec = ql.spec
    if ql.mode != "quant" or spec is None or spec.act is None or spec.weight is None:
        return QuantLayer.forward(ql, x)
    layer = ql.layer
    if ql.smooth_scale is not None:
        x = ql.smooth_input(x.float())
    sx, zx = ql.act_qparams()
    sw, zw = ql.weight_qparams()
    kx = ops.levels(x, sx, zx, spec.act)
    kw = ops.weight_levels.get(id(ql))
    if kw is None:  # the weights do not change within integer_arithmetic (no gradient)
        kw = ops.weight_levels[id(ql)] = mlas.quantize(ql.effective_weight(), sw, zw, spec.weight)
    step = (sx.float() * sw.float()).reshape(-1)  # s_x * s_w, per output channel (float32)
    b = ql.quant_bias()  # on the int32 grid already: its levels are exact integers
    kb = None if b is None else torch.round(b.detach().float() / step).double()
    # every partial sum is an integer below fan_in * max|k_x| * max|k_w|: float32 holds it exactly below 2^24
    # (depthwise layers, most 1x1 layers), and runs faster; otherwise float64 (on CPU: CUDA may sum float32 in TF32)
    fan_in = kw[0].numel()
    bound = fan_in * float(kx.abs().max()) * float(kw.abs().max())
    exact32 = FLOAT32_SUMS and kx.device.type == "cpu" and bound < 2.0 ** 24
    if exact32:
        kx, kw = kx.float(), kw.float()
    acc = ql.apply_layer(kx, kw, None).double()  # the bias is added in float64: it may exceed 2^24
    shape = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (1, -1)
    if kb is not None:
        acc = acc + kb.view(shape)
    acc32, step = acc.float(), step.view(shape)  # int32 -> float32, rounded to nearest even, as the kernel does
    if spec.output is None:
        # requantized onto the grid of whatever quantizes it next (through a fused ReLU), else a float output
        # (QGemm without QuantizeLinear: the sums times s_x * s_w)
        y = acc32 * step
        ops.tracked.set(y, _PendingSum(acc32, step))
        return y
    sy, zy = ql.out_scale, ql.out_zero_point
    k = mlas.requantize(acc32, step, sy, zy, spec.output).float()
    y = k * sy.float()
    ops.tracked.set(y, _OnGrid(k, sy, zy))
    return y


def _integer_quantize_input(ql: QuantLayer, x: torch.Tensor, ops: _IntegerOps) -> torch.Tensor:
    """``QuantLayer.quantize_input`` as onnxruntime computes it (a block input read by several ops)."""
    spec = ql.spec
    if ql.mode != "quant" or spec is None or spec.act is None or ql.smooth_scale is not None:
        return QuantLayer.quantize_input(ql, x)
    sx, zx = ql.act_qparams()
    k = ops.levels(x, sx, zx, spec.act).float()
    y = (k * sx.float()).to(x.dtype)
    ops.tracked.set(y, _OnGrid(k, sx, zx))
    return y


@contextlib.contextmanager
def integer_arithmetic(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` (a quantized model) computes as its export does on onnxruntime's CPU kernels
    (see the module's doc); on leaving, as before. No gradient is recorded within.

    ::

        with integer_arithmetic(qmodel):
            logits = qmodel(images)   # what model_int8.onnx computes
    """
    ops = _IntegerOps()
    patched = []
    try:
        for ql in model.modules():
            if isinstance(ql, QuantLayer):
                ql.forward = types.MethodType(  # type: ignore[method-assign]
                    lambda self, x: _integer_forward(self, x, ops), ql)
                ql.quantize_input = types.MethodType(  # type: ignore[method-assign]
                    lambda self, x: _integer_quantize_input(self, x, ops), ql)
                patched.append(ql)
        with torch.no_grad(), ops:
            yield model
    finally:
        for ql in patched:
            del ql.forward, ql.quantize_input
