"""Models: the registry (name → nn.Module), checkpoints, and the layer graph."""

from __future__ import annotations

from autoselect.models.checkpoint import Checkpoint, load_weights, read_checkpoint, save_checkpoint
from autoselect.models.graph import QUANTIZABLE, ROLES, LayerGraph, LayerInfo, build_layer_graph
from autoselect.models.loading import LoadedModel, load_model
from autoselect.models.registry import create_model, list_models, register_model

__all__ = [
    "Checkpoint",
    "LayerGraph",
    "LayerInfo",
    "LoadedModel",
    "QUANTIZABLE",
    "ROLES",
    "build_layer_graph",
    "create_model",
    "list_models",
    "load_model",
    "load_weights",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
