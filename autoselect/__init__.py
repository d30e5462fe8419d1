"""autoselect: layer-by-layer quantization decisions and selective-QAT plans for CNNs.

Importing it loads torch but no optional backend (ray, onnxruntime).
"""

from __future__ import annotations

from autoselect.data import ImageSet, load_images
from autoselect.errors import AutoselectError
from autoselect.evaluate import accuracy, resolve_device
from autoselect.models import LayerGraph, build_layer_graph, create_model, list_models, load_model, register_model
from autoselect.profiling import SensitivityReport, profile
from autoselect.ptq import evaluate_ptq
from autoselect.quant import QuantSpec, TensorQuant, calibrate, get_target, quantize_model, set_mode, w8a8
from autoselect.train import train_baseline

__version__ = "0.1.0"

__all__ = [
    "AutoselectError",
    "ImageSet",
    "LayerGraph",
    "QuantSpec",
    "SensitivityReport",
    "TensorQuant",
    "accuracy",
    "build_layer_graph",
    "calibrate",
    "create_model",
    "evaluate_ptq",
    "get_target",
    "list_models",
    "load_images",
    "load_model",
    "profile",
    "quantize_model",
    "register_model",
    "resolve_device",
    "set_mode",
    "train_baseline",
    "w8a8",
]
