"""Issue 18, item 4: which activation-range observer should be the default on deployable targets? An all-frozen plan
(default post-training methods) for one target, under each activation observer (min-max, MSE, percentile), over
several calibration draws, on several models: top-1 mean, spread and worst draw.

The digits models are the ones experiments/family_matrix.py trains (runs/family_matrix/, at 64x64); the reference
MobileNetV2 is the CIFAR-10 fixture.

    python experiments/act_ranges.py --target x86-vnni --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date

import torch
from _common import RESULTS, ROOT, SHARED, save_result

from autoselect import load_images, load_model
from autoselect.evaluate import accuracy
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan

DIGITS = ("regnet_x_400mf", "efficientnet_b0", "mnasnet0_5", "mobilenet_v3_large", "resnet18", "shufflenet_v2_x1_0")


def _cases(args: argparse.Namespace) -> list[dict]:
    cases = [{"model": m, "weights": str(ROOT / "runs" / "family_matrix" / f"{m}_digits64_e{args.epochs}.pt"),
              "data": "digits", "size": 64, "calib": args.digits_calib, "test": None} for m in args.models]
    if args.reference:
        cases.append({"model": "mobilenet_v2", "weights": str(SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"),
                      "data": str(SHARED / "datasets" / "cifar10"), "size": 32, "calib": 1024,
                      "test": args.reference_test})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86-vnni")
    ap.add_argument("--models", nargs="*", default=list(DIGITS))
    ap.add_argument("--observers", nargs="+", default=["minmax", "mse", "percentile"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10, help="which family_matrix checkpoints")
    ap.add_argument("--digits-calib", type=int, default=256)
    ap.add_argument("--reference", action="store_true", help="also the CIFAR-10 reference MobileNetV2")
    ap.add_argument("--reference-test", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "act_ranges.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in _cases(args):
        lm = load_model(case["model"], weights=case["weights"], input_size=case["size"])
        test = load_images(case["data"], split="test", input_size=case["size"], limit=case["test"], seed=0)
        test = test.with_normalize(lm.normalize) if lm.normalize else test
        fp32 = accuracy(lm.model, test.batches(256))
        for obs in args.observers:
            top1, seconds = [], 0.0
            for seed in range(args.seeds):
                calib = load_images(case["data"], split="train", input_size=case["size"], limit=case["calib"],
                                    seed=seed)
                calib = calib.with_normalize(lm.normalize) if lm.normalize else calib
                t0 = time.perf_counter()
                q = apply_plan(lm.model, Plan(layers={"_default": LayerAction()}, target=args.target,
                                              observers={"act": obs}), calib.batches(64),
                               input_shape=(1, 3, case["size"], case["size"]))
                seconds += time.perf_counter() - t0
                top1.append(accuracy(q, test.batches(256)))
            row = {"model": case["model"], "data": case["data"], "size": case["size"], "target": args.target,
                   "observer": obs, "calib_images": case["calib"], "test_images": len(test), "fp32": fp32,
                   "top1": top1, "mean": statistics.mean(top1), "sd": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                   "min": min(top1), "calib_seconds": seconds / len(top1)}
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()
                              if k != "top1"}), flush=True)
            save_result(args.out, {"date": str(date.today()), "seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
