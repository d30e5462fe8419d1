"""Reading and writing FP32 checkpoints, with errors that say what does not fit.

The format is the one of ``shared/fixtures`` (a plain dict, loadable with ``weights_only=True``)::

    {"model": str, "num_classes": int, "input_size": int, "state_dict": {...}, "test_acc": float, "epoch": int,
     "normalize": {"mean": [3 floats], "std": [3 floats]}}

A bare state dict is accepted too.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autoselect._io import atomic_path
from autoselect.errors import AutoselectError, first_line

__all__ = ["Checkpoint", "read_checkpoint", "load_weights", "save_checkpoint", "file_sha256", "cpu_state_dict"]


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.state_dict()`` that keeps its ``_metadata`` (the per-module versions some
    torchvision models, such as MNASNet, refuse to load without)."""
    from collections import OrderedDict

    own = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v.detach().cpu().clone()) for k, v in own.items())
    meta = getattr(own, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


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
        raise AutoselectError(f"cannot read weights file {p}: {first_line(exc)}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise AutoselectError(f"weights file {p} holds neither a state dict nor a checkpoint dict with 'state_dict'")
    _check_state_dict(sd, p)
    return Checkpoint(
        state_dict=sd,
        model=_meta(meta, "model", str, p),
        num_classes=_meta(meta, "num_classes", int, p),
        input_size=_meta(meta, "input_size", int, p),
        normalize=_normalize(meta.get("normalize"), p),
        meta=meta,
        sha256=file_sha256(p),
    )


def _check_state_dict(sd: dict, p: Path) -> None:
    """Every entry a tensor under a string key; floating-point tensors finite (a NaN or Inf weight quantizes to
    garbage without a word, so it is refused here)."""
    if not sd:
        raise AutoselectError(f"weights file {p} holds an empty state dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise AutoselectError(f"weights file {p}: state dict entry {k!r} is not a named tensor")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise AutoselectError(f"weights file {p}: tensor {k!r} has {bad} non-finite value(s) (NaN or Inf)")


def _meta(meta: dict[str, Any], key: str, kind: type, p: Path) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 1):
        raise AutoselectError(f"weights file {p}: {key!r} must be a{'' if kind is str else ' positive'} "
                              f"{kind.__name__}, got {value!r}")
    return value


def _normalize(norm: Any, p: Path) -> dict[str, list[float]] | None:
    if norm is None:
        return None
    ok = isinstance(norm, dict) and all(
        isinstance(norm.get(k), (list, tuple)) and len(norm[k]) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
        for k in ("mean", "std"))
    if not ok or any(v <= 0 for v in norm["std"]):
        raise AutoselectError(f"weights file {p}: 'normalize' must be {{'mean': [3 numbers], 'std': [3 positive "
                              f"numbers]}}, got {norm!r}"[:300])
    return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}


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
    if getattr(sd, "_metadata", None) is None and getattr(own, "_metadata", None) is not None:
        from collections import OrderedDict  # a bare dict (e.g. saved without metadata): this code's versions

        sd = OrderedDict(sd)
        sd._metadata = own._metadata  # type: ignore[attr-defined]
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
        "state_dict": cpu_state_dict(model),
        "normalize": normalize,
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
