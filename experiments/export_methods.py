"""Exported INT8 vs simulated top-1 for the post-training methods on the x86 target (8-bit weights, 7-bit
activations), image by image: each plan is applied, scored in the simulation, exported to ONNX QDQ and scored by
onnxruntime's integer kernels on the same test images; ``agree`` is the share of images whose predicted class is the
same in both.

    python experiments/export_methods.py --out experiments/results/export_methods.json
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _common import apply_threads, reference_parser, save_result

from autoselect import load_images, load_model
from autoselect.export import export
from autoselect.export.runtime import ort_session
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan

VARIANTS = {
    "plain (nearest, no correction)": dict(rounding="nearest", bias_correction=False, equalize=False),
    "freeze default (bias correction)": {},
    "adaround + bias correction": dict(rounding="adaround"),
    "equalize + adaround + bias correction": dict(rounding="adaround", equalize=True),
}


def main() -> None:
    ap = reference_parser(__doc__, "export_methods.json")
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--adaround-iterations", type=int, default=None,
                    help="steps per layer (default: the library's); the export check needs the fixed integer "
                         "weights, not their best values")
    args = ap.parse_args()
    apply_threads(args)
    if args.adaround_iterations:
        from autoselect.quant.methods import adaround

        adaround.ITERATIONS = args.adaround_iterations
    lm = load_model("mobilenet_v2", weights=args.weights)
    calib = load_images(args.data, split="train", limit=1024, seed=0).with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.test_images, seed=0).with_normalize(lm.normalize)
    labels = torch.cat([y for _, y in test.batches(500)]).numpy()
    rows = []
    for name in args.variants:
        plan = Plan(layers={"_default": LayerAction(**VARIANTS[name])}, target="x86")
        t0 = time.perf_counter()
        q = apply_plan(lm.model, plan, calib.batches(128))
        secs = time.perf_counter() - t0
        with torch.no_grad():
            sim = torch.cat([q(x).argmax(1) for x, _ in test.batches(500)]).numpy()
        with tempfile.TemporaryDirectory() as work:
            res = export(q, calib.batches(128), Path(work))
            sess = ort_session(res.int8_path, threads=2)
            real = np.concatenate([sess.run(None, {"input": x.numpy()})[0].argmax(1) for x, _ in test.batches(500)])
        row = {"variant": name, "sim_top1": 100 * float((sim == labels).mean()),
               "int8_top1": 100 * float((real == labels).mean()), "agree": 100 * float((sim == real).mean()),
               "calib_s": secs, "method_s": dict(q.autoselect_method_seconds)}
        rows.append(row)
        print(f"{name:40s} sim {row['sim_top1']:6.2f}%  int8 {row['int8_top1']:6.2f}%  "
              f"agree {row['agree']:6.2f}%  calibration {secs:6.1f} s", flush=True)
    save_result(args.out, {"date": str(date.today()), "target": "x86", "test_images": len(labels),
                           "adaround_iterations": args.adaround_iterations,
                           "calib_images": len(calib), "rows": rows})


if __name__ == "__main__":
    main()
