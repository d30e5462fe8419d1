from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from autoselect.errors import AutoselectError
from autoselect.quant import (
    ActivationObserver,
    QuantSpec,
    TensorQuant,
    calibrate,
    fake_quant,
    fold_batchnorm,
    get_target,
    qparams_from_range,
    quant_layers,
    quantize_model,
    resolve_specs,
    set_mode,
    w8a8,
    weight_qparams,
)
from autoselect.models import build_layer_graph
from tests.helpers import random_batches, tiny_net


def test_integer_ranges():
    assert (TensorQuant(bits=8).qmin, TensorQuant(bits=8).qmax) == (-128, 127)
    assert (TensorQuant(bits=8, symmetric=False).qmin, TensorQuant(bits=8, symmetric=False).qmax) == (0, 255)
    assert TensorQuant(bits=4).qmax == 7
    with pytest.raises(AutoselectError):
        TensorQuant(bits=1)
    with pytest.raises(AutoselectError):
        TensorQuant(observer="kld")
    with pytest.raises(AutoselectError):
        QuantSpec(act=TensorQuant(per_channel=True))


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_matches_torch_reference(symmetric):
    torch.manual_seed(0)
    tq = TensorQuant(bits=6, symmetric=symmetric)
    x = torch.randn(4, 5, 6, 6) * 3
    scale, zp = qparams_from_range(x.min().reshape(1), x.max().reshape(1), tq)
    ours = fake_quant(x, scale[0], zp[0], tq)
    ref = torch.fake_quantize_per_tensor_affine(x, scale[0], zp[0], tq.qmin, tq.qmax)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    w = torch.randn(5, 3, 3, 3)
    ws, wz = weight_qparams(w, TensorQuant(bits=4, symmetric=symmetric, per_channel=True))
    ref = torch.fake_quantize_per_channel_affine(w, ws, wz, 0, *(((-8, 7)) if symmetric else (0, 15)))
    torch.testing.assert_close(fake_quant(w, ws, wz, TensorQuant(bits=4, symmetric=symmetric, per_channel=True)),
                               ref, rtol=0, atol=1e-6)


def test_fake_quant_gradient_is_straight_through_inside_the_range():
    tq = TensorQuant(bits=8, symmetric=False)
    x = torch.tensor([-1.0, 0.2, 0.5, 3.0], requires_grad=True)
    scale, zp = qparams_from_range(torch.tensor([0.0]), torch.tensor([1.0]), tq)
    fake_quant(x, scale[0], zp[0], tq).sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_asymmetric_grid_uses_the_whole_unsigned_range_for_relu_outputs():
    x = torch.rand(1000) * 6
    sym = TensorQuant(bits=8, symmetric=True)
    asym = TensorQuant(bits=8, symmetric=False)
    s_sym, _ = qparams_from_range(x.min().reshape(1), x.max().reshape(1), sym)
    s_asym, _ = qparams_from_range(x.min().reshape(1), x.max().reshape(1), asym)
    assert s_sym.item() == pytest.approx(2 * s_asym.item(), rel=0.01)  # half the levels wasted when symmetric


def test_power_of_two_scales():
    tq = TensorQuant(bits=8, pot=True)
    s, _ = weight_qparams(torch.randn(8, 4) * 0.37, TensorQuant(bits=8, pot=True, per_channel=True))
    assert torch.allclose(torch.exp2(torch.log2(s).round()), s)
    assert tq.describe().endswith("pot")


def test_mse_and_percentile_clip_outliers():
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[0] = 60.0  # one outlier
    errs = {}
    for name in ("minmax", "mse", "percentile"):
        tq = TensorQuant(bits=4, symmetric=True, observer=name, percentile=99.9)
        obs = ActivationObserver(tq)
        for part in x.split(5000):
            obs.update(part)
        s, z = obs.qparams()
        errs[name] = (fake_quant(x, s, z, tq) - x).pow(2).mean().item()
    assert errs["mse"] < errs["minmax"] / 5
    assert errs["percentile"] < errs["minmax"] / 5


