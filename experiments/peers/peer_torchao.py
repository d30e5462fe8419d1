"""torchao PT2E post-training quantization rows: the documented flow (torch.export -> prepare_pt2e with
X86InductorQuantizer -> calibrate -> convert_pt2e), evaluated by running the converted quantize/dequantize graph
in eager PyTorch (simulated quantization; no lowering to Inductor int8 kernels).

Pipelines:
  ptq   X86InductorQuantizer's default recipe (HistogramObserver uint8 activations, MinMax weights) with the weight
        QuantizationSpec swapped for the regime's (per-tensor/per-channel, 8/5/4-bit range in an int8 container).
        For w8pc this is exactly get_default_x86_inductor_quantization_config(); other regimes keep its
        annotation recipe and activation spec and change only the weight spec.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["ptq"]


def quantization_config(regime: common.Regime):
    import torch
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config)

    base = get_default_x86_inductor_quantization_config(is_qat=False, is_dynamic=False, reduce_range=False)
    qmax = 2 ** (regime.weight_bits - 1) - 1
    qmin = -qmax - 1
    if regime.per_channel:
        obs = PerChannelMinMaxObserver.with_args(eps=2 ** -12)
        qscheme, ch_axis = torch.per_channel_symmetric, 0
    else:
        obs = MinMaxObserver.with_args(eps=2 ** -12)
        qscheme, ch_axis = torch.per_tensor_symmetric, None
    weight = QuantizationSpec(dtype=torch.int8, quant_min=qmin, quant_max=qmax, qscheme=qscheme, ch_axis=ch_axis,
                              is_dynamic=False, observer_or_fake_quant_ctr=obs)
    return QuantizationConfig(base.input_activation, base.output_activation, weight, base.bias, False)


def skip(pipeline: str, regime: common.Regime) -> str | None:
    if regime.act_bits != 8:
        return "X86InductorQuantizer's recipe quantizes activations to uint8 only"
    return None


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    model = ctx.fp32_model()
    example = (ctx.calib_x[:2].clone(),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    timer = common.Timer()
    with timer:
        exported = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
        quantizer = X86InductorQuantizer().set_global(quantization_config(regime))
        prepared = prepare_pt2e(exported, quantizer)  # folds BN into conv, inserts observers
        with torch.no_grad():
            for xb in ctx.calib_batches():
                prepared(xb)
        converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    top1, eval_s = common.timed_eval(ctx, converted, set_eval=False)

    g = converted.graph
    n_q = sum(1 for n in g.nodes if n.op == "call_function" and "quantize_per" in str(n.target)
              and "dequantize" not in str(n.target))
    n_bn = sum(1 for n in g.nodes if n.op == "call_function" and "batch_norm" in str(n.target))
    n_conv = sum(1 for n in g.nodes if n.op == "call_function" and ("conv" in str(n.target)
                                                                     or "linear" in str(n.target)))
    differences = [
        "activation ranges: HistogramObserver (X86InductorQuantizer default), not min-max",
        f"weights: symmetric int8 container restricted to [{-(2 ** (regime.weight_bits - 1))}, "
        f"{2 ** (regime.weight_bits - 1) - 1}], PyTorch's symmetric scale max|w|/((qmax-qmin)/2)",
        "X86InductorQuantizer decides which tensors get Q/DQ (conv/linear inputs and weights, add outputs it can "
        "fuse); evaluated as the converted Q/DQ graph in eager mode (simulation), not lowered to int8 kernels",
    ]
    if not (regime.per_channel and regime.weight_bits == 8):
        differences.append("weight QuantizationSpec replaced (X86InductorQuantizer ships only per-channel int8)")
    if ctx.model_kind == "mobilenet_v2":
        differences.append("ReLU6 (hardtanh) kept as in the FP32 model")
    settings = f"{regime.describe()}; torch.export + prepare_pt2e (BN folded) + convert_pt2e"
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": eval_s, "settings": settings,
            "differences": differences, "extra": {"quantize_nodes": n_q, "conv_linear_nodes": n_conv,
                                                                             "batch_norm_nodes_left": n_bn}}


if __name__ == "__main__":
    common.main("torchao", PIPELINES, run, tool="torchao", skip=skip)
