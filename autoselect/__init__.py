"""autoselect: layer-by-layer quantization decisions and selective-QAT plans for CNNs.

Importing it loads torch but no optional backend (ray, onnxruntime).
"""

from __future__ import annotations

from autoselect.data import ImageSet, load_images
from autoselect.errors import AutoselectError
from autoselect.evaluate import accuracy, resolve_device
from autoselect.plan import LayerAction, Plan, load_plan, save_plan
from autoselect.models import LayerGraph, build_layer_graph, create_model, list_models, load_model, register_model
from autoselect.profiling import SensitivityReport, profile
from autoselect.ptq import evaluate_ptq
from autoselect.quant.apply import apply_plan, quantizer_params, retrained_fraction
from autoselect.quant.methods.bias_correction import recorrect_frozen
from autoselect.quant import QuantSpec, TensorQuant, calibrate, get_target, quantize_model, set_mode, w8a8
from autoselect.train import QATConfig, train_baseline, train_qat

__version__ = "0.1.0"

__all__ = [
    "AutoselectError",
    "ImageSet",
    "LayerAction",
    "LayerGraph",
    "Plan",
    "QATConfig",
    "QuantSpec",
    "SensitivityReport",
    "TensorQuant",
    "accuracy",
    "apply_plan",
    "build_layer_graph",
    "calibrate",
    "create_model",
    "evaluate_ptq",
    "get_target",
    "list_models",
    "load_images",
    "load_model",
    "load_plan",
    "profile",
    "quantize_model",
    "register_model",
    "resolve_device",
    "quantizer_params",
    "recorrect_frozen",
    "retrained_fraction",
    "save_plan",
    "set_mode",
    "train_baseline",
    "train_qat",
    "w8a8",
]
