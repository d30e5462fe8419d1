"""The depthwise convolution with a per-tap weight gradient (used on CPU for tiny feature maps) against PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoselect.quant.dwconv import TAP_GRAD_MAX_POSITIONS, depthwise_conv2d, fast_depthwise, is_depthwise


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
    y = depthwise_conv2d(conv, x, w, conv.bias)
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
    assert depthwise_conv2d(conv, big, conv.weight, conv.bias).grad_fn.name() == "ConvolutionBackward0"
    tiny = torch.randn(2, 4, 1, 1)
    assert depthwise_conv2d(conv, tiny, conv.weight, conv.bias).grad_fn.name().startswith("_TapDepthwise")
    frozen = conv.weight.detach()
    assert depthwise_conv2d(conv, tiny, frozen, conv.bias).grad_fn.name() == "ConvolutionBackward0"


def test_is_depthwise():
    assert is_depthwise(nn.Conv2d(8, 8, 3, groups=8))
    assert not is_depthwise(nn.Conv2d(8, 16, 3, groups=8))   # channel multiplier
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=4))
    assert not is_depthwise(nn.Conv2d(8, 8, 3))
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=8, padding="same"))


def test_fast_depthwise_routes_plain_depthwise_convs_and_restores_them():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 8, 1))
    x = torch.randn(2, 4, 1, 1)
    with fast_depthwise(net):
        assert net[0](x).grad_fn.name().startswith("_TapDepthwise")
        assert "forward" not in net[1].__dict__  # not depthwise: untouched
    assert "forward" not in net[0].__dict__
    assert net[0](x).grad_fn.name() == "ConvolutionBackward0"


def test_baseline_training_gives_the_model_back_in_the_default_memory_format(tiny, batches):
    from autoselect.data.batches import ImageSet
    from autoselect.train.baseline import train_baseline

    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    data = ImageSet((images * 40 + 128).clamp(0, 255).to(torch.uint8), labels, tuple("0123456789"),
                    (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    res = train_baseline(tiny, data, data, epochs=1, batch_size=16)
    assert all(p.is_contiguous() for p in tiny.parameters())
    assert all("forward" not in m.__dict__ for m in tiny.modules())
    assert res.history and res.best_state