def test_mse_weight_range_is_within_a_fine_step_of_the_best_clip():
    """The mse observer's clip ratio is searched finely near 1, where heavy-tailed weights have their optimum: on
    Laplace-distributed weights at 5 bits its error is within 0.2% of a 1,601-ratio brute force (the former
    logspace(-2, 0, 48) grid was up to 1.4% above it)."""
    from autoselect.quant.observers import weight_qparams

    tq = TensorQuant(bits=5, symmetric=True, observer="mse")
    zero = torch.zeros((), dtype=torch.int32)
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(4096, generator=g).sign() * torch.empty(4096).exponential_(generator=g)
        scale, _ = weight_qparams(w, tq)
        err = (fake_quant(w, scale, zero, tq) - w).pow(2).mean().item()
        amax = w.abs().max()
        best = min((fake_quant(w, amax * r / tq.qmax, zero, tq) - w).pow(2).mean().item()
                   for r in torch.linspace(0.2, 1.0, 1601).tolist())
        assert err <= best * 1.002, seed


def test_bn_folding_keeps_outputs(tiny):
    x = torch.randn(4, 3, 32, 32)
    folded = copy.deepcopy(tiny)
    n = fold_batchnorm(folded, build_layer_graph(tiny).bn_pairs())
    assert n == 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), tiny(x), rtol=1e-4, atol=1e-5)


def test_quantize_model_modes_and_fp32_reference(tiny, batches):
    q = quantize_model(tiny, w8a8())
    assert len(quant_layers(q)) == 11
    calibrate(q, batches)
    x = batches[0][0]
    set_mode(q, "fp32")
    torch.testing.assert_close(q(x), tiny(x), rtol=1e-4, atol=1e-5)
    set_mode(q, "quant")
    err8 = (q(x) - tiny(x)).abs().mean()
    q4 = quantize_model(tiny, w8a8(weight_bits=4, act_bits=4))
    calibrate(q4, batches)
    err4 = (q4(x) - tiny(x)).abs().mean()
    assert 0 < err8 < err4
    # the original model is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in tiny.modules())


def test_weight_scales_follow_in_place_updates(tiny, batches):
    q = quantize_model(tiny, w8a8())
    calibrate(q, batches)
    layer = quant_layers(q)["stem.0"]
    s1, _ = layer.weight_qparams()
    with torch.no_grad():
        layer.layer.weight.mul_(2.0)
    s2, _ = layer.weight_qparams()
    torch.testing.assert_close(s2, 2 * s1)


def test_resolve_specs_precedence():
    a, b, c = w8a8(weight_bits=8), w8a8(weight_bits=6), w8a8(weight_bits=4)
    paths = ["f.0", "f.1.dw", "f.2.dw", "head"]
    got = resolve_specs(paths, {"f.2.dw": a, "re:f\\.\\d\\.dw": b, "_default": c, "head": None})
    assert got == {"f.0": c, "f.1.dw": b, "f.2.dw": a, "head": None}
    assert resolve_specs(paths, {"re:f.*": a})["head"] is None
    with pytest.raises(AutoselectError, match="no quantizable layer named 'nope'"):
        resolve_specs(paths, {"nope": a})
    with pytest.raises(AutoselectError, match="bad layer pattern"):
        resolve_specs(paths, {"re:(": a})


def _parts(target: str) -> tuple[TensorQuant, TensorQuant]:
    spec = get_target(target).spec()
    assert spec.weight is not None and spec.act is not None
    return spec.weight, spec.act


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512_vnni"}, "x86-vnni"), ({"avx2", "avx_vnni"}, "x86-vnni"), ({"avx2", "avx512bw"}, "x86-avx2"),
    (None, "x86-avx2"),  # flags unreadable: the 7-bit target, safe on any x86 CPU
])
def test_x86_is_resolved_from_the_cpu_flags(monkeypatch, flags, expected):
    import autoselect.quant.targets as targets

    monkeypatch.setattr(targets, "_cpu_flags", lambda: flags)
    name, why = targets.resolve_target("x86")
    assert name == expected and why
    assert get_target("x86").name == expected
    assert get_target("x86").weight_bits == ((8,) if expected == "x86-vnni" else (7,))
    assert targets.resolve_target("qnnpack") == ("qnnpack", None)


def test_the_cpu_flags_are_read_here():
    from autoselect.quant.targets import _cpu_flags

    flags = _cpu_flags()
    assert flags is None or any(f.startswith(("sse", "avx", "neon", "asimd", "fp")) for f in flags)


