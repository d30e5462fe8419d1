"""The arithmetic of onnxruntime's CPU kernels (MLAS, and Eigen where onnxruntime uses it), in PyTorch, bit for bit.

What :mod:`autoselect.quant.integer` needs to compute a quantized model as the exported one computes it. Each
function names the kernel it reproduces; each was checked against onnxruntime 1.32 on an AMD EPYC (AVX-512 VNNI;
MLAS's AVX2/FMA3 kernels), element by element (experiments/RESULTS.md, issue 18):

- :func:`quantize`: ``QuantizeLinear``, ``saturate(round_half_even(x / s) + z)``, the division in float32;
- :func:`requantize`: the output stage of ``QLinearConv``/``QGemm``, ``saturate(round_half_even(float32(acc) * m)
  + z)`` with the float32 multiplier ``m = (s_x * s_w) / s_y``;
- :func:`qlinear_add`: ``QLinearAdd``, from the two inputs' stored integers;
- :func:`logistic`: ``Sigmoid``, a rational polynomial evaluated with fused multiply-adds;
- :func:`reduce_mean`: ``ReduceMean`` over H and W of NCHW data, Eigen's summation order (a deployed graph may run
  it on NHWC data, in another order that is not reproduced).

Integers are returned as float64 tensors holding exact integer values ("levels", ``q - z``).
"""

from __future__ import annotations

import torch

from autoselect.quant.spec import TensorQuant

__all__ = ["quantize", "requantize", "qlinear_add", "logistic", "reduce_mean", "fma32"]

# MLAS's logistic (after Eigen's): numerator x^9 ... x^1, denominator x^10 ... x^0
_LOGISTIC_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
               2.48287947061529e-01)
_LOGISTIC_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
               1.16817656904453e-01, 9.93151921023180e-01)


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add (one rounding): the product of two float32 is exact in float64."""
    return (a.double() * b.double() + c.double()).float()


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, tq: TensorQuant, axis: int = 0) -> torch.Tensor:
    """Levels ``saturate(round_half_even(x / scale) + zp) - zp`` (per tensor, or per channel along ``axis``)."""
    x, scale, zp = x.float(), scale.float(), zp.to(torch.float32)
    if scale.dim():
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zp = scale.view(shape), zp.view(shape)
    return (torch.clamp(torch.round(x / scale) + zp, tq.qmin, tq.qmax) - zp).double()


def _clamped(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    """A ReLU/ReLU6 fused into the kernel: the output grid clamps at ``lo``/``hi`` (its own ends do the rest)."""
    if lo is not None:
        q = torch.clamp(q, min=torch.round(lo / s) + z)
    if hi is not None:
        q = torch.clamp(q, max=torch.round(hi / s) + z)
    return (q - z).double()


def requantize(acc: torch.Tensor, step: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, tq: TensorQuant,
               lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Levels of a layer's sums ``acc`` (float32, as the kernel converts int32) on the grid (``scale``, ``zp``):
    ``saturate(round_half_even(acc * m) + zp)``, ``m = step / scale`` in float32, ``step = s_x * s_w``."""
    s, z = scale.float(), zp.float()
    q = torch.clamp(torch.round(acc * (step / s)) + z, tq.qmin, tq.qmax)
    return _clamped(q, s, z, lo, hi)


def qlinear_add(ka: torch.Tensor, sa: torch.Tensor, za: torch.Tensor, kb: torch.Tensor, sb: torch.Tensor,
                zb: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, tq: TensorQuant, *, fma: bool,
                lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Levels of ``a + b`` (levels ``ka``, ``kb`` on their grids) on the grid (``scale``, ``zp``) as ``QLinearAdd``
    computes them: with the float32 ratios ``r_a = s_a / s``, ``r_b = s_b / s`` and ``c = z - (r_a z_a + r_b z_b)``,
    ``saturate(round_half_even(fma(q_a, r_a, fma(q_b, r_b, c))))`` on the AVX2 kernel, ``(c + q_a r_a) + q_b r_b``
    rounded at each step on the SSE2 one (``fma=False``); ``q`` the stored integers."""
    s = scale.float()
    ra, rb = sa.float() / s, sb.float() / s
    za, zb, z = za.float(), zb.float(), zp.float()
    qa, qb = ka.float() + za, kb.float() + zb
    if fma:
        acc = fma32(qa, ra, fma32(qb, rb, z - fma32(ra, za, rb * zb)))
    else:
        acc = ((z - (ra * za + rb * zb)) + qa * ra) + qb * rb
    return _clamped(torch.clamp(torch.round(acc), tq.qmin, tq.qmax), s, z, lo, hi)


def logistic(x: torch.Tensor, fma: bool) -> torch.Tensor:
    """The logistic function as MLAS computes it (onnxruntime's Sigmoid): a rational polynomial in ``x``, clamped
    to [-18, 18], evaluated by Horner's rule with fused multiply-adds on FMA3 kernels (``fma``)."""
    def madd(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return fma32(a, b, c) if fma else a * b + c

    v = x.float().clamp(-18.0, 18.0)
    v2 = v * v
    c = [torch.tensor(k, dtype=torch.float32) for k in _LOGISTIC_P]
    d = [torch.tensor(k, dtype=torch.float32) for k in _LOGISTIC_Q]
    p = madd(v2, c[0], c[1])
    for k in c[2:]:
        p = madd(p, v2, k)
    q = madd(v2, d[0], d[1])
    for k in d[2:]:
        q = madd(q, v2, k)
    return (p * v / q + 0.5).clamp(0.0, 1.0)


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last two dims of a contiguous NCHW tensor as onnxruntime's ReduceMean computes it: each row's
    sum by Eigen's vectorized reduction (4-float packets, two accumulators, from the first 16-byte-aligned element,
    the unaligned head and the tail added after), divided by the row's length."""
    n, c, h, w = x.shape
    rows = x.float().reshape(n * c, h * w)
    k, width = h * w, 4
    out = torch.empty(n * c, dtype=torch.float32)
    heads = (-(torch.arange(n * c) * k)) % width  # elements before each row's first aligned one
    for head in range(width):
        idx = (heads == head).nonzero().flatten()
        if not len(idx):
            continue
        sub = rows[idx]
        start = min(head, k)
        size = k - start
        end2, end1 = start + (size // (2 * width)) * 2 * width, start + (size // width) * width
        if end1 > start:
            p0 = sub[:, start:start + width]
            if end1 - start > width:
                p1 = sub[:, start + width:start + 2 * width]
                for i in range(start + 2 * width, end2, 2 * width):
                    p0, p1 = p0 + sub[:, i:i + width], p1 + sub[:, i + width:i + 2 * width]
                p0 = p0 + p1
                if end1 > end2:
                    p0 = p0 + sub[:, end2:end2 + width]
            res = (p0[:, 0] + p0[:, 2]) + (p0[:, 1] + p0[:, 3])
            for i in [*range(start), *range(end1, k)]:
                res = res + sub[:, i]
        else:
            res = sub[:, 0]
            for i in range(1, k):
                res = res + sub[:, i]
        out[idx] = res
    return (out / k).reshape(n, c, 1, 1).to(x.dtype)
