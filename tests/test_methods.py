"""Post-training methods (autoselect.quant.methods): each improves on plain rounding, lands in the generic layer
state the simulation and the export apply, and leaves the float reference alone."""

from __future__ import annotations

from dataclasses import replace

import torch

from autoselect.quant import calibrate, get_target, quantize_model
from autoselect.quant.methods import ROUNDINGS, run_methods
from autoselect.quant.methods._capture import layer_inputs
from autoselect.quant.methods.adaround import adaround_layer
from autoselect.quant.simulate import quant_layers, set_mode


def _err(q, model, x):
    with torch.no_grad():
        return float((q(x) - model(x)).pow(2).mean())


def test_bias_correction_removes_most_of_the_output_error_and_the_fp32_mode_is_untouched(tiny, batches):
    x = torch.cat([b[0] for b in batches])
    spec = get_target("generic").spec(weight_bits=3)
    plain = quantize_model(tiny, spec)
    calibrate(plain, batches)
    corrected = quantize_model(tiny, replace(spec, bias_correction=True))
    calibrate(corrected, batches)
    assert "bias_correction" in corrected.autoselect_method_seconds
    assert all(ql.bias_delta is not None for ql in quant_layers(corrected).values())
    assert _err(corrected, tiny, x) < 0.5 * _err(plain, tiny, x)
    set_mode(corrected, "fp32")  # the correction is a quantized-mode term only
    with torch.no_grad():
        torch.testing.assert_close(corrected(x), quantize_model(tiny, spec)(x))


def test_adaround_puts_weights_on_the_grid_and_reconstructs_better_than_nearest(tiny, batches):
    assert "adaround" in ROUNDINGS
    q = quantize_model(tiny, get_target("generic").spec(weight_bits=3))
    calibrate(q, batches)
    path = "blocks.1.conv.0"
    ql = quant_layers(q)[path]
    reference = quantize_model(tiny, get_target("generic").spec(weight_bits=3))
    set_mode(reference, "fp32")
    x_q = layer_inputs(q, path, batches, torch.device("cpu"))
    x_fp = layer_inputs(reference, path, batches, torch.device("cpu"))
    ratio = adaround_layer(ql, x_q, x_fp, quant_layers(reference)[path], iterations=200)
    assert ratio < 1.0  # the learned rounding reconstructs the float output better than rounding to nearest
    s, _ = ql.weight_qparams()
    ints = ql.layer.weight / s.view(-1, 1, 1, 1)
    torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)
    assert ql.weight_scale_fixed is not None  # the export reads these qparams
    assert run_methods(q, batches) == {}  # nothing asked for by the specs: nothing runs
