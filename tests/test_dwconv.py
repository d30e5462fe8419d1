"""The depthwise convolution with a per-tap weight gradient (used on CPU for tiny feature maps) against PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoselect.quant.dwconv import TAP_GRAD_MAX_POSITIONS, depthwise_conv2d, is_depthwise


@pytest.mark.parametrize(("size", "stride", "padding", "dilation", "kernel", "bias"), [
    (1, 1, 1, 1, 3, True),    # 1x1 map: only the centre tap sees data
    (2, 1, 1, 1, 3, False),   # 2x2 map, stride 1
    (2, 2, 1, 1, 3, True),    # 2x2 -> 1x1, stride 2
    (3, 2, 1, 1, 3, True),    # odd size, stride 2
    (2, 1, 2, 2, 3, False),   # dilated
    (2, 1, 2, 1, 5, True),    # 5x5 kernel
])
def test_tap_weight_gradient_matches_pytorch(size, stride, padding, dilation, kernel, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, stride, padding, dilation, groups=6, bias=bias).double()
    x = torch.randn(5, 6, size, size, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_()
    y = depthwise_conv2d(conv, x, w)
    ho = y.shape[-1]
    assert ho * ho <= TAP_GRAD_MAX_POSITIONS  # the tap path is the one under test
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_() if bias else None
    y_ref = torch.nn.functional.conv2d(x_ref, w_ref, b_ref, stride, padding, dilation, 6)
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)
    if bias:
        torch.testing.assert_close(conv.bias.grad, b_ref.grad)


def test_large_maps_and_frozen_weights_take_the_ordinary_convolution():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    big = torch.randn(2, 4, 8, 8)
    assert depthwise_conv2d(conv, big, conv.weight).grad_fn.name() == "ConvolutionBackward0"
    tiny = torch.randn(2, 4, 1, 1)
    assert depthwise_conv2d(conv, tiny, conv.weight).grad_fn.name().startswith("_TapDepthwise")
    frozen = conv.weight.detach()
    assert depthwise_conv2d(conv, tiny, frozen).grad_fn.name() == "ConvolutionBackward0"


def test_is_depthwise():
    assert is_depthwise(nn.Conv2d(8, 8, 3, groups=8))
    assert not is_depthwise(nn.Conv2d(8, 16, 3, groups=8))   # channel multiplier
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=4))
    assert not is_depthwise(nn.Conv2d(8, 8, 3))
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=8, padding="same"))
