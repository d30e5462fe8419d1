"""One call from (name, weights file) to a ready FP32 model with what travels with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from autoselect.errors import AutoselectError
from autoselect.models.checkpoint import load_weights, read_checkpoint
from autoselect.models.registry import create_model

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    num_classes: int
    input_size: int
    normalize: dict[str, list[float]] | None
    weights: str | None  # path of the weights file, None for untrained
    weights_sha256: str | None
    trained_acc: float | None = None


def load_model(
    name: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
) -> LoadedModel:
    """Build ``name`` and load ``weights``; ``num_classes``/``input_size`` default to the checkpoint's, else 10/32.

    Raises :class:`AutoselectError` when the name is unknown, the file is missing or unreadable, or the weights do
    not fit (including a ``num_classes`` that disagrees with the file).
    """
    ckpt = read_checkpoint(weights) if weights is not None else None
    if ckpt is not None and ckpt.num_classes is not None and num_classes is not None and ckpt.num_classes != num_classes:
        raise AutoselectError(
            f"--num-classes {num_classes} does not match weights {weights}, which have {ckpt.num_classes} classes"
        )
    n = num_classes or (ckpt.num_classes if ckpt and ckpt.num_classes else None) or 10
    if n < 2:
        raise AutoselectError(f"num_classes must be at least 2, got {n}")
    size = input_size or (ckpt.input_size if ckpt and ckpt.input_size else None) or 32
    model = create_model(name, num_classes=n)
    if ckpt is not None:
        load_weights(model, ckpt, source=str(weights), model_name=name)
    model.eval()
    acc = ckpt.meta.get("test_acc") if ckpt else None
    return LoadedModel(
        model=model,
        name=name,
        num_classes=n,
        input_size=int(size),
        normalize=ckpt.normalize if ckpt else None,
        weights=str(weights) if weights is not None else None,
        weights_sha256=ckpt.sha256 if ckpt else None,
        trained_acc=float(acc) if isinstance(acc, (int, float)) else None,
    )
