"""autoselect.quant.mlas against onnxruntime itself: each reproduced kernel, run on the same inputs by a one-node ONNX
model, gives the same bits (where onnxruntime runs the AVX2/FMA3 kernels the functions name; elsewhere the test of
the fused-multiply-add variants is skipped, and the families' agreement test still holds the export to 99%)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoselect.quant import mlas
from autoselect.quant.integer import integer_arithmetic
from autoselect.quant.spec import TensorQuant
from autoselect.quant.targets import mlas_fma_kernels

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

U8 = TensorQuant(bits=8, symmetric=False)
fma_only = pytest.mark.skipif(not mlas_fma_kernels(), reason="onnxruntime runs its SSE2 kernels on this CPU")


def _run(node, inputs: dict[str, np.ndarray], initializers=(), domain: str = "") -> np.ndarray:
    elem = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("uint8"): TensorProto.UINT8}
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, elem[v.dtype], list(v.shape)) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(node.output[0])], initializer=list(initializers))
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


@fma_only
def test_logistic_is_onnxruntimes_sigmoid():
    x = (np.random.default_rng(0).standard_normal((16, 257)) * 6).astype(np.float32)
    ours = mlas.logistic(torch.from_numpy(x), fma=True).numpy()
    theirs = _run(helper.make_node("Sigmoid", ["x"], ["y"]), {"x": x})
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(torch.sigmoid(torch.from_numpy(x)).numpy(), theirs)  # PyTorch's differs: why it exists


@pytest.mark.parametrize("hw", [2, 3, 7, 12])
def test_reduce_mean_is_onnxruntimes_summation_order(hw):
    x = (np.random.default_rng(hw).standard_normal((3, 13, hw, hw)) * 4).astype(np.float32)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    theirs = _run(helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1), {"x": x}, [axes])
    assert np.array_equal(mlas.reduce_mean(torch.from_numpy(x)).numpy(), theirs)


@fma_only
def test_qlinear_add_is_onnxruntimes():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (4, 37, 15, 15), dtype=np.uint8) for _ in range(2))
    sa, sb, sc = np.float32(0.0213), np.float32(0.0371), np.float32(0.0457)
    za, zb, zc = np.uint8(131), np.uint8(97), np.uint8(120)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(v)]) for n, v in (("sa", sa), ("sb", sb), ("sc", sc))]
    inits += [helper.make_tensor(n, TensorProto.UINT8, [], [int(v)]) for n, v in (("za", za), ("zb", zb), ("zc", zc))]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft")
    theirs = _run(node, {"a": a, "b": b}, inits, domain="com.microsoft").astype(np.int64) - int(zc)
    t = torch.tensor
    ours = mlas.qlinear_add(t(a.astype(np.float64) - int(za)), t(sa), t(int(za)), t(b.astype(np.float64) - int(zb)),
                            t(sb), t(int(zb)), t(sc), t(int(zc)), U8, fma=True).numpy()
    assert np.array_equal(ours.astype(np.int64), theirs)


def test_integer_arithmetic_leaves_the_model_as_it_was():
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import apply_plan

    from .helpers import tiny_net

    torch.manual_seed(0)
    data = [(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    q = apply_plan(tiny_net(), Plan(layers={"_default": LayerAction()}, target="x86-vnni"), data)
    x = data[0][0]
    with torch.no_grad():
        before = q(x)
    with integer_arithmetic(q):
        integer = q(x)
    with torch.no_grad():
        assert torch.equal(q(x), before)
    assert (integer - before).abs().max() < 0.2 * before.abs().max()  # the same model, rounded otherwise


def test_what_integer_arithmetic_tracks_goes_with_its_tensor():
    """A long evaluation must not keep every batch's integer tensors alive through the tracking of its ops."""
    from autoselect.quant.integer import _OnGrid, _Tracked

    tracked = _Tracked()
    t = torch.ones(3)
    tracked.set(t, _OnGrid(torch.zeros(3), torch.tensor(1.0), torch.tensor(0)))
    assert len(tracked) == 1 and tracked.get(t) is not None
    t.add_(1)  # an in-place change forgets what was known
    assert tracked.get(t) is None
    del t
    assert len(tracked) == 0
