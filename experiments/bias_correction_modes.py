"""Bias correction, local against sequential, on the reference checkpoint: every regime's default post-training
pipeline (what a ``freeze`` plan gets: equalization for per-tensor weights, MSE weight ranges, AdaRound below 5 bits
or block reconstruction below 8-bit activations, bias correction), on several calibration draws.

For each regime and draw the model is calibrated twice, once per bias-correction mode
(:data:`autoselect.quant.methods.bias_correction.MODE`), sharing learned roundings (``reuse``): the roundings are
learned before bias correction runs, so both modes correct the same rounded weights and differ only in the
correction. Scored on the test images.

    python experiments/bias_correction_modes.py --regimes w8pt w5pt w4pt w4pc w4pca4 --draws 0 1 2 \
        --out experiments/results/bias_correction_modes.json
"""

from __future__ import annotations

import time
from datetime import date

from _common import apply_threads, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.models.graph import build_layer_graph
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import calibrated_model, plan_specs
from autoselect.quant.methods import bias_correction

REGIMES = {"w8pt": ("generic-pt", 8, None), "w5pt": ("generic-pt", 5, None), "w4pt": ("generic-pt", 4, None),
           "w4pc": ("generic", 4, None), "w4pca4": ("generic", 4, 4), "w4pta4": ("generic-pt", 4, 4),
           "x86": ("x86-vnni", 8, None)}


def main() -> None:
    ap = reference_parser(__doc__, "bias_correction_modes.json")
    ap.add_argument("--regimes", nargs="+", default=["w8pt", "w5pt", "w4pt", "w4pc"], choices=list(REGIMES))
    ap.add_argument("--draws", nargs="+", type=int, default=[0], help="calibration draws (seeds of the train images)")
    ap.add_argument("--modes", nargs="+", default=["local", "sequential"], choices=bias_correction.MODES)
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    test = load_images(args.data, split="test", limit=args.test_images, seed=0).with_normalize(lm.normalize)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    fp32 = accuracy(lm.model, test.batches(500))
    print(f"FP32 {fp32:.2f}% on {len(test)} test images", flush=True)
    rows = []
    for draw in args.draws:
        calib = load_images(args.data, split="train", limit=args.calib_images, seed=draw).with_normalize(lm.normalize)
        for regime in args.regimes:
            target, bits, act_bits = REGIMES[regime]
            plan = Plan(layers={"_default": LayerAction(weight_bits=bits, act_bits=act_bits)}, target=target)
            specs, _ = plan_specs(plan, graph)
            reuse: dict = {}
            for mode in args.modes:
                bias_correction.MODE = mode
                t0 = time.perf_counter()
                q = calibrated_model(lm.model, specs, graph, calib.batches(128), target=target, reuse=reuse)
                calib_s = time.perf_counter() - t0
                row = {"regime": regime, "draw": draw, "mode": mode, "top1": accuracy(q, test.batches(500)),
                       "calib_s": calib_s,
                       "bias_correction_s": q.autoselect_method_seconds.get("bias_correction", 0.0)}
                rows.append(row)
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
                save_result(args.out, {"date": date.today().isoformat(), "fp32_top1": fp32,
                                       "calib_images": args.calib_images, "test_images": len(test), "rows": rows})


if __name__ == "__main__":
    main()
