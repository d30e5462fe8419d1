"""NNCF (OpenVINO) post-training quantization rows: ``nncf.quantize`` on the PyTorch model, BN folded into the convs
first (NNCF's PyTorch backend would otherwise quantize the conv weights before BN), evaluated with NNCF's own
fake-quantize modules in PyTorch.

Pipelines:
  minmax   nncf.quantize with bias correction disabled (MinMax range setting only), PyTorch (nn.Module) backend
  fbc      nncf.quantize defaults: MinMax + FastBiasCorrection, PyTorch (nn.Module) backend
  bc_fx    MinMax + BiasCorrection (fast_bias_correction=False) on the torch.fx backend (model captured with
           torch.export): NNCF 3.4's nn.Module backend refuses fast_bias_correction=False ("not supported"), its
           torch.fx backend implements it. 8-bit weights only: the fx backend writes 4-bit weight quantizers as
           int8-range quantize/dequantize ops (quant_min -128, quant_max 127, zero point 8), i.e. not 4-bit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NNCF_CI", "1")  # NNCF's own switch that turns its telemetry off (no network here anyway)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["minmax", "fbc", "bc_fx"]


def skip(pipeline: str, regime: common.Regime) -> str | None:
    if regime.act_bits != 8:
        return ("NNCF 3.4's hardware setups have no activation quantizer below 8 bits: nncf.quantize with 4-bit "
                "activations raises 'Quantization parameter constraints ... incompatible with HW capabilities' "
                "(NPU, the only setup with 4-bit weights)")
    if regime.weight_bits not in (4, 8):
        return (f"NNCF 3.4's hardware setups (CPU/ANY, GPU, NPU) offer only 2/4/8/16-bit weight quantizers; "
                f"nncf.quantize rejects {regime.weight_bits}-bit weights")
    if pipeline.endswith("_fx") and regime.weight_bits != 8:
        return ("NNCF 3.4's torch.fx backend (the only one with BiasCorrection for PyTorch) emits 4-bit weight "
                "quantizers as int8-range Q/DQ ops (quant_min -128, quant_max 127, zero point 8): the weights would "
                "not be 4-bit")
    return None


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    import torch
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)
    from nncf.common.quantization.structs import QuantizationScheme

    fx = pipeline.endswith("_fx")
    # 8-bit: the CPU/ANY setup (symmetric 8-bit weights there are narrow-range only); 4-bit: only the NPU setup
    # has 4-bit weight quantizers (q4_w: symmetric, per-tensor or per-channel, full range).
    target = nncf.TargetDevice.ANY if regime.weight_bits == 8 else nncf.TargetDevice.NPU
    model = common.fold_batchnorm(ctx.fp32_model())
    batches = ctx.calib_batches()
    dataset = nncf.Dataset(batches)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE,
        disable_bias_correction=pipeline == "minmax",
        weights_quantization_params=QuantizationParameters(
            num_bits=regime.weight_bits, mode=QuantizationScheme.SYMMETRIC, per_channel=regime.per_channel,
            narrow_range=None),
        activations_quantization_params=QuantizationParameters(
            num_bits=regime.act_bits, mode=QuantizationScheme.ASYMMETRIC, per_channel=False),
    )
    timer = common.Timer()
    with timer:
        if fx:
            batch = torch.export.Dim("batch", min=1, max=4096)
            model = torch.export.export(model, (batches[0],), dynamic_shapes=({0: batch},)).module()
        qmodel = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, target_device=target,
                               subset_size=len(batches), fast_bias_correction=pipeline != "bc_fx",
                               advanced_parameters=advanced)
    top1, eval_s = common.timed_eval(ctx, qmodel, set_eval=not fx)

    n_fq = _count_quantizers(qmodel)
    differences = [
        "BN folded by this script before nncf.quantize (common.fold_batchnorm)",
        "activation ranges: NNCF's default range estimator over the calibration batches (mean of per-batch "
        "min/max), not the global min-max",
        "overflow_fix disabled (NNCF's default FIRST_LAYER would use half the first layer's weight range)",
        f"calibration: subset_size={len(batches)} batches of {ctx.args.calib_batch_size} (all calibration images)",
    ]
    if regime.weight_bits == 8:
        differences.append("8-bit symmetric weights are narrow-range [-127, 127] (the only 8-bit symmetric weight "
                           "quantizer in NNCF's CPU/ANY hardware setup)")
    else:
        differences.append("target_device=NPU: the only NNCF hardware setup with 4-bit weights (full range "
                           "[-8, 7]); its other rules (unified scales on Add inputs) come with it")
    if pipeline == "bc_fx":
        differences.append("BiasCorrection uses NNCF's default 20% of subset_size for its statistics "
                           f"({max(int(len(batches) * 0.2), 1)} batches) and its default threshold")
    elif pipeline != "minmax":
        differences.append("FastBiasCorrection with NNCF's default threshold (corrections above it are skipped)")
    settings = (f"{regime.describe()}; preset MIXED; target {target.value}; {'torch.fx (torch.export)' if fx else 'nn.Module'} backend; "
                f"{ {'minmax': 'no bias correction', 'fbc': 'FastBiasCorrection', 'bc_fx': 'BiasCorrection'}[pipeline] }")
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": eval_s, "settings": settings,
            "differences": differences, "extra": {"quantizers": n_fq}}


def _count_quantizers(model) -> int:
    """FakeQuantize-like modules (nn.Module backend) or quantize ops (fx backend) in the result."""
    n = sum(1 for m in model.modules() if "Quantizer" in type(m).__name__ or "FakeQuantize" in type(m).__name__)
    if n == 0 and hasattr(model, "graph"):
        n = sum(1 for node in model.graph.nodes if node.op == "call_function" and "quantize" in str(node.target)
                and "dequantize" not in str(node.target))
    return n


if __name__ == "__main__":
    common.main("nncf", PIPELINES, run, tool="nncf", skip=skip)
