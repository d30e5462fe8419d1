"""Top-1 accuracy and logits over batches; device selection."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.data.batches import split_batch
from autoselect.errors import AutoselectError

__all__ = ["resolve_device", "predict", "accuracy", "correct"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA when present, else CPU. Asking for CUDA where there is none is a user error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AutoselectError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AutoselectError(f"device {device!r} requested but CUDA is not available here")
    return dev


@torch.no_grad()
def predict(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu", progress: bool = False,
            desc: str = "eval", dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (float32, on CPU) for every batch, and the labels if the batches carry them. ``dtype``: the inputs'
    (for a model converted to it, e.g. float64); default: as the batches come."""
    model.eval()
    logits, labels = [], []
    for batch in tqdm(data, desc=desc, disable=not progress, leave=False):
        x, y = split_batch(batch)
        logits.append(model(x.to(device, dtype)).float().cpu())
        if y is not None:
            labels.append(y.cpu())
    if not logits:
        raise ValueError("no batches to evaluate")
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def accuracy(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu", progress: bool = False,
             desc: str = "eval") -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * correct(model, data, device=device, progress=progress, desc=desc).float().mean().item()


def correct(model: nn.Module, data: Iterable, *, device: torch.device | str = "cpu", progress: bool = False,
            desc: str = "eval") -> torch.Tensor:
    """Per-image top-1 correctness (bool, in the data's order): what paired comparisons of two models need."""
    logits, labels = predict(model, data, device=device, progress=progress, desc=desc)
    if labels is None:
        raise ValueError("accuracy needs labelled batches")
    return logits.argmax(1) == labels
