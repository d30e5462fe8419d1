"""Issue 18: how far does the simulation move when only its float precision changes? An all-frozen plan run in
float32 and in float64 on the same images: per-image agreement and logit error. That is the floor the export's
agreement with the simulation can be held to (integer kernels requantize in float32 too, differently).

    python experiments/sim_float64.py --model efficientnet_b0 \
        --weights runs/family_matrix/efficientnet_b0_digits64_e15.pt --data digits --size 64
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import float64_logits, logit_rel_err

from autoselect import load_images, load_model
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--target", default="x86-vnni")
    ap.add_argument("--images", type=int)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(args.model, weights=args.weights, input_size=args.size)
    test = load_images(args.data, split="test", input_size=args.size, limit=args.images, seed=0)
    calib = load_images(args.data, split="train", input_size=args.size, limit=256, seed=0)
    if lm.normalize is not None:
        test, calib = test.with_normalize(lm.normalize), calib.with_normalize(lm.normalize)
    q = apply_plan(lm.model, Plan(layers={"_default": LayerAction()}, target=args.target), calib.batches(64),
                   input_shape=(1, 3, args.size, args.size))
    with torch.no_grad():
        f32 = torch.cat([q(x) for x, _ in test.batches(64)]).numpy()
        f64 = float64_logits(q, test.batches(64)).numpy()
    print(json.dumps({"model": args.model, "size": args.size, "target": args.target, "images": len(test),
                      "agree_f32_f64": round(100 * float((f32.argmax(1) == f64.argmax(1)).mean()), 2),
                      "rel_err_f32_f64": round(logit_rel_err(f32, f64), 4)}))


if __name__ == "__main__":
    main()