def test_targets_follow_mqbench_table():
    assert _parts("tensorrt")[1].symmetric is True
    assert _parts("snpe")[0].per_channel is False and _parts("snpe")[0].symmetric is False
    assert _parts("tvm")[0].pot is True and _parts("tvm")[1].pot is True
    assert _parts("x86-avx2")[0].bits == 7 and _parts("x86-avx2")[1].bits == 8  # against 16-bit saturation
    assert _parts("x86-vnni")[0].bits == 8 and _parts("x86-vnni")[1].bits == 8  # VNNI accumulates in 32 bits
    with pytest.raises(AutoselectError, match="unknown target 'tensorrtt'.*did you mean tensorrt"):
        get_target("tensorrtt")


def test_smoothing_folds_into_the_producer_and_its_relu6_clips_on_the_grid():
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import apply_plan
    from autoselect.quant.simulate import GridClip

    data = random_batches(2)
    plan = Plan(layers={"role:depthwise": LayerAction(smooth=True), "blocks.2.conv.0": LayerAction(smooth=True),
                        "_default": LayerAction()}, target="x86")
    q = apply_plan(tiny_net(), plan, data)
    layers = quant_layers(q)
    assert layers["blocks.1.conv.3"].smooth_folded_into == "blocks.1.conv.0"
    assert layers["blocks.2.conv.0"].smooth_folded_into is None  # reads the block input: keeps its Mul
    clip = q.get_submodule("blocks.1.conv.2")
    assert isinstance(clip, GridClip)
    set_mode(q, "fp32")
    assert clip(torch.full((1, 4, 1, 1), 10.0)).max().item() == 6.0  # calibration and the FP32 reference: ReLU6
    set_mode(q, "quant")
    assert clip(torch.full((1, 4, 1, 1), 10.0)).max().item() == 10.0  # quantized: the consumer's grid clips
    assert len(quant_layers(q)) == len(layers)  # the consumer is not registered twice


def test_planned_size_matches_the_quantized_model():
    """The size a plan will deploy at, computed on the FP32 model (BatchNorm folded into biases), equals the size
    of the model the plan quantizes: mixed bit-widths, per-channel scales and an FP32 layer included."""
    from autoselect.models import build_layer_graph
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import apply_plan, plan_specs, planned_size_bytes, quantized_size_bytes
    from tests.helpers import random_batches, tiny_net

    net = tiny_net()
    graph = build_layer_graph(net, (1, 3, 32, 32))
    paths = graph.paths
    plan = Plan(layers={paths[0]: LayerAction(weight_bits=8), paths[1]: LayerAction(kind="fp32"),
                        "_default": LayerAction(weight_bits=4, rounding="nearest")}, target="generic")
    specs, _ = plan_specs(plan, graph)
    qmodel = apply_plan(net, plan, random_batches(), graph=graph)
    assert planned_size_bytes(net, graph, specs) == quantized_size_bytes(qmodel)
    assert planned_size_bytes(net, graph, plan_specs(Plan(layers={"_default": LayerAction(weight_bits=8)},
                                                          target="generic"), graph)[0]) > quantized_size_bytes(qmodel)


class _SamePadConv(torch.nn.Conv2d):
    """A conv with TensorFlow-style static "same" padding in its own forward (as EfficientNet-Lite ports have)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups)
        self.pad = torch.nn.ZeroPad2d((k // 2 - 1 + stride % 2, k // 2, k // 2 - 1 + stride % 2, k // 2)
                                      if stride == 2 else k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


def test_conv_subclasses_with_their_own_forward_are_simulated_with_it():
    """The quantized layer must run the subclass's forward (here its padding), not Conv2d's: it once ran Conv2d's,
    which gave a 31x31 output where the model computes 32x32."""
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import apply_plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(_SamePadConv(3, 8, 3, 2), torch.nn.ReLU(), _SamePadConv(8, 8, 3, groups=8),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    data = [(torch.randn(8, 3, 64, 64), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    q = apply_plan(model, Plan(layers={"_default": LayerAction()}), data, input_shape=(1, 3, 64, 64))
    x = data[0][0]
    with torch.no_grad():
        assert q[0](x).shape == model[0](x).shape == (8, 8, 32, 32)
        torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.05)
    from autoselect.quant.integer import integer_arithmetic

    with integer_arithmetic(q):  # in the kernels' arithmetic too (with the subclass's bias on the int32 grid)
        assert q[0](x).shape == (8, 8, 32, 32)
        torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.05)
