"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Each weight is rounded up or down, not to nearest: a continuous variable ``V`` per weight gives the soft rounding
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, and ``V`` is learned, layer by layer in forward order,
to reconstruct the layer's float output from its input in the quantized model (whose earlier layers are already
rounded), on the calibration images, without labels:

    min_V  || f(W_soft * Q(x_q) + b) - f(W * x_fp + b) ||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

``x_fp`` is the layer's input in the float model, ``Q`` the layer's own input quantizer and ``f`` the ReLU/ReLU6 that
follows the layer (the paper's asymmetric reconstruction, with the activation). The regularizer, off for the first
20% of the iterations, then with ``beta`` annealed from 20 to 2, drives every ``h`` to 0 or 1. The weight's scale is
the one its observer chose (min-max or MSE); AdaRound only decides the integers. Settings follow aimet-torch's
defaults (``reg_param`` 0.01, ``beta_range`` (20, 2), ``warm_start`` 0.2, Adam at 1e-3).

**Sampled output positions.** The loss is a sum over output positions, and each position of a convolution depends
only on its receptive-field patch. So instead of whole feature maps (aimet: a batch of images per step), each layer
draws up to :data:`POSITIONS` output positions from all calibration images once, keeps their input patches and
float targets in a shuffled order, and every step is one small matrix product over the next :data:`BATCH` of
them (fewer for large layers, :data:`STEP_MACS`). The objective is the same (an unbiased sample of it); a step costs
a fraction of a millisecond to a few, so the default of :data:`ITERATIONS` steps per layer is affordable. Grouped
convolutions other than depthwise, and convolutions with non-zero padding modes, use whole feature maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoselect.quant.dwconv import is_depthwise
from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import MethodContext, register_method
from autoselect.quant.methods._capture import BlockInputs

__all__ = ["ITERATIONS", "POSITIONS", "adaround_layer"]

ZETA, GAMMA = 1.1, -0.1
# 1000: at 500, W4 per-tensor MobileNetV2 lost 0.7 point (78.60% against 79.32%, 10,000 test images)
ITERATIONS = 1000
BATCH = 1024  # output positions per step at most (whole-map layers: BATCH // positions-per-image images)
# and fewer for large layers: a step multiplies at most STEP_MACS (rows x weights) but keeps MIN_BATCH rows, so that
# the big 1x1 convolutions at the end of a MobileNet (1280x320 weights) cost a quarter of what they did; AIMET's
# batch of 32 images gives those layers 32 positions per step
STEP_MACS = 2**24
MIN_BATCH = 256
POSITIONS = 65536  # output positions kept per layer
REG = 0.01
BETA = (20.0, 2.0)
WARMUP = 0.2
LR = 1e-3
_CHUNK = 64  # images unfolded at a time


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def soft_start(w_div: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``floor(w_div)`` and the rounding variable ``V`` whose ``h(V)`` gives back the fractional part (the start of
    AdaRound's relaxation, shared with block reconstruction)."""
    floor = torch.floor(w_div)
    rest = (w_div - floor).clamp(0.0, 1.0)
    return floor, (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).clamp(-20.0, 20.0)


def regularizer(v: torch.Tensor, it: int, iterations: int) -> torch.Tensor | None:
    """AdaRound's rounding regularizer at step ``it`` of ``iterations`` (``None`` during the warm-up), ``beta``
    annealed from BETA[0] to BETA[1]; not yet multiplied by REG."""
    warm = int(WARMUP * iterations)
    if it < warm:
        return None
    progress = (it - warm) / max(1, iterations - warm)
    beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * progress))
    return (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()


def _activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    return {"ReLU": F.relu, "ReLU6": F.relu6}.get(name or "", lambda t: t)


def _patch_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple):
        if layer.groups == 1:
            return "conv"
        if is_depthwise(layer):
            return "depthwise"
    return None


class _Problem:
    """The layer's reconstruction problem: inputs and float targets, and the layer's output for a weight."""

    def __init__(self, ql: QuantLayer, x_in: torch.Tensor, target: torch.Tensor, kind: str | None,
                 gen: torch.Generator) -> None:
        self.ql, self.kind = ql, kind
        self.used: torch.Tensor | None = None  # the input columns the products keep (None: all)
        self.act = _activation(ql.followed_by)
        if kind is None:  # whole feature maps
            self.x, self.t = x_in, target
            return
        layer = ql.layer
        if kind == "linear":
            rows_x, rows_t = x_in.reshape(-1, x_in.shape[-1]), target.reshape(-1, target.shape[-1])
            keep = torch.randperm(rows_x.shape[0], generator=gen)[:POSITIONS]
            self.x, self.t = rows_x[keep].contiguous(), rows_t[keep].contiguous()
            self._drop_unused_inputs()
            return
        assert isinstance(layer, nn.Conv2d)
        n = x_in.shape[0]
        per_image = target.shape[-2] * target.shape[-1]
        total = n * per_image
        keep = torch.randperm(total, generator=gen)[:POSITIONS].sort().values
        xs: list[torch.Tensor] = []
        ts: list[torch.Tensor] = []
        padding = layer.padding
        assert isinstance(padding, tuple)  # _patch_kind: not "same"/"valid"
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            sel = keep[(keep >= start * per_image) & (keep < stop * per_image)] - start * per_image
            if sel.numel() == 0:
                continue
            cols = F.unfold(x_in[start:stop], layer.kernel_size, dilation=layer.dilation, padding=padding,
                            stride=layer.stride)  # [b, C*k*k, L]
            cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [b*L, C*k*k], channel-major like the weight
            xs.append(cols[sel])
            tt = target[start:stop].flatten(2).transpose(1, 2).reshape(-1, target.shape[1])
            ts.append(tt[sel])
        order = torch.randperm(sum(len(t) for t in ts), generator=gen)  # shuffled once: batches are slices
        self.x, self.t = torch.cat(xs)[order], torch.cat(ts)[order]
        if kind == "depthwise":
            self.x = self.x.view(self.x.shape[0], layer.in_channels, -1)  # [P, C, k*k]
        self._drop_unused_inputs()

    def _drop_unused_inputs(self) -> None:
        """Input columns that are zero in every kept row (kernel taps that only ever see zero padding, as a 3x3
        kernel on a 1x1 map; input channels no image activates) multiply no data: they leave the matrix products,
        and their weights' rounding, which no calibration image can see, stays at nearest (the regularizer alone
        drives ``h`` to the side it started on)."""
        used = (self.x != 0).flatten(0, -2).any(0) if self.kind != "depthwise" else (self.x != 0).any(0).any(0)
        if bool(used.all()) or not bool(used.any()):
            return
        self.used = used
        self.x = self.x[..., used].contiguous()

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    def step_rows(self, batch: int) -> int:
        """Rows per step: ``batch``, fewer where the layer's (used) weights make a step cost over STEP_MACS."""
        if self.kind is None:
            return batch
        weights = self.ql.layer.weight.shape[0] * self.x.shape[-1]  # output channels x kept columns (or taps)
        return max(min(batch, MIN_BATCH), min(batch, STEP_MACS // max(1, weights)))

    def _kept(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as a matrix [out, columns] (depthwise: [C, taps]), with only the kept input columns."""
        w2 = w.reshape(w.shape[0], -1)
        return w2 if self.used is None else w2[:, self.used]

    def out(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        bias = self.ql.quant_bias()
        if self.kind is None:
            y = self.ql._run(x, w)
        elif self.kind == "depthwise":
            y = (x * self._kept(w).unsqueeze(0)).sum(-1)  # [P, C, k*k] * [C, k*k]; einsum is slower here
            y = y if bias is None else y + bias
        else:
            y = F.linear(x, self._kept(w), bias)
        return self.act(y)

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``step``-th batch: consecutive slices of the (shuffled) rows, wrapping around."""
        if self.kind is None:  # whole maps: as many images as give about `size` positions
            size = max(1, size // max(1, self.t[0, 0].numel()))
        size = min(size, self.rows)
        per_epoch = max(1, self.rows // size)
        start = (step % per_epoch) * size
        return self.x[start:start + size], self.t[start:start + size]

    def error(self, w: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float((self.out(xb, w) - tb).pow(2).sum())
                       for xb, tb in zip(self.x.split(4096), self.t.split(4096)))


def adaround_layer(ql: QuantLayer, x_q: torch.Tensor, x_fp: torch.Tensor, reference: QuantLayer, *,
                   iterations: int = ITERATIONS, batch: int = BATCH, seed: int = 0) -> float:
    """Learn the rounding of ``ql``'s weight from its inputs in the quantized (``x_q``) and float (``x_fp``) model
    and fix it (``QuantLayer.fix_weight``). ``reference``: the layer before any method ran. Returns the final
    reconstruction error relative to the error of rounding to nearest (below 1: better)."""
    assert ql.spec is not None and ql.spec.weight is not None
    tq = ql.spec.weight
    device = ql.layer.weight.device
    scale, zp = ql.weight_qparams()
    w = ql.effective_weight().detach()
    shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
    s, z = scale.view(shape).to(w), zp.view(shape).to(w)
    w_div = w / s
    floor, v = soft_start(w_div)
    v.requires_grad_(True)
    lo, hi = tq.qmin - z, tq.qmax - z  # integer range around the zero-point
    gen = torch.Generator().manual_seed(seed)

    with torch.no_grad():
        x_in = torch.cat([ql.quantize_input(xb.to(device)) for xb in x_q.split(256)])
        target = torch.cat([_activation(ql.followed_by)(reference.layer(xb.to(device))) for xb in x_fp.split(256)])
        problem = _Problem(ql, x_in, target, _patch_kind(ql.layer), gen)
        del x_in, target

    nearest = torch.clamp(torch.round(w_div), lo, hi)
    nearest_err = problem.error(nearest * s)
    opt = torch.optim.Adam([v], lr=LR)
    batch = problem.step_rows(batch)
    with torch.enable_grad():
        for it in range(iterations):
            xb, tb = problem.batch(it, batch)
            w_soft = torch.clamp(floor + _h(v), lo, hi)
            diff = problem.out(xb, w_soft * s) - tb
            loss = diff.pow(2).flatten(1).sum(1).mean()
            reg = regularizer(v, it, iterations)
            if reg is not None:
                loss = loss + REG * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        w_int = torch.clamp(floor + (_h(v) >= 0.5).to(w), lo, hi)
        final_err = problem.error(w_int * s)
        if final_err > nearest_err:  # never worse than rounding to nearest on the calibration images
            w_int, final_err = nearest, nearest_err
        ql.fix_weight(w_int + z, scale, zp)
    return final_err / max(nearest_err, 1e-30)


@register_method("adaround", kind="rounding", order=10, selects=lambda spec: spec.rounding == "adaround"
                 and spec.weight is not None)
def _run(ctx: MethodContext) -> None:
    inputs_q, inputs_fp = BlockInputs(ctx.model, ctx.data, ctx.device), BlockInputs(ctx.reference, ctx.data, ctx.device)
    for i, path in enumerate(tqdm(ctx.paths, desc="adaround", disable=not ctx.progress, leave=False)):
        if ctx.reused(path):
            continue
        ql = ctx.layer(path)
        block = ctx.block_of(path)
        x_q, x_fp = inputs_q(block, path), inputs_fp(block, path)
        adaround_layer(ql, x_q, x_fp, ctx.reference_layer(path), iterations=ctx.steps(ITERATIONS), seed=i)
        ctx.keep(path)
