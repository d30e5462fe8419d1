"""Depthwise convolution whose weight gradient stays fast on CPU when the feature map is tiny.

On this CPU (oneDNN, AVX2) PyTorch's depthwise weight gradient is pathologically slow once the output is 2x2 or
smaller: for MobileNetV2 on 32x32 CIFAR images, a [128, 960, 1, 1] 3x3 depthwise layer takes 0.3 ms forward and
20 ms for the weight gradient (the input gradient: 0.4 ms). The late blocks of MobileNetV2 run at 2x2 and 1x1, so
these few layers took more than half of a QAT step. With so few output positions the weight gradient is a handful
of multiply-and-sum over the batch, one per kernel tap, which is what :func:`depthwise_conv2d` computes there.
Elsewhere (larger maps, CUDA) it is the ordinary convolution.
"""

from __future__ import annotations

import functools

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "fast_depthwise", "is_depthwise", "TAP_GRAD_MAX_POSITIONS"]

# At most this many output positions (Ho * Wo): weight gradient by taps. Measured on this CPU: at 4x4 the library
# kernel is already fast (0.3 ms for [128, 192, 4, 4]); at 2x2 it takes 8-13 ms where the taps take well under 1 ms.
TAP_GRAD_MAX_POSITIONS = 4


def is_depthwise(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels
            == layer.out_channels and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _TapDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation):  # type: ignore[override]
        ctx.conf = (stride, padding, dilation)
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, b, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w = ctx.saved_tensors
        (sh, sw), (ph, pw), (dh, dw) = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(g, x, w, None, [sh, sw], [ph, pw], [dh, dw], False, [0, 0],
                                                     x.shape[1], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = _tap_weight_grad(x, g, w.shape[-2:], (sh, sw), (ph, pw), (dh, dw))
        if ctx.needs_input_grad[2]:  # False when there is no bias
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None


def _tap_weight_grad(x, g, kernel, stride, padding, dilation) -> torch.Tensor:
    """d loss / d weight of a depthwise conv, one multiply-and-sum per kernel tap, channels innermost.

    A tap whose window lies wholly in the zero padding (8 of 9 on a 1x1 map) contributes nothing and is skipped.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h, w_ = x.shape[-2:]
    ho, wo = g.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # N, Hp, Wp, C
    gc = g.permute(0, 2, 3, 1).contiguous()
    grad = x.new_zeros(x.shape[1], 1, kh, kw)

    def live(start: int, step: int, count: int, pad: int, size: int) -> bool:
        return any(pad <= start + step * t < pad + size for t in range(count))

    for i in range(kh):
        if not live(i * dh, sh, ho, ph, h):
            continue
        for j in range(kw):
            if not live(j * dw, sw, wo, pw, w_):
                continue
            tap = xp[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw, :]
            grad[:, 0, i, j] = (tap * gc).sum(dim=(0, 1, 2))
    return grad


def depthwise_conv2d(layer: nn.Conv2d, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s convolution of ``x`` with weight ``w`` and bias ``b`` (a depthwise layer: see
    :func:`is_depthwise`)."""
    stride, padding, dilation = _pair(layer.stride), _pair(layer.padding), _pair(layer.dilation)
    use_taps = x.device.type == "cpu" and torch.is_grad_enabled() and w.requires_grad
    if use_taps:
        ho = (x.shape[-2] + 2 * padding[0] - dilation[0] * (w.shape[-2] - 1) - 1) // stride[0] + 1
        wo = (x.shape[-1] + 2 * padding[1] - dilation[1] * (w.shape[-1] - 1) - 1) // stride[1] + 1
        use_taps = ho * wo <= TAP_GRAD_MAX_POSITIONS
    if use_taps:
        return _TapDepthwise.apply(x, w, b, stride, padding, dilation)
    return F.conv2d(x, w, b, stride, padding, dilation, layer.groups)


def _patched_forward(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return depthwise_conv2d(m, x, m.weight, m.bias)


@contextmanager
def fast_depthwise(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every plain depthwise ``nn.Conv2d`` of ``model`` runs through :func:`depthwise_conv2d`
    (for FP32 training; quantized layers use it always). The modules are restored on exit."""
    patched = [m for m in model.modules() if type(m) is nn.Conv2d and is_depthwise(m)]
    for m in patched:
        m.forward = functools.partial(_patched_forward, m)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for m in patched:
            del m.forward
