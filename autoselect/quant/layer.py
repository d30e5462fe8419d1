"""``QuantLayer``: a Conv2d or Linear whose weight and input activation are fake-quantized.

It replaces the original module at the same path (the original lives on as ``.layer``), so hooks and state-dict
prefixes keep their meaning. Each layer has a ``mode``:

- ``"fp32"``: the plain layer (BatchNorm already folded in);
- ``"observe"``: the plain layer, and the input activation is recorded by the observer (calibration);
- ``"quant"``: input activation and weight are fake-quantized per the layer's :class:`QuantSpec`.

Weight scales follow the weight: they are recomputed whenever the weight tensor changes in place (an optimizer
step), so the same module serves PTQ and QAT. Gradients flow straight through the rounding (STE). With learned
steps (:func:`autoselect.quant.lsq.learn_scales`, LSQ), ``weight_learner`` and ``act_learner`` hold trainable
grids started from the calibrated ones and replace them; ``weight_qparams`` and ``act_qparams`` give whichever grid
is in force, which is what the export reads.

With ``spec.smooth`` (seed 003), each input channel c gets ``s_c = max|w[..., c, ...]|`` (fixed when the layer is
wrapped): the weight is quantized as ``w / s`` and the activation as ``x * s``, so that one per-tensor weight scale
fits every channel. For a depthwise conv input and output channels coincide and the product is exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoselect.quant.dwconv import depthwise_conv2d, is_depthwise
from autoselect.quant.lsq import GridQuantizer
from autoselect.quant.observers import ActivationObserver, fake_quant, weight_qparams
from autoselect.quant.spec import QuantSpec

__all__ = ["QuantLayer", "MODES"]

MODES = ("fp32", "observe", "quant")


class QuantLayer(nn.Module):
    act_scale: torch.Tensor
    act_zero_point: torch.Tensor
    out_scale: torch.Tensor
    out_zero_point: torch.Tensor
    calibrated: torch.Tensor
    smooth_scale: torch.Tensor | None
    weight_scale_fixed: torch.Tensor | None
    weight_zp_fixed: torch.Tensor | None
    bias_delta: torch.Tensor | None
    weight_learner: GridQuantizer | None
    act_learner: GridQuantizer | None

    def __init__(self, layer: nn.Conv2d | nn.Linear, spec: QuantSpec | None, *, per_channel_stats: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantLayer wraps Conv2d or Linear, not {type(layer).__name__}")
        self.layer = layer
        self.spec = spec
        self.mode = "fp32"
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("out_scale", torch.ones(()))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("smooth_scale", _smooth_scale(layer) if spec is not None and spec.smooth else None)
        # what post-training methods leave (autoselect.quant.methods): weight qparams fixed once a method chose the
        # integer weights (the weight then lies on that grid), and a per-output-channel bias added when quantized
        self.register_buffer("weight_scale_fixed", None)
        self.register_buffer("weight_zp_fixed", None)
        self.register_buffer("bias_delta", None)
        # learned step sizes for QAT (autoselect.quant.lsq): None until learn_scales gives the layer its quantizers
        self.register_module("weight_learner", None)
        self.register_module("act_learner", None)
        self.observer = (
            ActivationObserver(spec.act, per_channel_stats=per_channel_stats, seed=seed)
            if spec is not None and spec.act is not None
            else None
        )
        self.out_observer = (
            ActivationObserver(spec.output, seed=seed) if spec is not None and spec.output is not None else None
        )
        self.followed_by: str | None = None  # the activation module after the layer (set by quantize_model)
        self._output_through: list[nn.Module] = []  # the clamping activation its output grid is observed after
        # smoothing folded into the layer feeding this one (see simulate.fold_smoothing); None: an explicit Mul
        self.smooth_folded_into: str | None = None
        self._wq: tuple[torch.Tensor, torch.Tensor] | None = None
        self._wq_key: tuple[int, int, str] | None = None
        self._qw: torch.Tensor | None = None  # fake-quantized weight, reused while nothing needs its gradient
        self._qw_key: tuple[int, int, str] | None = None

    def extra_repr(self) -> str:
        return f"mode={self.mode}, spec={self.spec.describe() if self.spec else 'fp32'}"

    # -- calibration -------------------------------------------------------------------------------------------
    def finish_calibration(self) -> None:
        """Turn the observers' statistics into the activation (and output) scale/zero-point."""
        if self.out_observer is not None:
            scale, zp = self.out_observer.qparams()
            self.out_scale.copy_(scale)
            self.out_zero_point.copy_(zp)
        if self.observer is not None:
            scale, zp = self.observer.qparams()
            self.act_scale.copy_(scale)
            self.act_zero_point.copy_(zp)
        self.calibrated.fill_(True)

    @property
    def act_calibrated(self) -> bool:
        return bool(self.calibrated)

    # -- quantized tensors -------------------------------------------------------------------------------------
    def _shape(self, s: torch.Tensor, *, weight: bool) -> torch.Tensor:
        """View the per-input-channel smoothing scale against the weight or the activation."""
        layer = self.layer
        if weight:  # depthwise: the input channel is the output channel (dim 0)
            dim, rank = (0 if isinstance(layer, nn.Conv2d) and layer.groups > 1 else 1), layer.weight.dim()
        else:
            dim, rank = 1, (4 if isinstance(layer, nn.Conv2d) else 2)
        shape = [1] * rank
        shape[dim] = -1
        return s.view(shape)

    def effective_weight(self) -> torch.Tensor:
        """The weight as quantized: ``w / s`` when smoothed, else ``w``."""
        w = self.layer.weight
        return w if self.smooth_scale is None else w / self._shape(self.smooth_scale, weight=True)

    def smooth_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.smooth_scale is None else x * self._shape(self.smooth_scale, weight=False)

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.spec is not None and self.spec.weight is not None
        if self.weight_learner is not None:
            return self.weight_learner.qparams()
        if self.weight_scale_fixed is not None and self.weight_zp_fixed is not None:
            return self.weight_scale_fixed, self.weight_zp_fixed
        w = self.layer.weight
        key = (w.data_ptr(), w._version, str(w.device))
        if self._wq is None or self._wq_key != key:
            scale, zp = weight_qparams(self.effective_weight(), self.spec.weight)
            self._wq = (scale.to(w.device), zp.to(w.device))
            self._wq_key = key
        return self._wq

    def act_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input activation's grid in force: the learned one, else the calibrated one."""
        if self.act_learner is not None:
            return self.act_learner.qparams()
        return self.act_scale, self.act_zero_point

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.spec is None or self.spec.weight is None:
            return self.effective_weight()
        if self.weight_learner is not None:
            return self.weight_learner(self.effective_weight())
        needs_grad = torch.is_grad_enabled() and w.requires_grad
        if not needs_grad and self._qw is not None and self._qw_key == (w.data_ptr(), w._version, str(w.device)):
            return self._qw
        scale, zp = self.weight_qparams()
        qw = fake_quant(self.effective_weight(), scale, zp, self.spec.weight, axis=0)
        if not needs_grad:
            self._qw, self._qw_key = qw.detach(), self._wq_key
        return qw

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.smooth_input(x)
        if self.spec is None or self.spec.act is None:
            return x
        if not self.act_calibrated:
            raise RuntimeError("activation quantizer used before calibration")
        if self.act_learner is not None:
            return self.act_learner(x)
        return fake_quant(x, self.act_scale, self.act_zero_point, self.spec.act)

    @torch.no_grad()
    def fix_weight(self, weight_int: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Make ``scale * (weight_int - zero_point)`` the layer's (effective) weight and fix its qparams, so that
        quantizing it gives back ``weight_int`` exactly (a rounding method's result; the export carries it)."""
        shape = [-1] + [1] * (weight_int.dim() - 1) if scale.dim() else []
        w_eff = (weight_int.float() - zero_point.float().view(shape)) * scale.view(shape)
        if self.smooth_scale is not None:
            w_eff = w_eff * self._shape(self.smooth_scale, weight=True)
        self.layer.weight.copy_(w_eff.to(self.layer.weight))
        self.weight_scale_fixed = scale.detach().clone().to(self.layer.weight.device)
        self.weight_zp_fixed = zero_point.detach().clone().to(self.layer.weight.device)

    def quant_bias(self) -> torch.Tensor | None:
        """The bias the quantized layer adds: the layer's, plus a bias correction's ``bias_delta``; in quant mode,
        on the int32 grid integer kernels keep it on (step: input scale x weight scale, per output channel), as the
        export writes it (the gradient passes straight through the rounding). Without that rounding the simulation
        drifted from onnxruntime by up to 0.016 of an output step per layer, enough to flip roundings that then
        spread (experiments/RESULTS.md, issue 18)."""
        b = self.layer.bias
        if self.bias_delta is not None:
            b = self.bias_delta if b is None else b + self.bias_delta
        spec = self.spec
        if b is None or self.mode != "quant" or spec is None or spec.weight is None or spec.act is None \
                or not self.act_calibrated:
            return b
        step = (self.act_qparams()[0] * self.weight_qparams()[0]).to(b).clamp(min=1e-30)
        return b + (torch.round(b / step) * step - b).detach()

    def _run(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.apply_layer(x, w, self.quant_bias())

    def apply_layer(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The wrapped layer's operation on ``x`` with weight ``w`` and ``bias`` (None: no bias, even where the layer
        has one of its own)."""
        layer = self.layer
        if type(layer).forward not in (nn.Conv2d.forward, nn.Linear.forward):
            # a subclass with a forward of its own (e.g. TensorFlow-style static "same" padding before the conv):
            # run it, with the given weight and bias in place of its own
            if bias is None and layer.bias is not None:
                bias = torch.zeros_like(layer.bias, dtype=w.dtype, device=w.device)
            params = {"weight": w} if bias is None else {"weight": w, "bias": bias}
            return torch.func.functional_call(layer, params, (x,))
        if isinstance(layer, nn.Conv2d):
            if is_depthwise(layer):
                return depthwise_conv2d(layer, x, w, bias)
            return layer._conv_forward(x, w, bias)
        return F.linear(x, w, bias)

    def observe_output_through(self, activation: nn.Module) -> None:
        """Observe the output grid after ``activation`` (a ReLU/ReLU6, applied after this layer): the grid then
        starts at its zero and ends within its clamp, so applying it to the layer's own output computes what
        requantizing after the activation does (a fused conv+ReLU kernel writing to a grid of its own)."""
        self._output_through = [activation]  # a list: not a submodule

    def quantize_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.spec is None or self.spec.output is None:
            return y
        return fake_quant(y, self.out_scale, self.out_zero_point, self.spec.output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quant" and self.spec is not None:
            if torch.is_autocast_enabled(x.device.type):  # grids stay exact: a quantized layer computes in float32
                with torch.autocast(x.device.type, enabled=False):
                    return self.quantize_output(self._run(self.quantize_input(x.float()), self.quantized_weight()))
            return self.quantize_output(self._run(self.quantize_input(x), self.quantized_weight()))
        if self.mode == "observe" and self.observer is not None:
            self.observer.update(self.smooth_input(x))
        y = self.layer(x)
        if self.mode == "observe" and self.out_observer is not None:
            with torch.no_grad():
                self.out_observer.update(self._output_through[0](y.clone()) if self._output_through else y)
        return y


def _smooth_scale(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """``s_c = max |w|`` over everything but the input channel c (depthwise: c is the output channel)."""
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
        if layer.groups != layer.in_channels or layer.out_channels != layer.in_channels:
            raise ValueError("smoothing supports depthwise (groups == channels) and ungrouped layers only")
        s = w.flatten(1).amax(dim=1)
    else:
        s = w.transpose(0, 1).flatten(1).amax(dim=1)
    return s.clamp(min=1e-8)
