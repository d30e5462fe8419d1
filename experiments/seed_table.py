"""The seed study's table (seed 001, Table 1) re-measured from the reference checkpoint with one QAT budget.

For each built-in seed001 plan: PTQ top-1, then selective QAT for ``--steps`` steps, then simulated INT8 top-1 on
the full test split; % parameters retrained, quantized model size, gap to FP32, and training throughput.

    python experiments/seed_table.py --target generic-pt --weight-bits 4 --steps 200 \
        --out experiments/results/seed_table_w4pt.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from autoselect import accuracy, load_images, load_model
from autoselect.plans import builtin_plan, builtin_plans
from autoselect.quant.apply import apply_plan, quantized_size_bytes, retrained_fraction
from autoselect.train import QATConfig, train_qat

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "cifar10"))
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--train-images", type=int, default=None, help="default: the whole train split")
    ap.add_argument("--plans", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "seed_table.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train", limit=args.train_images).with_normalize(lm.normalize)
    test = load_images(args.data, split="test").with_normalize(lm.normalize)
    calib = train.subset(1024)
    fp32 = accuracy(lm.model, test.batches(500))
    print(f"FP32 {fp32:.2f}% on {len(test)} test images; QAT budget {args.steps} steps x {args.batch_size}", flush=True)
    rows = []
    for name in args.plans or builtin_plans():
        plan = builtin_plan(name)
        layers = {k: replace(a, weight_bits=args.weight_bits) if a.kind != "fp32" else a for k, a in plan.layers.items()}
        plan = replace(plan, layers=layers, target=args.target)
        q = apply_plan(lm.model, plan, calib.batches(128))
        ptq = accuracy(q, test.batches(500))
        t = time.perf_counter()
        res = train_qat(q, train, test, QATConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr))
        secs = time.perf_counter() - t
        assert res.top1 is not None
        row = {"plan": name, "retrained_pct": 100 * retrained_fraction(q), "size_mb": quantized_size_bytes(q) / 1e6,
               "ptq_top1": ptq, "int8_top1": res.top1, "gap_to_fp32": fp32 - res.top1, "train_s": secs,
               "steps_per_s": args.steps / secs}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    out = {"date": date.today().isoformat(), "fp32_top1": fp32, "target": args.target,
           "weight_bits": args.weight_bits, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "train_images": len(train), "test_images": len(test), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
