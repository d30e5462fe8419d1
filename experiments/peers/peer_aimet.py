"""AIMET (Qualcomm, aimet-torch 2.x) post-training quantization rows, following AIMET's documented PTQ workflow:
prepare_model -> fold_all_batch_norms / equalize_model (CLE: BN fold + cross-layer scaling + high-bias fold)
-> [Adaround.apply_adaround] -> QuantizationSimModel (+ set_and_freeze_param_encodings) -> compute_encodings,
evaluated with the QuantizationSimModel (AIMET's fake-quant simulation in PyTorch).

Pipelines:
  ptq            BN folded (fold_all_batch_norms), QuantSim with AIMET's default min_max scheme
  cle            + CLE (equalize_model); ReLU6 swapped for ReLU first (see below)
  adaround       BN folded + AdaRound (no CLE, ReLU6 kept)
  cle_adaround   CLE + AdaRound (AIMET's recommended PTQ sequence)

ReLU6: since aimet-torch 2.4 equalize_model no longer turns ReLU6 into ReLU, so it skips every conv-ReLU6-conv pair,
which on MobileNetV2 is nearly all of them; AIMET's warning tells users to swap ReLU6 for ReLU themselves, which is
what the cle pipelines do (the FP32 top-1 after the swap is recorded in the JSON's extra).
Bias correction: the aimet-torch 2.42.0 wheel has no bias-correction module (aimet_torch.bias_correction of earlier
releases is gone; only the high-bias fold inside CLE remains), so there is no bias-correction row.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["ptq", "cle", "adaround", "cle_adaround"]


def _config_file(tmp: Path, per_channel: bool) -> str:
    """AIMET's default quantsim config with per-channel weights switched on or off for every op."""
    import aimet_torch
    src = Path(aimet_torch.__file__).parent / "common" / "quantsim_config" / "default_config.json"
    cfg = json.loads(src.read_text())
    cfg["defaults"]["per_channel_quantization"] = "True" if per_channel else "False"
    cfg["defaults"]["params"]["is_symmetric"] = "True"
    cfg["defaults"]["ops"]["is_symmetric"] = "False"  # asymmetric activations (AIMET's default, made explicit)
    cfg["defaults"]["strict_symmetric"] = "False"
    out = tmp / f"quantsim_{'pc' if per_channel else 'pt'}.json"
    out.write_text(json.dumps(cfg, indent=2))
    return str(out)


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    import torch
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    cle = pipeline.startswith("cle")
    ada = pipeline.endswith("adaround")
    tmp = Path(tempfile.mkdtemp(prefix="aimet_"))
    config = _config_file(tmp, regime.per_channel)
    dummy = ctx.dummy_input()
    batches = ctx.calib_batches()
    extra: dict = {}

    def forward_pass(model, _args=None):
        with torch.no_grad():
            for xb in batches:
                model(xb)

    model = ctx.fp32_model()
    if cle and ctx.model_kind == "mobilenet_v2":
        common.relu6_to_relu(model)
        extra["fp32_top1_relu6_to_relu"] = round(ctx.evaluate(model), 4)
    timer = common.Timer()
    with timer:
        model = prepare_model(model)
        if cle:
            equalize_model(model, dummy_input=dummy)  # folds BN, then cross-layer scaling + high-bias fold
        else:
            fold_all_batch_norms(model, input_shapes=None, dummy_input=dummy)
        param_scheme = QuantScheme.min_max
        if ada:
            from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
            param_scheme = QuantScheme.post_training_tf_enhanced  # apply_adaround's default
            loader = ctx.calib_loader(with_labels=False)
            params = AdaroundParameters(data_loader=loader, num_batches=len(loader),
                                        default_num_iterations=ctx.args.adaround_iters,
                                        forward_fn=lambda m, x: m(x))
            model = Adaround.apply_adaround(model, dummy, params, path=str(tmp), filename_prefix="adaround",
                                            default_param_bw=regime.weight_bits,
                                            default_quant_scheme=param_scheme, default_config_file=config)
        # Below 8-bit activations: AIMET's SQNR-based range (tf_enhanced), which its docs recommend over min-max
        # for low bit-widths; 8 bits keep min_max (the rows measured before this regime existed).
        act_scheme = QuantScheme.min_max if regime.act_bits == 8 else QuantScheme.post_training_tf_enhanced
        sim = QuantizationSimModel(model, dummy_input=dummy, quant_scheme=act_scheme,
                                   default_output_bw=regime.act_bits, default_param_bw=regime.weight_bits,
                                   config_file=config)
        if ada:
            sim.set_and_freeze_param_encodings(encoding_path=str(tmp / "adaround.encodings"))
        sim.compute_encodings(forward_pass)
    shutil.rmtree(tmp, ignore_errors=True)
    top1, eval_s = common.timed_eval(ctx, sim.model)
    extra.update(_quantizer_summary(sim.model))
    if ada:
        extra["adaround_iters"] = ctx.args.adaround_iters
        extra["adaround_batches"] = len(batches)

    differences = [
        "activation (and, without AdaRound, weight) ranges: AIMET's "
        + ("min_max scheme" if regime.act_bits == 8 else "tf_enhanced (SQNR) scheme, as below 8-bit activations"),
        f"{regime.act_bits}-bit activation quantizers on every op output AIMET's default config marks (supergroups Conv+ReLU, "
        "Conv+Clip(ReLU6), Add+ReLU fused), model input and the logits quantized too; bias FP32",
    ]
    if ada:
        differences.append(f"AdaRound: {ctx.args.adaround_iters} iterations per layer (AIMET's default is 10,000; "
                           f"15,000 below 8 bits), weight ranges by apply_adaround's default tf_enhanced (SQNR) "
                           f"scheme, {len(batches)} batches of {ctx.args.calib_batch_size}")
    if cle and ctx.model_kind == "mobilenet_v2":
        differences.append("ReLU6 replaced by ReLU before CLE (aimet-torch>=2.4 leaves conv-ReLU6-conv pairs "
                           "unscaled and tells users to swap); the following activation quantizer clips")
    differences.append("no bias correction: aimet-torch 2.42.0 ships no bias-correction API")
    settings = (f"{regime.describe()}; BN folded; {'CLE' if cle else 'no CLE'}"
                f"{'; AdaRound ' + str(ctx.args.adaround_iters) + ' it' if ada else ''}; QuantSim {'min_max' if regime.act_bits == 8 else 'tf_enhanced'}")
    return {"top1": top1, "calib_seconds": timer.seconds, "eval_seconds": eval_s, "settings": settings,
            "differences": differences, "extra": extra}


def _quantizer_summary(model) -> dict:
    """How many weight quantizers are enabled, and their bit-widths (to check first/last layers are quantized)."""
    import torch.nn as nn
    w, bits, names, per_channel = 0, set(), [], set()
    for name, m in model.named_modules():
        pq = getattr(m, "param_quantizers", None)
        if pq is None or not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        q = pq["weight"] if "weight" in pq else None
        if q is not None:
            w += 1
            bits.add(int(getattr(q, "bitwidth", 0) or 0))
            shape = tuple(getattr(q, "shape", ()) or ())
            per_channel.add(bool(shape) and max(shape) > 1)
            names.append(name)
    return {"weight_quantizers": w, "weight_bits_seen": sorted(bits), "per_channel_seen": sorted(per_channel),
            "first_last_quantized": [names[0], names[-1]] if names else []}


if __name__ == "__main__":
    common.main("aimet", PIPELINES, run, tool="aimet-torch")
