from __future__ import annotations

import numpy as np
import pytest
import torch

from autoselect.errors import AutoselectError
from autoselect.export import deploy_model, export, ort_latency_ms, ort_session
from autoselect.plan import LayerAction, Plan
from autoselect.quant import quant_layers, set_mode
from autoselect.quant.apply import apply_plan
from autoselect.quant.targets import detect_x86
from tests.helpers import tiny_net

pytestmark = pytest.mark.slow


def _data(n=4, batch=16, seed=0):
    """Images with a per-image brightness offset, so that the tiny net's logits differ from image to image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        offset = torch.empty(batch, 1, 1, 1).uniform_(-2.0, 2.0, generator=g)
        out.append((torch.randn(batch, 3, 32, 32, generator=g) + offset, torch.zeros(batch, dtype=torch.long)))
    return out


def _model(data):
    """The tiny net with BN statistics fitted to ``data``, so that activations (and logits) vary with the input."""
    model = tiny_net()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            for x, _ in data:
                model(x)
    return model.eval()


def test_deploy_model_is_the_folded_float_model_with_smoothing_folded_or_explicit():
    import copy

    import torch.nn as nn

    from autoselect.models import build_layer_graph

    data = _data()
    # depthwise layers: fed by their expansion conv through ReLU6 alone, so their scale folds into it; the
    # expansion of blocks.2 reads its block's input (shared with the shortcut), so its scale stays a Mul
    # (no bias correction: its delta is a quantized-mode term that the deployed bias carries, see the next test)
    plain = {"bias_correction": False}
    plan = Plan(layers={"role:depthwise": LayerAction(smooth=True, **plain),
                        "blocks.2.conv.0": LayerAction(smooth=True, **plain), "_default": LayerAction(**plain)},
                target="x86")
    model = _model(data)
    q = apply_plan(model, plan, data)
    set_mode(q, "fp32")
    x = data[0][0]
    deployed = deploy_model(q, grid_weights=False)
    assert type(deployed.get_submodule("blocks.2.conv.0")).__name__ == "SmoothedLayer"
    assert not any(type(deployed.get_submodule(f"blocks.{i}.conv.3")).__name__ == "SmoothedLayer" for i in range(3))
    # folded: the expansion's ReLU6 became a ReLU (the integer model's requantization clips instead)
    expected = copy.deepcopy(model)
    graph = build_layer_graph(model)
    for i in range(3):
        act = graph[f"blocks.{i}.conv.0"].activation_path
        assert act is not None and isinstance(deployed.get_submodule(act), nn.ReLU)
        parent, _, name = act.rpartition(".")
        setattr(expected.get_submodule(parent), name, nn.ReLU())
    torch.testing.assert_close(deployed(x), expected(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deployed(3 * x), expected(3 * x), rtol=1e-4, atol=1e-4)


def test_folded_smoothing_exports_without_extra_ops_and_matches_simulation(tmp_path):
    import onnx

    data = _data()
    model = _model(data)
    x = torch.cat([b[0] for b in data])
    ops = {}
    # no bias correction: its delta moves the deployed float model (the yardstick below) towards the simulation
    nb = {"bias_correction": False}
    for name, layers in (("plain", {"_default": LayerAction(**nb)}),
                         ("smoothed", {"role:depthwise": LayerAction(smooth=True, **nb),
                                       "_default": LayerAction(**nb)})):
        q = apply_plan(model, Plan(layers=layers, target="x86"), data)
        res = export(q, data, tmp_path / name, target="x86")
        sess = ort_session(res.int8_path)
        ops[name] = sorted(n.op_type for n in onnx.load(str(res.int8_path)).graph.node)
        with torch.no_grad():
            sim = q(x).numpy()
            fp = deploy_model(q, grid_weights=False)(x).numpy()  # the float model
        real = sess.run(None, {"input": x.numpy()})[0]
        assert (real.argmax(1) == sim.argmax(1)).mean() >= 0.95, name
        assert np.abs(real - sim).mean() < 0.05 * np.abs(fp - sim).mean(), name  # one grid per tensor: exact
    assert "Mul" not in ops["smoothed"]
    assert ops["smoothed"] == ops["plain"]  # the same integer graph: smoothing costs no latency


@pytest.mark.parametrize("target, act", [("x86-avx2", None), ("x86-avx2", "asym"), ("x86-vnni", None),
                                         ("qnnpack", None), ("qnnpack", "sym")])
def test_int8_onnx_matches_simulation(tmp_path, target, act):
    data = _data()
    plan = Plan(layers={"role:depthwise": LayerAction(kind="qat", act=act), "head": LayerAction(kind="fp32"),
                        "_default": LayerAction(act=act)}, target=target)
    q = apply_plan(_model(data), plan, data)
    res = export(q, data, tmp_path, target=target)
    assert res.fp32_layers == ["head"] and res.quantized_layers == 10
    import onnx

    graph = onnx.load(str(res.int8_path)).graph
    int8_weights = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) >= 10  # every quantized conv's weight is stored as int8
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 10
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        sim = q(x).numpy()
        np.testing.assert_allclose(ort_session(res.fp32_path).run(None, {"input": x.numpy()})[0],
                                   deploy_model(q)(x).numpy(), rtol=1e-3, atol=1e-4)  # what was traced
        fp = deploy_model(q, grid_weights=False)(x).numpy()  # the float model
    real = ort_session(res.int8_path).run(None, {"input": x.numpy()})[0]
    assert fp.std(axis=0).mean() > 1e-3  # the logits do depend on the input
    if target == "x86-avx2" or (detect_x86()[0] == "x86-vnni" and act != "sym"):
        # 7-bit weights, or 8-bit ones on a CPU with VNNI (32-bit sums): the integer kernels reproduce the
        # simulation (measured: to about 1e-7, against 5e-4 between the simulation and FP32)
        assert (real.argmax(1) == sim.argmax(1)).mean() >= 0.95
        assert np.abs(real - sim).mean() < 0.05 * np.abs(fp - sim).mean()  # one grid per tensor: exact
        assert np.abs(real - sim).mean() < 0.05 * fp.std(axis=0).mean()
    else:
        # 8-bit weights on a CPU without VNNI may saturate int16 sums (see README), and signed activations are
        # shifted into the unsigned range: the model must still run
        assert np.isfinite(real).all() and real.shape == sim.shape
    assert ort_latency_ms(res.int8_path, (1, 3, 32, 32), runs=5, warmup=1) > 0


def test_export_refuses_what_cannot_run(tmp_path):
    data = _data(n=1)
    q4 = apply_plan(tiny_net(), Plan(layers={"_default": LayerAction(weight_bits=4)}), data)
    with pytest.raises(AutoselectError, match="no integer kernels here"):
        export(q4, data, tmp_path)
    with pytest.raises(AutoselectError, match="4-bit weights; x86-(vnni|avx2) runs 8-bit only"):
        export(q4, data, tmp_path, target="x86")
    assert quant_layers(q4)  # untouched


def test_qoperator_format_writes_integer_ops(tmp_path):
    import onnx

    data = _data(n=2)
    q = apply_plan(_model(data), Plan(layers={"_default": LayerAction()}, target="x86"), data)
    res = export(q, data, tmp_path, quant_format="qoperator")
    ops = {n.op_type for n in onnx.load(str(res.int8_path)).graph.node}
    assert "QLinearConv" in ops and "DequantizeLinear" in ops
    with pytest.raises(AutoselectError, match="quant_format"):
        export(q, data, tmp_path, quant_format="tflite")


def test_learned_steps_are_what_the_export_writes(tmp_path):
    """After QAT with learned steps (LSQ) the exported model carries the trained grids, not the calibrated ones: the
    QuantizeLinear scales of a retrained layer's input and weight are its learned steps, and the integer model
    still agrees with the simulation."""
    import onnx
    from onnx import numpy_helper

    data = _data()
    plan = Plan(layers={"role:depthwise": LayerAction(kind="qat"), "_default": LayerAction()}, target="x86")
    q = apply_plan(_model(data), plan, data)
    layer = quant_layers(q)["blocks.1.conv.3"]
    assert layer.act_learner is not None and layer.weight_learner is not None
    calibrated = float(layer.act_scale)
    with torch.no_grad():  # what training would do, in one move: the grids end away from calibration
        layer.act_learner.log_scale.add_(0.25)
        layer.weight_learner.log_scale.add_(-0.1)
    act_scale = float(layer.act_qparams()[0])
    assert act_scale == pytest.approx(calibrated * np.exp(0.25), rel=1e-5)
    res = export(q, data, tmp_path, target="x86")
    model = onnx.load(str(res.int8_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [float(inits[n.input[1]].reshape(-1)[0]) for n in model.graph.node
              if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1]
    assert any(abs(s - act_scale) < 1e-6 * act_scale for s in scales)
    assert not any(abs(s - calibrated) < 1e-6 * calibrated for s in scales)
    w_scales = layer.weight_qparams()[0].reshape(-1).numpy()
    per_channel = [inits[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   and n.input[1] in inits and inits[n.input[1]].size == w_scales.size]
    assert any(np.allclose(a, w_scales, rtol=1e-5) for a in per_channel)
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        sim = q(x).numpy()
    real = ort_session(res.int8_path).run(None, {"input": x.numpy()})[0]
    assert (real.argmax(1) == sim.argmax(1)).mean() >= 0.95


def test_export_report_warns_when_the_export_disagrees_with_the_simulation(tmp_path, monkeypatch):
    """Agreement is counted image by image: an INT8 model that predicts other classes than the simulation on some
    images is reported, and warned about below 99%, even where the top-1 against the labels would hide it."""
    from autoselect.export import report

    import autoselect.quant.targets as targets

    data = _data()
    q = apply_plan(_model(data), Plan(layers={"_default": LayerAction()}, target="x86-vnni"), data)
    real = report.ort_predictions
    monkeypatch.setattr(targets, "_cpu_flags", lambda: {"avx2", "fma"})  # as if measured on a CPU without VNNI

    def shifted_pred(pred):
        pred[::10] = (pred[::10] + 1) % 10
        return pred

    def shifted(path, batches, **kw):  # what a wrong export would predict: every tenth image another class
        return shifted_pred(real(path, batches, **kw))

    def shifted_logits(logits):  # logits whose argmax is shifted alike: every tenth image the next class
        pred = shifted_pred(logits.argmax(1).numpy())
        return torch.nn.functional.one_hot(torch.as_tensor(pred), logits.shape[1]).float()

    monkeypatch.setattr(report, "ort_predictions", shifted)
    s = report.export_and_measure(q, data, data, tmp_path, input_shape=(1, 3, 32, 32), latency_runs=2,
                                  fp32_model=_model(data))
    assert s["agreement"]["int8_vs_simulated"] <= 90.0 + 1e-9 and s["agreement_images"] == 64
    assert any("the export does not compute what the simulation computes" in w for w in s["warnings"])
    assert 0.0 <= s["agreement"]["simulated_vs_fp32"] <= 100.0
    assert s["measured_on"]["x86_target"] == "x86-avx2" and s["measured_on"]["int8_flags"] == ["avx2"]
    assert any("this CPU has no VNNI" in w for w in s["warnings"])

    # an export that computes what the simulation computes in integer arithmetic (here both shifted alike), where
    # the float32 simulation predicts otherwise: the warning says that the float32 figures are not the export's
    integer = report._integer_logits
    monkeypatch.setattr(report, "_integer_logits",
                        lambda q, test: shifted_logits(torch.as_tensor(integer(q, test))).numpy())
    s = report.export_and_measure(q, data, data, tmp_path / "float32", input_shape=(1, 3, 32, 32), latency_runs=2)
    a = s["agreement"]
    assert a["int8_vs_simulated"] == 100.0 and a["int8_vs_simulated_float32"] <= 90.0 + 1e-9
    assert s["simulated_integer_top1"] == s["int8_top1"]
    assert any("float rounding flips near-ties on this model" in w for w in s["warnings"])


def test_the_simulated_bias_is_the_exported_int32_bias(tmp_path):
    """Integer kernels add the bias on an int32 grid (step: input scale x weight scale); the simulation must add
    that same bias, or its outputs drift from the export's by a fraction of a step per layer, enough to flip
    roundings that spread through the network (issue 18)."""
    import onnx
    from onnx import numpy_helper

    data = _data()
    q = apply_plan(_model(data), Plan(layers={"_default": LayerAction()}, target="x86"), data)
    res = export(q, data, tmp_path, target="x86")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(res.int8_path)).graph.initializer}
    checked = 0
    for path, ql in quant_layers(q).items():
        if f"{path}.bias_quantized" not in inits:
            continue
        exported = inits[f"{path}.bias_quantized"].astype(np.float64) * inits[f"{path}.bias_quantized_scale"]
        np.testing.assert_allclose(ql.quant_bias().detach().double().numpy(), exported, rtol=1e-6, atol=1e-9)
        checked += 1
    assert checked >= 8


def test_the_export_carries_the_simulated_integer_weights(tmp_path):
    """x86-avx2 runs 7-bit weights (onnxruntime's reduce_range): a learned rounding and an MSE-clipped range must
    reach the int8 file exactly, which exporting the float weights would not (onnxruntime rounds them to nearest and
    clamps at 127, not 63)."""
    import onnx
    from onnx import numpy_helper

    data = _data()
    plan = Plan(layers={"_default": LayerAction(rounding="adaround")}, target="x86-avx2")
    q = apply_plan(_model(data), plan, data)
    res = export(q, data, tmp_path, target="x86-avx2")
    graph = onnx.load(str(res.int8_path)).graph
    exported = [numpy_helper.to_array(i) for i in graph.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    simulated = []
    for ql in quant_layers(q).values():
        assert ql.spec is not None and ql.spec.weight is not None and ql.spec.weight.bits == 7
        scale, _ = ql.weight_qparams()
        with torch.no_grad():
            w = ql.quantized_weight()
        simulated.append(torch.round(w / scale.reshape(-1, *[1] * (w.dim() - 1))).to(torch.int8).numpy())
    simulated = [s for s in simulated if s.ndim == 4]
    assert len(exported) == len(simulated) and max(int(np.abs(e).max()) for e in exported) <= 64
    for s in simulated:
        assert any(e.shape == s.shape and np.array_equal(e, s) for e in exported)
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        sim = q(x).numpy()
    real = ort_session(res.int8_path).run(None, {"input": x.numpy()})[0]
    assert (real.argmax(1) == sim.argmax(1)).mean() >= 0.95


class _Branches(torch.nn.Module):
    """An inception block in miniature: two convs and a pool-then-conv branch read the block's input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 1), torch.nn.ReLU())
        self.b = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.MaxPool2d(3, stride=1, padding=1)
        self.c = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 1), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x), self.c(self.pool(x))], 1)


def test_a_pool_reads_the_quantized_block_input_as_simulated(tmp_path):
    """Several quantized layers and a MaxPool read a block's input, itself the float output of a pool: the
    simulation quantizes that input once for every reader, and so must the export (onnxruntime alone gives each
    quantized reader a QDQ pair of its own and leaves the pool on the float tensor)."""
    import onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                _Branches(8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(12, 10)).eval()
    data = _data()
    q = apply_plan(model, Plan(layers={"_default": LayerAction()}, target="x86-vnni"), data)
    res = export(q, data, tmp_path, target="x86-vnni")
    graph = onnx.load(str(res.int8_path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 2
    # the block's pool reads the dequantized block input; the first pool reads the stem's dequantized output
    assert all(producer[n.input[0]] == "DequantizeLinear" for n in pools)
    onnx.checker.check_model(onnx.load(str(res.int8_path)))  # still in topological order
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        sim = q(x).numpy()
    real = ort_session(res.int8_path).run(None, {"input": x.numpy()})[0]
    err = np.linalg.norm(real - sim) / np.linalg.norm(sim)
    assert err < 1e-3, err
