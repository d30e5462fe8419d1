"""Folding BatchNorm into the preceding conv, as deployments do before quantizing weights (seeds 000, 002)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["fold_bn_into_conv", "fold_batchnorm", "set_submodule"]


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """W' = W * gamma / sqrt(var + eps) per output channel; b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    assert bn.running_mean is not None and bn.running_var is not None
    factor = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        factor = factor * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor
    if bn.affine:
        new_bias = new_bias + bn.bias
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.clone(), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module, pairs: dict[str, str]) -> int:
    """Fold each BatchNorm of ``pairs`` (conv path → bn path) into its conv and replace it by Identity."""
    for conv_path, bn_path in pairs.items():
        conv = model.get_submodule(conv_path)
        bn = model.get_submodule(bn_path)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fold_bn_into_conv(conv, bn)
        set_submodule(model, bn_path, nn.Identity())
    return len(pairs)
