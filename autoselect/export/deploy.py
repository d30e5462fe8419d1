"""The float model that gets exported: QAT-trained, BN-folded layers, with smoothing made explicit.

Each :class:`QuantLayer` is replaced by its inner (folded) Conv2d/Linear at the same module path, so ONNX
initializer names stay ``<path>.weight``. A smoothed layer becomes :class:`SmoothedLayer`: a per-channel ``Mul`` by
``s`` followed by the layer with weight ``w / s`` — the extra op seed 003 measured at a few percent of latency.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from autoselect.quant.bn_fold import set_submodule
from autoselect.quant.layer import QuantLayer
from autoselect.quant.simulate import quant_layers, remove_shared_input_hooks

__all__ = ["SmoothedLayer", "deploy_model"]


class SmoothedLayer(nn.Module):
    scale: torch.Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, scale: torch.Tensor, view: list[int]) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(view).clone())
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.scale)


def deploy_model(qmodel: nn.Module) -> nn.Module:
    """A plain float copy of a quantized model: what ``export`` traces and onnxruntime then quantizes."""
    model = copy.deepcopy(qmodel).eval()
    remove_shared_input_hooks(model)
    for path, ql in quant_layers(model).items():
        layer = ql.layer
        if ql.smooth_scale is not None:
            with torch.no_grad():
                layer.weight.copy_(ql.effective_weight())
            view = [1, -1, 1, 1] if isinstance(layer, nn.Conv2d) else [1, -1]
            set_submodule(model, path, SmoothedLayer(layer, ql.smooth_scale, view))
        else:
            set_submodule(model, path, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    assert not any(isinstance(m, QuantLayer) for m in model.modules())
    return model
