"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Each weight is rounded up or down, not to nearest: a continuous variable ``V`` per weight gives the soft rounding
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, and ``V`` is learned, layer by layer in forward order,
to reconstruct the layer's float output from its input in the quantized model (whose earlier layers are already
rounded), on the calibration images, without labels:

    min_V  || f(W_soft * Q(x_q) + b) - f(W * x_fp + b) ||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

``x_fp`` is the layer's input in the float model, ``Q`` the layer's own input quantizer and ``f`` the ReLU/ReLU6 that
follows the layer (the paper's asymmetric reconstruction, with the activation). The regularizer, off for the first
20% of the iterations, then with ``beta`` annealed from 20 to 2, drives every ``h`` to 0 or 1. The weight's scale is
the one its observer chose (min-max or MSE); AdaRound only decides the integers. Settings follow aimet-torch's
defaults (``reg_param`` 0.01, ``beta_range`` (20, 2), ``warm_start`` 0.2, Adam at 1e-3) except the number of
iterations (aimet: 10,000 per layer; here :data:`ITERATIONS`, the peers benchmark ran aimet at 500).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import MethodContext, register_method
from autoselect.quant.methods._capture import layer_inputs

__all__ = ["ITERATIONS", "adaround_layer"]

ZETA, GAMMA = 1.1, -0.1
ITERATIONS = 1000
BATCH = 32
REG = 0.01
BETA = (20.0, 2.0)
WARMUP = 0.2
LR = 1e-3


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _activation(name: str | None):
    return {"ReLU": F.relu, "ReLU6": F.relu6}.get(name or "", lambda t: t)


def adaround_layer(ql: QuantLayer, x_q: torch.Tensor, x_fp: torch.Tensor, reference: QuantLayer, *,
                   iterations: int = ITERATIONS, batch: int = BATCH, seed: int = 0) -> float:
    """Learn the rounding of ``ql``'s weight from its inputs in the quantized (``x_q``) and float (``x_fp``) model
    and fix it (``QuantLayer.fix_weight``). ``reference``: the layer before any method ran. Returns the final
    reconstruction error relative to the error of rounding to nearest (below 1: better)."""
    assert ql.spec is not None and ql.spec.weight is not None
    tq = ql.spec.weight
    device = ql.layer.weight.device
    scale, zp = ql.weight_qparams()
    w = ql.effective_weight().detach()
    shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
    s, z = scale.view(shape).to(w), zp.view(shape).to(w)
    w_div = w / s
    floor = torch.floor(w_div)
    rest = (w_div - floor).clamp(0.0, 1.0)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).clamp(-20.0, 20.0).requires_grad_(True)
    lo, hi = tq.qmin - z, tq.qmax - z  # integer range around the zero-point

    with torch.no_grad():
        x_in = ql.quantize_input(x_q.to(device)).cpu()
        target = torch.cat([_act(ql)(reference.layer(xb.to(device))).cpu() for xb in x_fp.split(256)])

    def out(x: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
        return _act(ql)(ql._run(x, w_int * s))

    def recon(w_int: torch.Tensor) -> float:
        with torch.no_grad():
            err = sum(float((out(xb.to(device), w_int) - tb.to(device)).pow(2).sum())
                      for xb, tb in zip(x_in.split(256), target.split(256)))
        return err

    nearest_err = recon(torch.clamp(torch.round(w_div), lo, hi))
    opt = torch.optim.Adam([v], lr=LR)
    gen = torch.Generator().manual_seed(seed)
    n = x_in.shape[0]
    warm = int(WARMUP * iterations)
    with torch.enable_grad():
        for it in range(iterations):
            idx = torch.randint(0, n, (min(batch, n),), generator=gen)
            xb, tb = x_in[idx].to(device), target[idx].to(device)
            w_soft = torch.clamp(floor + _h(v), lo, hi)
            loss = (out(xb, w_soft) - tb).pow(2).sum(1).mean()
            if it >= warm:
                progress = (it - warm) / max(1, iterations - warm)
                beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * progress))
                loss = loss + REG * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        w_int = torch.clamp(floor + (_h(v) >= 0.5).to(w), lo, hi)
        final_err = recon(w_int)
        if final_err > nearest_err:  # never worse than rounding to nearest on the calibration images
            w_int, final_err = torch.clamp(torch.round(w_div), lo, hi), nearest_err
        ql.fix_weight(w_int + z, scale, zp)
    return final_err / max(nearest_err, 1e-30)


def _act(ql: QuantLayer):
    return _activation(ql.followed_by)


@register_method("adaround", kind="rounding", order=10, selects=lambda spec: spec.rounding == "adaround"
                 and spec.weight is not None)
def _run(ctx: MethodContext) -> None:
    for i, path in enumerate(tqdm(ctx.paths, desc="adaround", disable=not ctx.progress, leave=False)):
        ql = ctx.layer(path)
        x_q = layer_inputs(ctx.model, path, ctx.data, ctx.device)
        x_fp = layer_inputs(ctx.reference, path, ctx.data, ctx.device)
        adaround_layer(ql, x_q, x_fp, ctx.reference_layer(path), seed=i)
