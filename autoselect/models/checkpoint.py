"""Reading and writing FP32 checkpoints, with errors that say what does not fit.

The format is the one of ``shared/fixtures`` (a plain dict, loadable with ``weights_only=True``)::

    {"model": str, "num_classes": int, "input_size": int, "state_dict": {...}, "test_acc": float, "epoch": int,
     "normalize": {"mean": [3 floats], "std": [3 floats]}}

A bare state dict is accepted too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.errors import AutoselectError

__all__ = ["Checkpoint", "read_checkpoint", "load_weights", "save_checkpoint", "file_sha256"]


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    model: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    normalize: dict[str, list[float]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise AutoselectError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise AutoselectError(f"cannot read weights file {p}: {str(exc).splitlines()[0]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise AutoselectError(f"weights file {p} holds neither a state dict nor a checkpoint dict with 'state_dict'")
    norm = meta.get("normalize")
    return Checkpoint(
        state_dict=sd,
        model=meta.get("model"),
        num_classes=meta.get("num_classes"),
        input_size=meta.get("input_size"),
        normalize=norm if isinstance(norm, dict) else None,
        meta=meta,
        sha256=file_sha256(p),
    )


def _head(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_weights(model: nn.Module, ckpt: Checkpoint, *, source: str, model_name: str) -> None:
    """Load ``ckpt`` into ``model`` strictly; on mismatch raise one line naming what does not fit."""
    own = model.state_dict()
    sd = ckpt.state_dict
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) ({_head(shapes, 2)})")
        if missing:
            parts.append(f"{len(missing)} missing ({_head(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_head(unexpected)})")
        hint = ""
        if ckpt.model and ckpt.model != model_name:
            hint = f"; the file was saved for model {ckpt.model!r}"
        elif shapes and ckpt.num_classes is not None:
            hint = f"; the file has num_classes={ckpt.num_classes}"
        raise AutoselectError(f"weights {source} do not fit model {model_name!r}: {'; '.join(parts)}{hint}")
    model.load_state_dict(sd, strict=True)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    num_classes: int,
    input_size: int,
    normalize: dict[str, list[float]],
    **meta: Any,
) -> None:
    """Write a checkpoint in the fixtures' format, atomically."""
    obj = {
        "model": model_name,
        "num_classes": num_classes,
        "input_size": input_size,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalize": normalize,
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
