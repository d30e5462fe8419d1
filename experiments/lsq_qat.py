"""Full QAT from the post-training state: learned steps (LSQ) against the old fixed steps, at several learning rates.

Each regime's calibrated model (every post-training method its defaults give a bare plan: equalization, MSE
ranges, AdaRound below 5 bits, bias correction) is made once; every variant then starts from a copy of it, so the
PTQ start is the same for all of them and is reported beside each. Variants are ``LEARN:LR[:STEP_LR[:DISTILL]]``
with LEARN ``lsq`` (learned steps, the plan default) or ``fixed`` (``learn_scales: false``) and DISTILL the weight
of distillation from the FP32 model (0: labels only; 1: the FP32 model's outputs only).

    python experiments/lsq_qat.py --regimes w5pt --variants fixed:0.01 lsq:0.01 lsq:0.001 --seeds 0 \
        --out experiments/results/lsq_qat_w5pt.json
"""

from __future__ import annotations

import copy
import json
import time
from datetime import date

from _common import apply_threads, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.models.graph import build_layer_graph
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import calibrated_model, finish_plan, plan_specs, retrained_fraction
from autoselect.train import QATConfig, train_qat

REGIMES = {"w8pt": ("generic-pt", 8), "w5pt": ("generic-pt", 5), "w4pt": ("generic-pt", 4),
           "w4pc": ("generic", 4)}


def _variant(text: str) -> tuple[str, bool, float, float, float]:
    parts = text.split(":")
    learn, lr = parts[0] == "lsq", float(parts[1])
    step_lr = float(parts[2]) if len(parts) > 2 else 1e-3
    distill = float(parts[3]) if len(parts) > 3 else 0.0
    return text, learn, lr, step_lr, distill


def main() -> None:
    ap = reference_parser(__doc__, "lsq_qat.json")
    ap.add_argument("--regimes", nargs="+", default=["w5pt"], choices=list(REGIMES))
    ap.add_argument("--variants", nargs="+", default=["fixed:0.01", "lsq:0.01", "lsq:0.001"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    args = ap.parse_args()
    apply_threads(args)

    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.test_images).with_normalize(lm.normalize)
    calib = train.subset(1024)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    fp32 = accuracy(lm.model, test.batches(500))
    print(f"FP32 {fp32:.2f}% on {len(test)} test images; {args.steps} steps x {args.batch_size}", flush=True)
    rows = []
    for regime in args.regimes:
        target, bits = REGIMES[regime]
        base_plan = Plan(layers={"_default": LayerAction(kind="qat", weight_bits=bits)}, target=target)
        specs, _ = plan_specs(base_plan, graph)
        t0 = time.perf_counter()
        base = calibrated_model(lm.model, specs, graph, calib.batches(128), target=target)
        calib_s = time.perf_counter() - t0
        frozen = accuracy(base, test.batches(500))  # the frozen PTQ (bias correction kept as a correction)
        print(f"{regime}: PTQ (all frozen) {frozen:.2f}% after {calib_s:.0f} s of calibration", flush=True)
        for text, learn, lr, step_lr, distill in map(_variant, args.variants):
            for seed in args.seeds:
                plan = Plan(layers={"_default": LayerAction(kind="qat", weight_bits=bits, learn_scales=learn)},
                            target=target)
                _, actions = plan_specs(plan, graph)
                q = finish_plan(copy.deepcopy(base), plan, actions, graph)
                start = accuracy(q, test.batches(500))
                cfg = QATConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, step_lr=step_lr, seed=seed,
                                distill=distill)
                t = time.perf_counter()
                res = train_qat(q, train, test, cfg, teacher=lm.model if distill else None)
                row = {"regime": regime, "variant": text, "learn_scales": learn, "lr": lr, "step_lr": step_lr,
                       "distill": distill, "seed": seed, "ptq_frozen_top1": frozen, "qat_start_top1": start,
                       "qat_top1": res.top1,
                       "gain_over_start": (res.top1 or 0) - start, "train_s": time.perf_counter() - t,
                       "retrained_pct": 100 * retrained_fraction(q), "calib_s": calib_s,
                       "first_loss": res.history[0]["loss"], "last_loss": res.history[-1]["loss"]}
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                save_result(args.out, {"date": date.today().isoformat(), "fp32_top1": fp32, "steps": args.steps,
                                       "batch_size": args.batch_size, "calib_images": 1024,
                                       "test_images": len(test), "rows": rows})


if __name__ == "__main__":
    main()
