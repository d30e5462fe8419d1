"""Quantization simulation: specs, targets, observers, fake-quant layers, BN folding."""

from __future__ import annotations

from autoselect.quant.bn_fold import fold_batchnorm, fold_bn_into_conv
from autoselect.quant.layer import QuantLayer
from autoselect.quant.observers import ActivationObserver, fake_quant, qparams_from_range, weight_qparams
from autoselect.quant.simulate import calibrate, quant_layers, quantize_model, set_mode
from autoselect.quant.spec import OBSERVERS, QuantSpec, TensorQuant, resolve_specs, w8a8
from autoselect.quant.targets import TARGETS, Target, get_target

__all__ = [
    "ActivationObserver",
    "OBSERVERS",
    "QuantLayer",
    "QuantSpec",
    "TARGETS",
    "Target",
    "TensorQuant",
    "calibrate",
    "fake_quant",
    "fold_batchnorm",
    "fold_bn_into_conv",
    "get_target",
    "qparams_from_range",
    "quant_layers",
    "quantize_model",
    "resolve_specs",
    "set_mode",
    "w8a8",
    "weight_qparams",
]
