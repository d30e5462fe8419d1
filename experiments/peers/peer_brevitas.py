"""Brevitas (AMD/Xilinx) post-training quantization rows, following its documented torchvision PTQ flow
(brevitas_examples/imagenet_classification/ptq: preprocess_for_quantize -> quantize_model -> calibrate
-> [GPTQ] -> [bias correction]), with the helpers that example ships.

Pipelines:
  ptq          BN merged, no equalization, activation calibration only (Brevitas' stats calibration)
  cle          + graph equalization (CLE, 20 iterations, merge_bias, Brevitas' example defaults)
  bc           + bias correction (no CLE)
  cle_bc       CLE + bias correction (the example script's defaults)
  gptq_bc      GPTQ + bias correction (no CLE)
  cle_gptq_bc  CLE + GPTQ + bias correction (the mobilenet_v2 rows of RESULTS_TORCHVISION_BEST_CONFIGS.csv)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["ptq", "cle", "bc", "cle_bc", "gptq_bc", "cle_gptq_bc"]
GRAPH_EQ_ITERS = 20  # brevitas_examples default (--graph-eq-iterations)
ACT_PERCENTILE = 99.999  # brevitas_examples default (--act-quant-percentile)


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    import torch
    from brevitas.graph.quantize import preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq.ptq_common import (apply_bias_correction, apply_gptq,
                                                                           calibrate, quantize_model)

    cle = pipeline.startswith("cle")
    bc = pipeline.endswith("bc")
    gptq = "gptq" in pipeline
    loader = ctx.calib_loader()
    model = ctx.fp32_model()
    extra: dict = {"graph_eq_iterations": GRAPH_EQ_ITERS if cle else 0, "act_quant_percentile": ACT_PERCENTILE}
    timer = common.Timer()
    with timer:
        model = preprocess_for_quantize(model, equalize_iters=GRAPH_EQ_ITERS if cle else 0,
                                        equalize_merge_bias=True, merge_bn=True)
    if pipeline in ("ptq", "cle") and ctx.model_kind == "mobilenet_v2":
        # Brevitas swaps ReLU6 for ReLU in preprocessing (relu6_to_relu=True): record what that does to FP32.
        extra["fp32_top1_after_preprocess"] = round(ctx.evaluate(model), 4)
    with timer:
        qmodel = quantize_model(
            model, backend="fx", dtype=torch.float32, device="cpu",
            weight_bit_width=regime.weight_bits, weight_quant_granularity="per_channel" if regime.per_channel
            else "per_tensor", weight_quant_type="sym", weight_param_method="stats", weight_narrow_range=False,
            act_bit_width=regime.act_bits, act_quant_type="asym", act_param_method="stats",
            act_quant_percentile=ACT_PERCENTILE, act_quant_granularity="per_tensor",
            bias_bit_width=None, scale_factor_type="float_scale", quant_format="int",
            layerwise_first_last_bit_width=regime.weight_bits)
        qmodel.eval()
        with torch.no_grad():  # the example's warm-up forward that initialises some quantizers
            qmodel(ctx.calib_x[:ctx.args.calib_batch_size])
        calibrate(loader, qmodel)
        if gptq:
            apply_gptq(loader, qmodel, act_order=False, use_quant_activations=False, create_weight_orig=True)
        if bc:
            apply_bias_correction(loader, qmodel)
    top1, eval_s = common.timed_eval(ctx, qmodel)
    differences = []
    if ctx.model_kind == "mobilenet_v2":
        differences.append("ReLU6 replaced by ReLU before quantization (Brevitas preprocess default "
                           "relu6_to_relu=True); the following activation quantizer's range does the clipping")
    differences += [
        f"activation ranges: percentile stats ({ACT_PERCENTILE}/{100 - ACT_PERCENTILE:.3f}), Brevitas' default, "
        "not min-max",
        "weight scale: abs-max stats (float scale); bias left in FP32 (bias_bit_width=None)",
    ]
    settings = (f"{regime.describe()}; fx backend; BN merged; "
                f"{'CLE ' + str(GRAPH_EQ_ITERS) + ' it, merge_bias' if cle else 'no CLE'}"
                f"{'; GPTQ (act_order off, FP activations)' if gptq else ''}{'; bias correction' if bc else ''}")
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": eval_s, "settings": settings,
            "differences": differences, "extra": extra}


if __name__ == "__main__":
    common.main("brevitas", PIPELINES, run, tool="brevitas")
