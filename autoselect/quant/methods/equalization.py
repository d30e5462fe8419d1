"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1; AIMET's
``equalize_model``, Brevitas' ``EqualizeGraph``).

For a pair of layers where the first one's output channel ``c`` (through its folded BatchNorm and a ReLU, ReLU6 or
nothing) is only read by the second one as input channel ``c``, scaling that channel by ``1 / s_c`` in the first
layer (weight row and bias) and by ``s_c`` in the second layer's weight column leaves the float function unchanged
(ReLU is positively homogeneous). With ``s_c = sqrt(r1_c / r2_c)`` — ``r1_c`` the range of the first layer's row,
``r2_c`` that of the second layer's column — both become ``sqrt(r1_c r2_c)``: the channels' ranges are equalized,
so that one per-tensor weight scale fits every channel of both layers. Chains (MobileNetV2's expand → depthwise →
project) are equalized pair by pair until the scales stop moving.

A ReLU6 between the two is a clip at ``6 / s_c`` per channel after scaling, which no integer kernel has: like
Brevitas (and unlike AIMET, whose CLE then leaves MobileNetV2 almost unchanged), the ReLU6 becomes a ReLU in both the
simulation and the export, and the consumer's calibrated input grid does the clipping. This changes the float model
slightly; the swapped activations are listed in ``model.autoselect_equalized``.

It is a ``transform``: it runs on the float (BN-folded) weights before the activations are calibrated, and the
export carries it because it only changes weights, biases and activation modules. A layer asks for it with
``QuantSpec.equalize`` (the consumer of the pair); smoothed layers are left alone (their scale is fixed when they
are wrapped).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from autoselect.quant.bn_fold import set_submodule
from autoselect.quant.dwconv import is_depthwise
from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import MethodContext, register_method

__all__ = ["ROUNDS", "equalize_pairs"]

ROUNDS = 20  # passes over the pairs at most; AIMET and Brevitas converge within a few
_TOL = 1e-4


def _equalizable(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and (layer.groups == 1
                                                                               or is_depthwise(layer)))


def _row_range(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """Range of each output channel's weights."""
    return layer.weight.detach().abs().flatten(1).amax(dim=1)


def _col_range(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """Range of the weights that read each input channel (depthwise: input channel c is output channel c)."""
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
        return w.flatten(1).amax(dim=1)
    return w.transpose(0, 1).flatten(1).amax(dim=1)


@torch.no_grad()
def _scale_pair(first: nn.Conv2d | nn.Linear, second: nn.Conv2d | nn.Linear) -> float:
    r1, r2 = _row_range(first), _col_range(second)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / r2.clamp(min=1e-12)), torch.ones_like(r1))
    first.weight.div_(s.view(-1, *[1] * (first.weight.dim() - 1)))
    if first.bias is not None:
        first.bias.div_(s)
    if isinstance(second, nn.Conv2d) and second.groups > 1:
        second.weight.mul_(s.view(-1, 1, 1, 1))
    else:
        second.weight.mul_(s.view(1, -1, *[1] * (second.weight.dim() - 2)))
    return float(s.log().abs().max())


def equalize_pairs(model: nn.Module, pairs: list[tuple[str, str, str | None]], *, rounds: int = ROUNDS) -> int:
    """Equalize each ``(producer, consumer, activation path)`` pair of QuantLayer paths; ReLU6 in between become
    ReLU. Returns the number of passes made."""
    for _, _, act_path in pairs:
        if act_path is not None and isinstance(model.get_submodule(act_path), nn.ReLU6):
            set_submodule(model, act_path, nn.ReLU())
    done = 0
    for done in range(1, rounds + 1):
        moved = 0.0
        for first, second, _ in pairs:
            p, c = model.get_submodule(first), model.get_submodule(second)
            assert isinstance(p, QuantLayer) and isinstance(c, QuantLayer)
            moved = max(moved, _scale_pair(p.layer, c.layer))
        if moved < _TOL:
            break
    return done


def _pairs(ctx: MethodContext) -> list[tuple[str, str, str | None]]:
    if ctx.graph is None:
        return []
    info = {i.path: i for i in ctx.graph}
    pairs = []
    for path in ctx.paths:
        me = info.get(path)
        if me is None or me.fed_by is None or me.fed_by not in info:
            continue
        src = info[me.fed_by]
        p, c = ctx.layer(src.path), ctx.layer(path)
        if (src.activation not in (None, "ReLU", "ReLU6") or src.out_channels != me.in_channels
                or not (_equalizable(p.layer) and _equalizable(c.layer))
                or p.smooth_scale is not None or c.smooth_scale is not None):
            continue
        pairs.append((src.path, path, src.activation_path))
    return pairs


@register_method("equalize", kind="transform", order=0, selects=lambda spec: spec.equalize)
def _run(ctx: MethodContext) -> None:
    pairs = _pairs(ctx)
    equalize_pairs(ctx.model, pairs)
    for first, _, act_path in pairs:
        layer = ctx.layer(first)
        if layer.followed_by == "ReLU6":
            layer.followed_by = "ReLU"
    done = list(getattr(ctx.model, "autoselect_equalized", []))
    ctx.model.autoselect_equalized = done + [f"{a} -> {b}" for a, b, _ in pairs]  # type: ignore[assignment]
