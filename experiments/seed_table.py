"""The seed study's table (seed 001, Table 1) re-measured from the reference checkpoint with one QAT budget.

For each built-in seed001 plan: PTQ top-1, then selective QAT for ``--steps`` steps, then simulated INT8 top-1 on
the full test split; % parameters retrained, quantized model size, gap to FP32, and training throughput.

    python experiments/seed_table.py --target generic-pt --weight-bits 4 --steps 200 \
        --out experiments/results/seed_table_w4pt.json
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

from _common import apply_threads, plan_in_regime, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.plans import builtin_plan, builtin_plans
from autoselect.quant.apply import apply_plan, quantized_size_bytes, retrained_fraction
from autoselect.train import QATConfig, train_qat


def main() -> None:
    ap = reference_parser(__doc__, "seed_table.json")
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=QATConfig().lr, help="default: autoselect train's (0.001 since "
                    "issue 14; the table of issue 3 used 0.01)")
    ap.add_argument("--train-images", type=int, default=None, help="default: the whole train split")
    ap.add_argument("--plans", nargs="*", default=None)
    ap.add_argument("--act", choices=["sym", "asym"], help="override every plan's activation symmetry")
    ap.add_argument("--export", action="store_true", help="also export each trained plan and run it in onnxruntime")
    ap.add_argument("--work", default="/tmp/autoselect-seed-table")
    args = ap.parse_args()
    apply_threads(args)

    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train", limit=args.train_images).with_normalize(lm.normalize)
    test = load_images(args.data, split="test").with_normalize(lm.normalize)
    calib = train.subset(1024)
    fp32 = accuracy(lm.model, test.batches(500))
    print(f"FP32 {fp32:.2f}% on {len(test)} test images; QAT budget {args.steps} steps x {args.batch_size}", flush=True)
    rows = []
    for name in args.plans or builtin_plans():
        plan = plan_in_regime(builtin_plan(name), weight_bits=args.weight_bits, target=args.target, act=args.act)
        q = apply_plan(lm.model, plan, calib.batches(128))
        ptq = accuracy(q, test.batches(500))
        t = time.perf_counter()
        res = train_qat(q, train, test, QATConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr))
        secs = time.perf_counter() - t
        assert res.top1 is not None
        row = {"plan": name, "retrained_pct": 100 * retrained_fraction(q), "size_mb": quantized_size_bytes(q) / 1e6,
               "ptq_top1": ptq, "int8_top1": res.top1, "gap_to_fp32": fp32 - res.top1, "train_s": secs,
               "steps_per_s": args.steps / secs}
        if args.export:
            from autoselect.export import export, ort_accuracy

            q.cpu()
            res_x = export(q, calib.batches(128), Path(args.work) / name)
            row["exported_top1"] = ort_accuracy(res_x.int8_path, test.batches(500))
            row["sim_minus_exported"] = row["int8_top1"] - row["exported_top1"]
            row["onnx_int8_mb"] = res_x.int8_bytes / 1e6
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    out = {"date": date.today().isoformat(), "fp32_top1": fp32, "target": args.target,
           "weight_bits": args.weight_bits, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "train_images": len(train), "test_images": len(test), "rows": rows}
    save_result(args.out, out)


if __name__ == "__main__":
    main()
