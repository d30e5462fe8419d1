"""Collecting a layer's input over the calibration images, stopping each forward pass right after it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from autoselect.data.batches import split_batch

__all__ = ["layer_inputs"]


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_inputs(model: nn.Module, path: str, data: Iterable, device: torch.device) -> torch.Tensor:
    """The input tensor of ``model``'s submodule ``path`` for every batch of ``data``, concatenated on the CPU.
    Each forward pass stops at that module, so collecting early layers costs a fraction of a pass."""
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach().cpu())
        raise _Stop

    handle = model.get_submodule(path).register_forward_pre_hook(grab)
    try:
        for batch in data:
            x, _ = split_batch(batch)
            try:
                model(x.to(device))
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(seen)
