"""The float model that gets exported: QAT-trained, BN-folded layers, with smoothing made explicit.

Each :class:`QuantLayer` is replaced by its inner (folded) Conv2d/Linear at the same module path, so ONNX
initializer names stay ``<path>.weight``. A smoothed layer's weight becomes ``w / s``; its per-channel scale ``s``
is folded into the layer feeding it where the simulation folded it (:func:`autoselect.quant.simulate.fold_smoothing`:
that layer's weight and bias times ``s`` per output channel, its ReLU6 a ReLU, as :class:`GridClip` simulates), and
is otherwise an explicit per-channel ``Mul`` (:class:`SmoothedLayer`), the extra op seed 003 measured.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from autoselect.quant.bn_fold import set_submodule
from autoselect.quant.layer import QuantLayer
from autoselect.quant.simulate import GridClip, quant_layers, remove_shared_input_hooks

__all__ = ["SmoothedLayer", "deploy_model"]


class SmoothedLayer(nn.Module):
    scale: torch.Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, scale: torch.Tensor, view: list[int]) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(view).clone())
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.scale)


def _scale_outputs(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply a conv's or linear's output channel c by s_c, in its weight and bias."""
    assert isinstance(layer, (nn.Conv2d, nn.Linear))
    with torch.no_grad():
        layer.weight.mul_(s.view(-1, *[1] * (layer.weight.dim() - 1)).to(layer.weight))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
        else:
            layer.bias.mul_(s.to(layer.bias))


def deploy_model(qmodel: nn.Module, *, grid_weights: bool = True) -> nn.Module:
    """A plain float copy of a quantized model: what ``export`` traces and onnxruntime then quantizes.
    ``grid_weights``: each quantized layer (without smoothing) carries its simulated quantized weights, so that
    onnxruntime's requantization of them gives exactly the simulation's integers (learned roundings, clipped ranges
    and grids narrower than int8 included); False: the folded float weights."""
    model = copy.deepcopy(qmodel).eval()
    remove_shared_input_hooks(model)
    folds: dict[str, torch.Tensor] = {}
    # the quantized weights and biases are read from the original layers, whose weight grids are cached (a copy's
    # are computed again: with MSE ranges, 15 of DenseNet-121's 30 s of export)
    originals = quant_layers(qmodel)
    for path, ql in quant_layers(model).items():
        layer = ql.layer
        if ql.bias_delta is not None:  # a bias correction: the quantized layer's bias is the deployed one
            with torch.no_grad():
                b = originals[path].quant_bias()
                assert b is not None
                layer.bias = nn.Parameter(b.detach().clone())
        if ql.smooth_scale is not None:
            with torch.no_grad():
                layer.weight.copy_(ql.effective_weight())
            if ql.smooth_folded_into is not None:
                folds[ql.smooth_folded_into] = ql.smooth_scale.detach()
                set_submodule(model, path, layer)
                continue
            view = [1, -1, 1, 1] if isinstance(layer, nn.Conv2d) else [1, -1]
            set_submodule(model, path, SmoothedLayer(layer, ql.smooth_scale, view))
        else:
            if grid_weights and ql.spec is not None and ql.spec.weight is not None:
                with torch.no_grad():
                    layer.weight.copy_(originals[path].quantized_weight())
            set_submodule(model, path, layer)
    for path, s in folds.items():
        producer = model.get_submodule(path)
        _scale_outputs(producer.layer if isinstance(producer, SmoothedLayer) else producer, s)
    for path, m in list(model.named_modules()):
        if isinstance(m, GridClip):
            set_submodule(model, path, nn.ReLU())
    for p in model.parameters():
        p.requires_grad_(False)
    assert not any(isinstance(m, QuantLayer) for m in model.modules())
    return model
