"""autoselect rows for the peer benchmark, run with the python autoselect is installed in.

Pipelines:
  * ``ptq``: plain PTQ (min-max weights, round to nearest, no correction): a plan whose layers all say
    ``{"action": "freeze", "rounding": "nearest", "bias_correction": false, "equalize": false}``, with
    ``"observers": {"weight": "minmax"}``;
  * ``freeze``: a plan that says only ``freeze`` for every layer, so each layer gets autoselect's default
    post-training methods for the regime (autoselect.quant.methods.defaults: equalization for per-tensor weights,
    MSE weight ranges, AdaRound below 5 bits, bias correction);
  * ``freeze_nearest``: the same defaults but rounding to nearest (``"rounding": "nearest"``): the cheap treatment;
  * ``freeze_brecq``: the same defaults but block reconstruction with QDrop (``"rounding": "brecq"``) in place of
    AdaRound.

Same checkpoint, calibration images and test images as every peer (common.Context); BN folded before weight
quantization, symmetric weights at the regime's bits and granularity, asymmetric per-tensor activations
(min-max at 8 bits; below 8 bits the plan's default, MSE ranges), every conv/linear quantized with its input (the model input included). The timed part is
``apply_plan`` (BN folding, calibration and the methods).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["ptq", "freeze", "freeze_nearest", "freeze_brecq"]


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    from autoselect.plan import LayerAction, Plan
    from autoselect import apply_plan
    from autoselect.quant.simulate import quant_layers

    if not regime.weight_symmetric or regime.act_symmetric:
        raise common.Skip("this runner maps only symmetric weights with asymmetric activations")
    target = "generic" if regime.per_channel else "generic-pt"
    fields: dict = {"weight_bits": regime.weight_bits}
    observers: dict = {}
    if regime.act_bits == 8:
        observers["act"] = "minmax"  # below 8 bits: the plan's default (MSE activation ranges)
    else:
        fields["act_bits"] = regime.act_bits
    # weight ranges: the methods' default (mse) unless the pipeline names one
    if pipeline == "ptq":
        fields.update(rounding="nearest", bias_correction=False, equalize=False)
        observers["weight"] = "minmax"
    elif pipeline == "freeze_nearest":
        fields.update(rounding="nearest")
    elif pipeline == "freeze_brecq":
        fields.update(rounding="brecq")
    plan = Plan(layers={"_default": LayerAction(**fields)}, target=target, observers=observers)
    model = ctx.fp32_model()
    timer = common.Timer()
    with timer:
        qmodel = apply_plan(model, plan, ctx.calib_batches(128), input_shape=ctx.input_shape)
    specs = {ql.spec.describe() for ql in quant_layers(qmodel).values() if ql.spec is not None}
    evaluation = common.Timer()
    with evaluation:
        top1 = ctx.evaluate(qmodel)
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": evaluation.seconds,
            "settings": f"autoselect plan target={target}; " + "; ".join(sorted(specs)),
            "extra": {"method_seconds": {k: round(v, 2) for k, v in qmodel.autoselect_method_seconds.items()},
                      "equalized_pairs": len(getattr(qmodel, "autoselect_equalized", []))}}


if __name__ == "__main__":
    common.main("autoselect", PIPELINES, run, tool="autoselect")
