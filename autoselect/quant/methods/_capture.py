"""Collecting a layer's input over the calibration images, stopping each forward pass right after it.

:class:`BlockInputs` serves layer-by-layer methods (AdaRound) without a forward pass of the whole model prefix per
layer: it keeps the input of the current block (``LayerInfo.block``) over all calibration images, and the next
block's input is the current block's output when the blocks form a chain (checked on the first batch against a real
forward pass; otherwise the prefix is run again for that block).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from autoselect.data.batches import split_batch

__all__ = ["BlockInputs", "layer_inputs"]

_BATCH = 128


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


class BlockInputs:
    """Inputs of ``model``'s layers, block by block, for layers visited in forward order."""

    def __init__(self, model: nn.Module, data: Iterable, device: torch.device) -> None:
        self.model, self.data, self.device = model, data, device
        self.block: str | None = None
        self.x: torch.Tensor | None = None  # the current block's input, every calibration image

    def _advance(self, block: str) -> None:
        if block == self.block:
            return
        x = None
        if self.block is not None and self.x is not None:
            try:  # the chain: this block's input is the previous block's output?
                chained = self._run(self.model.get_submodule(self.block), self.x)
            except Exception:  # noqa: BLE001 - a block that cannot run on its own input alone: no chain
                chained = None
            if chained is not None:
                first = layer_inputs(self.model, block, [next(iter(self.data))], self.device)
                if first.shape == chained[:len(first)].shape and torch.allclose(first, chained[:len(first)],
                                                                                 rtol=1e-5, atol=1e-6):
                    x = chained
        self.block = block
        self.x = x if x is not None else layer_inputs(self.model, block, self.data, self.device)

    @torch.no_grad()
    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(xb.to(self.device)).cpu() for xb in x.split(_BATCH)])

    def block_input(self, block: str) -> torch.Tensor:
        """The input of ``block`` over all calibration images, with the model as it is now."""
        self._advance(block)
        assert self.x is not None
        return self.x

    def __call__(self, block: str | None, path: str) -> torch.Tensor:
        """The input of layer ``path`` (inside ``block``) over all calibration images, with the model as it is
        now (earlier layers' methods applied); ``block`` None (no layer graph): the whole prefix is run for it."""
        if block is None:
            return layer_inputs(self.model, path, self.data, self.device)
        self._advance(block)
        assert self.x is not None
        module = self.model.get_submodule(block)
        rel = path[len(block) + 1:] if path.startswith(block + ".") else ""
        if path != block and not rel:
            return layer_inputs(self.model, path, self.data, self.device)
        return layer_inputs(module, rel, self.x.split(_BATCH), self.device)
