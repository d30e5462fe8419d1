"""Sony Model Compression Toolkit (MCT) post-training quantization rows: ``mct.ptq.pytorch_post_training_quantization``
with a target platform capabilities (TPC) model built the way MCT documents for custom settings (its IMX500 v1.0
``get_op_quantization_configs`` edited, then ``generate_tpc``), evaluated with MCT's fake-quant PyTorch model.

Pipelines:
  minmax      QuantizationErrorMethod.NOCLIPPING (min/max thresholds) for weights and activations, no bias correction
  mse_bc      MCT's defaults: MSE threshold search for weights and activations + weights bias correction
  gptq        mse_bc, then MCT's gradient-based PTQ (``mct.gptq.pytorch_gradient_post_training_quantization``: its
              default EPTQ, Hessian-weighted soft rounding with gradual activation quantization, against the float
              model), GPTQ_EPOCHS passes over the calibration batches
  mp_mse_bc   mse_bc plus MCT's mixed-precision search over per-tensor weights of 8/6/5/4 bits under a weights
              memory budget equal to every weight at the regime's bits (w5pt only: at w4pt the only solution is
              all-4-bit, at w8pt all-8-bit)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["minmax", "mse_bc", "mp_mse_bc", "gptq"]
MP_CANDIDATE_BITS = (8, 6, 5, 4)
GPTQ_EPOCHS = 10  # passes over the calibration batches (MCT's tutorials use single digits to tens)


def build_tpc(regime: common.Regime, mixed_precision: bool):
    from mct_quantizers import QuantizationMethod
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0.tpc import (
        generate_tpc, get_op_quantization_configs)

    base, _mp_list, default = get_op_quantization_configs()
    act = QuantizationMethod.UNIFORM  # asymmetric (min/max-style range with a zero point) per-tensor activations

    def linear(bits: int):
        return base.clone_and_edit(
            attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: bits, "weights_per_channel_threshold": regime.per_channel,
                                        "weights_quantization_method": QuantizationMethod.SYMMETRIC}},
            activation_quantization_method=act, activation_n_bits=regime.act_bits)

    default = default.clone_and_edit(activation_quantization_method=act, activation_n_bits=regime.act_bits)
    if mixed_precision:
        cands = [linear(b) for b in MP_CANDIDATE_BITS]
        return generate_tpc(default_config=default, base_config=cands[0], mixed_precision_cfg_list=cands,
                            name="peers_mp")
    cfg = linear(regime.weight_bits)
    return generate_tpc(default_config=default, base_config=cfg, mixed_precision_cfg_list=[cfg], name="peers")


def skip(pipeline: str, regime: common.Regime) -> str | None:
    if pipeline.startswith("mp") and (regime.per_channel
                                      or not min(MP_CANDIDATE_BITS) < regime.weight_bits < max(MP_CANDIDATE_BITS)):
        return ("mixed-precision row defined for per-tensor budgets strictly between 4 and 8 bits "
                "(budget = all weights at the regime's bits, candidates 8/6/5/4-bit per-tensor): w5pt")
    return None


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    import torch
    import model_compression_toolkit as mct

    mp = pipeline.startswith("mp")
    batches = ctx.calib_batches()

    def representative_data_gen():
        for xb in batches:
            yield [xb]

    if pipeline == "minmax":
        qc = mct.core.QuantizationConfig(activation_error_method=mct.core.QuantizationErrorMethod.NOCLIPPING,
                                         weights_error_method=mct.core.QuantizationErrorMethod.NOCLIPPING,
                                         weights_bias_correction=False)
    else:
        qc = mct.core.QuantizationConfig(activation_error_method=mct.core.QuantizationErrorMethod.MSE,
                                         weights_error_method=mct.core.QuantizationErrorMethod.MSE,
                                         weights_bias_correction=True)
    extra: dict = {}
    ru = None
    if mp:
        core_config = mct.core.CoreConfig(quantization_config=qc,
                                          mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig())
        n_weights = common.count_weights(ctx.fp32_model())
        budget = n_weights * regime.weight_bits / 8.0
        ru = mct.core.ResourceUtilization(weights_memory=budget)
        extra.update({"weights_memory_budget_bytes": budget, "conv_linear_weights": n_weights,
                      "candidate_bits": list(MP_CANDIDATE_BITS)})
    else:
        core_config = mct.core.CoreConfig(quantization_config=qc)
    tpc = build_tpc(regime, mixed_precision=mp)
    model = ctx.fp32_model()
    timer = common.Timer()
    with timer:
        if pipeline == "gptq":
            gptq_config = mct.gptq.get_pytorch_gptq_config(n_epochs=GPTQ_EPOCHS)
            qmodel, _info = mct.gptq.pytorch_gradient_post_training_quantization(
                model, representative_data_gen, core_config=core_config, gptq_config=gptq_config,
                target_platform_capabilities=tpc)
            extra["gptq_epochs"] = GPTQ_EPOCHS
        else:
            qmodel, _info = mct.ptq.pytorch_post_training_quantization(
                model, representative_data_gen, target_resource_utilization=ru, core_config=core_config,
                target_platform_capabilities=tpc)
    qmodel = qmodel.cpu().eval()
    top1, eval_s = common.timed_eval(ctx, qmodel)
    extra.update(_weight_bits(qmodel))

    differences = [
        "MCT folds BN itself; it also applies its default graph rewrites (linear/residual collapsing, "
        "shift-negative correction)",
        "activations: QuantizationMethod.UNIFORM (asymmetric per-tensor)",
        "weights: QuantizationMethod.SYMMETRIC (float thresholds, not MCT's default power-of-two)",
    ]
    if pipeline == "minmax":
        differences.append("thresholds: NOCLIPPING (min/max), no bias correction")
    else:
        differences.append("thresholds: MSE search (MCT default) for weights and activations; weights bias "
                           "correction on")
    if pipeline == "gptq":
        differences.append(f"GPTQ: MCT's default gradient-based PTQ config, {GPTQ_EPOCHS} epochs over "
                           f"{len(batches)} calibration batches of {ctx.args.calib_batch_size}")
    if mp:
        differences.append(f"mixed precision: per-layer weight bits chosen from {list(MP_CANDIDATE_BITS)} under "
                           f"weights_memory={extra['weights_memory_budget_bytes']:.0f} bytes "
                           f"(all weights at {regime.weight_bits} bits); activations stay 8-bit")
    settings = (f"{'mixed-precision weights (8/6/5/4-bit per-tensor), budget ' + regime.name + ', A8 per-tensor asym' if mp else regime.describe()}; "
                f"{'NOCLIPPING' if pipeline == 'minmax' else 'MSE + bias correction'}"
                f"{'; GPTQ ' + str(GPTQ_EPOCHS) + ' epochs' if pipeline == 'gptq' else ''}")
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": eval_s, "settings": settings,
            "differences": differences, "extra": extra}


def _weight_bits(model) -> dict:
    """Weight bit-width per quantized layer of MCT's exported model (from its weight quantizers)."""
    bits, nbytes = {}, 0.0
    for name, m in model.named_modules():
        wq = getattr(m, "weights_quantizers", None)
        if not wq:
            continue
        for attr, q in wq.items():
            nb = getattr(q, "num_bits", None)
            if nb is not None:
                bits[name] = int(nb)
                w = getattr(m, attr, None) if isinstance(attr, str) else None
                if w is None:
                    w = getattr(getattr(m, "layer", None), "weight", None)
                if w is not None:
                    nbytes += w.numel() * int(nb) / 8.0
    hist: dict = {}
    for b in bits.values():
        hist[b] = hist.get(b, 0) + 1
    return {"quantized_weight_layers": len(bits), "weight_bits_histogram": hist, "weights_bytes": nbytes,
            "first_last": [next(iter(bits), None), next(reversed(bits), None)] if bits else []}


if __name__ == "__main__":
    common.main("mct", PIPELINES, run, tool="model-compression-toolkit", skip=skip)
