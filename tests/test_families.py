"""Issue 18's test matrix: every CNN family of torchvision the README names, at two input sizes (32 and 48 pixels,
to keep CI short; trained models at 64 pixels are in RESULTS), quantized for the x86 target of this CPU, exported and
run on onnxruntime.

Two checks per model:

- **every grid**: each tensor the exported model quantizes is quantized on a grid of the simulation (a tensor on a
  range onnxruntime calibrated itself is a requantization the simulation does not have; each such tensor was a
  cause of disagreement: pools and concatenations after a ReLU, an Add before one, the logits);
- **image by image**: the exported model predicts what the simulation predicts about as often as the simulation
  run in float64 predicts what it predicts in float32, and its logits lie within 1.6x of that float64 distance.
  Integer kernels requantize in float32 in their own order, so flips at grid boundaries are expected, as many as
  float precision alone causes; a grid in the wrong place gives far more (measured on GoogLeNet: 4-5x before its
  functional ReLUs were recognized, 2.2-2.4x while its branch pools read the float block input).

The models have random weights with BatchNorm statistics re-estimated on digits (training each family to useful
accuracy here would cost minutes each). MobileNetV2 is covered by test_export.py.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from autoselect import load_images
from autoselect.evaluate import float64_logits
from autoselect.export import export, ort_session
from autoselect.models import create_model
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan
from autoselect.train.baseline import reestimate_bn

pytestmark = pytest.mark.slow

# the smallest member of each family (README: "CNN families measured")
FAMILIES = ("mobilenet_v3_small", "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5",
            "resnet18", "squeezenet1_1", "googlenet", "densenet121")
SIZES = (32, 48)


def _centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(1, keepdims=True)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(_centred(a) - _centred(b)) / np.linalg.norm(_centred(b)))


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_computes_what_the_simulation_computes(tmp_path, family, size):
    torch.manual_seed(0)
    calib = load_images("digits", split="train", input_size=size, limit=64, seed=0)
    test = load_images("digits", split="test", input_size=size, limit=64, seed=0)
    model = create_model(family, num_classes=10)
    reestimate_bn(model, calib.batches(32))
    model.eval()
    q = apply_plan(model, Plan(layers={"_default": LayerAction()}, target="x86"), calib.batches(32),
                   input_shape=(1, 3, size, size))
    exported = export(q, calib.batches(32), tmp_path, input_shape=(1, 3, size, size))
    assert exported.unsimulated_grids == [], f"{family} at {size} px: grids the simulation does not have"
    sess = ort_session(exported.int8_path)
    with torch.no_grad():
        sim = torch.cat([q(x) for x, _ in test.batches(32)]).numpy()
        fp32 = torch.cat([model(x) for x, _ in test.batches(32)]).numpy()
        sim64 = float64_logits(q, test.batches(32)).numpy()  # how far float rounding alone moves the simulation
    int8 = np.concatenate([sess.run(None, {"input": x.numpy()})[0] for x, _ in test.batches(32)])
    if len(set(fp32.argmax(1).tolist())) == 1:
        return  # random SqueezeNet: one class for every image, nothing to compare image by image
    agree, floor_agree = _agree(int8, sim), _agree(sim64, sim)
    err, floor_err = _err(int8, sim), _err(sim64, sim)
    print(f"MATRIX {family} {size} agree {agree:.4f} (f64 {floor_agree:.4f}) err {err:.4f} (f64 {floor_err:.4f}) "
          f"sim-fp32 {_err(sim, fp32):.4f}")
    # integer kernels requantize in float32 differently from the simulation, so flips at grid boundaries are
    # expected, as many as running the simulation itself in float64 gives; a wrong grid gives far more
    assert agree >= floor_agree - 0.1, (f"{family} at {size} px: INT8 and simulation agree on {100 * agree:.1f}% "
                                        f"of images; the simulation in float64 on {100 * floor_agree:.1f}%")
    # measured: 0.97-1.21x on every family; GoogLeNet's pools of float block inputs (fixed) gave 2.2-2.4x
    assert err < 1.6 * floor_err + 1e-3, (f"{family} at {size} px: export {err:.4f} from the simulation, float64 "
                                          f"{floor_err:.4f}")
