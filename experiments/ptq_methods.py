"""Post-training methods side by side on the reference checkpoint: each regime x each method combination.

Every row quantizes a fresh copy of the FP32 model (BN folded), calibrates on the same ``--calib-images`` train
images, applies the methods and scores the simulated model on the test images; ``calib_s`` is the wall time of
calibration plus the methods (what a peer's PTQ pipeline time is compared with).

    python experiments/ptq_methods.py --regimes w4pc w4pt w5pt w8pt \
        --methods nearest mse mse+bc mse+ada mse+ada+bc --out experiments/results/ptq_methods.json
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date

from _common import apply_threads, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.quant import calibrate, get_target, quantize_model

REGIMES = {"w8pt": ("generic-pt", 8), "w5pt": ("generic-pt", 5), "w4pt": ("generic-pt", 4),
           "w4pc": ("generic", 4), "w8pc": ("generic", 8)}


def spec_for(regime: str, method: str, act_observer: str):
    target, bits = REGIMES[regime]
    parts = set(method.split("+"))
    spec = get_target(target).spec(weight_bits=bits, weight_observer="mse" if "mse" in parts else "minmax",
                                   act_observer=act_observer)
    return replace(spec, rounding="adaround" if "ada" in parts else "nearest", bias_correction="bc" in parts,
                   equalize="cle" in parts)


def main() -> None:
    ap = reference_parser(__doc__, "ptq_methods.json")
    ap.add_argument("--regimes", nargs="+", default=["w4pc", "w4pt", "w5pt", "w8pt"])
    ap.add_argument("--methods", nargs="+", default=["nearest", "mse", "mse+bc", "mse+ada", "mse+ada+bc"])
    ap.add_argument("--act-observer", default="minmax")
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--adaround-iterations", type=int, default=None,
                    help="AdaRound steps per layer (default: the method's, autoselect.quant.methods.adaround)")
    args = ap.parse_args()
    apply_threads(args)
    if args.adaround_iterations is not None:
        from autoselect.quant.methods import adaround

        adaround.ITERATIONS = args.adaround_iterations
    lm = load_model(args.model, weights=args.weights)
    calib = load_images(args.data, split="train", limit=args.calib_images, seed=0).with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.test_images, seed=0).with_normalize(lm.normalize)
    rows = [{"regime": "fp32", "method": "-", "top1": accuracy(lm.model, test.batches(500)), "calib_s": 0.0}]
    print(f"FP32 {rows[0]['top1']:.2f}% on {len(test)} test images", flush=True)
    for regime in args.regimes:
        for method in args.methods:
            spec = spec_for(regime, method, args.act_observer)
            q = quantize_model(lm.model, spec)
            t0 = time.perf_counter()
            calibrate(q, calib.batches(128))
            secs = time.perf_counter() - t0
            top1 = accuracy(q, test.batches(500))
            rows.append({"regime": regime, "method": method, "spec": spec.describe(), "top1": top1,
                         "calib_s": secs, "method_s": dict(q.autoselect_method_seconds)})
            print(f"{regime:5s} {method:12s} top-1 {top1:6.2f}%  calibration {secs:6.1f} s", flush=True)
    save_result(args.out, {"date": str(date.today()), "weights": args.weights, "calib_images": len(calib),
                           "test_images": len(test), "act_observer": args.act_observer,
                           "adaround_iterations": args.adaround_iterations, "rows": rows})


if __name__ == "__main__":
    main()
