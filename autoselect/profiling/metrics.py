"""The layerwise statistics of seed 000, computed from tensors.

- **range**: max - min of a tensor.
- **average precision** (bits): how much of a per-tensor quantization grid each channel actually uses,
  ``mean_c log2(1 + (2^b - 1) * range_c / range)``. A layer whose channels span very different ranges gets few
  effective bits in its narrow channels, however many the tensor has; this is the "low average precision per
  channel compared to the layer's full quantization range" of seeds 000/001.
- **channel spread**: ``max_c range_c / median_c range_c`` of the (BN-folded) weight; BN folding widens it in
  depthwise layers (seeds 000, 003, 004).
- **QMSE / QCE / QKL**: between FP32 and quantized outputs; at the logits, QCE is the cross-entropy of the quantized
  softmax against the FP32 softmax and QKL is KL(FP32 || quantized).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["channel_ranges", "avg_precision_bits", "weight_stats", "output_metrics"]


def channel_ranges(w: torch.Tensor) -> torch.Tensor:
    rows = w.detach().float().reshape(w.shape[0], -1)
    return rows.max(dim=1).values - rows.min(dim=1).values


def avg_precision_bits(ch_ranges: torch.Tensor, total_range: float, bits: int) -> float:
    if total_range <= 0 or ch_ranges.numel() == 0:
        return 0.0
    levels = (2**bits - 1) * ch_ranges.clamp(min=0) / total_range
    return float(torch.log2(1.0 + levels).mean())


def weight_stats(unfolded: torch.Tensor, folded: torch.Tensor, bits: int) -> dict[str, float]:
    r_unf = float(unfolded.max() - unfolded.min())
    r_fold = float(folded.max() - folded.min())
    ch = channel_ranges(folded)
    med = float(ch.median())
    return {
        "w_range_unfolded": r_unf,
        "w_range": r_fold,
        "bn_fold_range_ratio": r_fold / r_unf if r_unf > 0 else math.nan,
        "w_channel_spread": float(ch.max()) / med if med > 0 else math.inf,
        "w_avg_precision": avg_precision_bits(ch, r_fold, bits),
    }


def output_metrics(fp_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
    p_log = F.log_softmax(fp_logits.float(), dim=1)
    q_log = F.log_softmax(q_logits.float(), dim=1)
    p = p_log.exp()
    out = {
        "qmse": float((fp_logits - q_logits).pow(2).mean()),
        "qce": float(-(p * q_log).sum(dim=1).mean()),
        "qkl": max(0.0, float((p * (p_log - q_log)).sum(dim=1).mean())),  # KL >= 0: no rounding below it
        "agreement": 100.0 * float((fp_logits.argmax(1) == q_logits.argmax(1)).float().mean()),
        "images": float(len(fp_logits)),
    }
    if labels is not None:
        out["top1_fp32"] = 100.0 * float((fp_logits.argmax(1) == labels).float().mean())
        out["top1_quant"] = 100.0 * float((q_logits.argmax(1) == labels).float().mean())
    return out
