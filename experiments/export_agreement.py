"""Issue 18 probe: does the exported INT8 model compute what the simulation computes, image by image, at several
input sizes? An all-frozen plan for the x86 target (the default post-training methods), calibrated on 256 train
images, exported through onnxruntime's static quantizer (autoselect.export.export), then run on test images:
per-image agreement of the predicted classes (INT8 vs simulation, INT8 vs FP32, simulation vs FP32) and the relative
logit error between each pair (logits centred per image; ||a - b|| / ||b||); and INT8 against the simulation computed
in the integer kernels' arithmetic (autoselect.quant.integer): agreement and largest logit difference.

    python experiments/export_agreement.py --model mobilenet_v2 \
        --weights ../shared/fixtures/mobilenet_v2_cifar10_fp32.pt --sizes 32 64 --images 2000
"""

from __future__ import annotations

import json
import tempfile
from datetime import date

import numpy as np
import torch
from _common import SHARED, logit_rel_err, save_result

from autoselect import load_images, load_model
from autoselect.export import export, ort_session
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan
from autoselect.quant.integer import integer_arithmetic


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--weights", default=str(SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"),
                    help="a checkpoint, or none (the model's own weights, e.g. a user factory's)")
    ap.add_argument("--data", default=str(SHARED / "datasets" / "cifar10"))
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="x86", help="a target with integer kernels here (x86, qnnpack, ...)")
    ap.add_argument("--plain", action="store_true", help="no post-training methods (no bias correction)")
    ap.add_argument("--out", default="results/export_agreement.json")
    args = ap.parse_args()
    action = LayerAction(bias_correction=False, rounding="nearest", equalize=False) if args.plain else LayerAction()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        weights = None if args.weights.lower() in ("", "none") else args.weights  # "none": a factory's own weights
        lm = load_model(args.model, weights=weights, input_size=size)
        test = load_images(args.data, split="test", limit=args.images, input_size=size, seed=0)
        calib = load_images(args.data, split="train", limit=256, input_size=size, seed=0)
        if lm.normalize is not None:
            test, calib = test.with_normalize(lm.normalize), calib.with_normalize(lm.normalize)
        q = apply_plan(lm.model, Plan(layers={"_default": action}, target=args.target), calib.batches(64),
                       input_shape=(1, 3, size, size))
        with tempfile.TemporaryDirectory() as d:
            res = export(q, calib.batches(64), d, input_shape=(1, 3, size, size))
            sess = ort_session(res.int8_path, threads=args.threads)
            int8 = np.concatenate([sess.run(None, {"input": x.numpy()})[0] for x, _ in test.batches(64)])
        with torch.no_grad():
            sim = torch.cat([q(x) for x, _ in test.batches(64)]).numpy()
            fp32 = torch.cat([lm.model(x) for x, _ in test.batches(64)]).numpy()
        with integer_arithmetic(q):  # the simulation in the integer kernels' arithmetic
            simi = torch.cat([q(x) for x, _ in test.batches(64)]).numpy()
        p_int8, p_sim, p_fp32 = int8.argmax(1), sim.argmax(1), fp32.argmax(1)
        row = {"model": args.model, "target": args.target, "size": size, "images": len(test), "plain": args.plain,
               "agree_int8_sim": 100 * float((p_int8 == p_sim).mean()),
               "agree_int8_sim_int": 100 * float((p_int8 == simi.argmax(1)).mean()),
               "max_abs_int8_sim_int": float(np.abs(int8 - simi).max()),
               "agree_int8_fp32": 100 * float((p_int8 == p_fp32).mean()),
               "agree_sim_fp32": 100 * float((p_sim == p_fp32).mean()),
               "rel_err_int8_sim": logit_rel_err(int8, sim), "rel_err_sim_fp32": logit_rel_err(sim, fp32),
               "rel_err_int8_fp32": logit_rel_err(int8, fp32)}
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        save_result(args.out, {"date": str(date.today()), "weights": args.weights, "target": args.target,
                               "calib_images": 256, "rows": rows})


if __name__ == "__main__":
    main()
