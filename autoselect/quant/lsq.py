"""Learned step size quantization (LSQ, Esser et al. 2020; LSQ+ offsets for asymmetric grids, Bhalgat et al. 2020).

The fake-quantizer of :mod:`autoselect.quant.observers` takes its scale as a constant; here the scale (and, on an
asymmetric grid, the zero-point) is a parameter that QAT trains with the weights:

    out = (clamp(round(x / s) + round(z), qmin, qmax) - round(z)) * s

with the straight-through estimator for ``round``. Autograd then gives LSQ's gradients exactly: for ``s``,
``round(v) - v`` inside the grid (``v = x / s + z``) and the grid's end minus ``z`` outside; for ``z``, zero inside
and ``-s`` outside; for ``x``, one inside and zero outside. The gradient to ``s`` is scaled by LSQ's
``g = 1 / sqrt(N * qmax)`` (``N``: the elements one scale covers) so that steps stay commensurate with the
weights'.

:class:`LearnedQuantizer` starts from a post-training state (the scale and zero-point a range observer, AdaRound or
calibration chose), trains the zero-point too on asymmetric grids (LSQ+), and gives back integer-grid qparams
(:meth:`LearnedQuantizer.qparams`), which is what the export writes: the exported grid is the one trained.

:func:`learn_scales` gives a :class:`~autoselect.quant.layer.QuantLayer` one for its weight and one for its input
activation, started from the layer's calibrated (and post-training-method) state; the layer's quantized forward, its
``weight_qparams`` and ``act_qparams`` (what the export reads) then use them. A layer's output grid (deployable
targets' requantization after a fused activation) stays fixed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from autoselect.quant.spec import TensorQuant

if TYPE_CHECKING:
    from autoselect.quant.layer import QuantLayer

__all__ = ["GridQuantizer", "LearnedQuantizer", "learn_scales", "lsq_fake_quant"]

_EPS = 1e-8


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(p: torch.Tensor, g: float) -> torch.Tensor:
    """``p`` in the forward pass; its gradient multiplied by ``g`` in the backward pass."""
    return p * g + (p - p * g).detach()


def lsq_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, tq: TensorQuant, *,
                   axis: int = 0, grad_scale: float = 1.0) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the grid of ``tq`` with a trainable ``scale`` and ``zero_point`` (a scalar, or
    one per index of dimension ``axis``); see the module docstring for the gradients."""
    s = _grad_scale(scale, grad_scale).abs().clamp(min=_EPS)
    z = torch.clamp(_round_ste(zero_point), tq.qmin, tq.qmax)  # on the grid, as the exported zero-point is
    if s.dim():
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = s.view(shape), z.view(shape)
    v = torch.clamp(_round_ste(x / s) + z, tq.qmin, tq.qmax)
    return (v - z) * s


class GridQuantizer(nn.Module):
    """What a :class:`~autoselect.quant.layer.QuantLayer` puts in place of its fixed weight or input grid
    (``weight_learner``/``act_learner``): ``forward`` quantizes a tensor, :meth:`qparams` gives the grid in force as
    fixed qparams (what the export writes). QAT's learned steps are one; a post-training method may put its own
    relaxation there for the time it runs (block reconstruction)."""

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LearnedQuantizer(GridQuantizer):
    """A trainable grid for one tensor, initialized from fixed qparams (``scale``, integer ``zero_point``).

    ``elements`` is what one scale covers (all of a weight tensor, or one output channel's weights, or one sample's
    activation), for LSQ's gradient scale; ``None``: one sample's elements, read from the first input (activations).
    Symmetric grids keep the zero-point at 0; asymmetric grids train it (LSQ+'s offset, counted in grid levels; the
    one in force is rounded to the grid, straight-through). The step is trained as its logarithm, so that it stays
    positive and an update moves it by a ratio, alike for a stem channel's step of 0.1 and a wide layer's 0.001 (a
    linear step trained by SGD at the weights' rate went negative on the per-channel weight grids of the tiny test
    net). The trainer (:mod:`autoselect.train.qat`) trains both with Adam, whose updates do not depend on the
    gradients' size, beside the weights' SGD."""

    log_scale: nn.Parameter
    zero_point: torch.Tensor

    def __init__(self, tq: TensorQuant, scale: torch.Tensor, zero_point: torch.Tensor, *, elements: int | None,
                 axis: int = 0) -> None:
        super().__init__()
        if elements is not None and elements < 1:
            raise ValueError(f"elements must be positive, got {elements}")
        self.tq, self.axis = tq, axis
        self.grad_scale = self._grad_scale(elements) if elements is not None else None
        self.log_scale = nn.Parameter(scale.detach().clone().float().clamp(min=_EPS).log())
        zp = zero_point.detach().clone().float()
        if tq.symmetric:
            self.register_buffer("zero_point", torch.zeros_like(zp))
        else:
            self.zero_point = nn.Parameter(zp)  # type: ignore[assignment]

    def _grad_scale(self, elements: int) -> float:
        return 1.0 / math.sqrt(elements * max(self.tq.qmax, 1))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_scale is None:
            self.grad_scale = self._grad_scale(max(1, x[0].numel()))
        scale = self.scale.to(x.dtype)
        return lsq_fake_quant(x, scale, self.zero_point.to(x.dtype), self.tq, axis=self.axis,
                              grad_scale=self.grad_scale)

    @torch.no_grad()
    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained grid as fixed qparams: a positive float scale and an integer zero-point on the grid."""
        scale = self.scale.detach().clamp(min=_EPS).float()
        zp = torch.round(self.zero_point.detach()).clamp(self.tq.qmin, self.tq.qmax).to(torch.int32)
        return scale.clone(), zp


def learn_scales(ql: QuantLayer) -> None:
    """Give the quantized layer ``ql`` (a :class:`~autoselect.quant.layer.QuantLayer`) a learned step for its weight
    and its input activation, each started from the grid the layer has now (calibration, range observer, rounding
    method); a tensor the layer keeps in FP32 gets none, and so does a power-of-two grid (TVM), which a learned step
    would leave. Idempotent."""
    spec = ql.spec
    if spec is None:
        return
    device = ql.layer.weight.device
    if spec.weight is not None and not spec.weight.pot and ql.weight_learner is None:
        scale, zp = ql.weight_qparams()
        w = ql.layer.weight
        per = w[0].numel() if spec.weight.per_channel else w.numel()
        ql.weight_learner = LearnedQuantizer(spec.weight, scale, zp, elements=per).to(device)
    if spec.act is not None and not spec.act.pot and ql.act_learner is None:
        scale, zp = ql.act_qparams()
        ql.act_learner = LearnedQuantizer(spec.act, scale, zp, elements=None).to(device)
