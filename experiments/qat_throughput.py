"""Training throughput of selective QAT plans vs full QAT, measured in one run (interleaved rounds).

    python experiments/qat_throughput.py --steps 40 --rounds 3 --out experiments/results/qat_throughput.json
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from datetime import date

import torch
import torch.nn.functional as F

from _common import apply_threads, reference_parser, save_result

from autoselect import load_images, load_model
from autoselect.plans import builtin_plan
from autoselect.quant.apply import apply_plan, retrained_fraction

PLANS = ("seed001_full_qat", "seed001_depthwise_1x1_asym", "seed001_depthwise_only", "seed001_classifier_only")


def steps_per_s(qmodel: torch.nn.Module, batches: list, steps: int) -> float:
    opt = torch.optim.SGD([p for p in qmodel.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    qmodel.train()
    t = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(qmodel(x), y).backward()
        opt.step()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = reference_parser(__doc__, "qat_throughput.json")
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train", limit=args.batch_size * 8).with_normalize(lm.normalize)
    batches = list(train.batches(args.batch_size, shuffle=True, augment=True))
    models = {}
    for name in PLANS:
        plan = builtin_plan(name)
        layers = {k: replace(a, weight_bits=args.weight_bits) for k, a in plan.layers.items()}
        models[name] = apply_plan(lm.model, replace(plan, layers=layers, target=args.target), batches[:4])
        steps_per_s(models[name], batches, 3)  # warm-up
    rates: dict[str, list[float]] = {n: [] for n in PLANS}
    for r in range(args.rounds):
        for name, q in models.items():
            rates[name].append(steps_per_s(q, batches, args.steps))
        print(f"round {r + 1}:", {n: round(v[-1], 2) for n, v in rates.items()}, flush=True)
    full = rates["seed001_full_qat"]
    summary = {
        "date": date.today().isoformat(), "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "target": args.target, "weight_bits": args.weight_bits,
        "plans": {n: {"retrained_pct": 100 * retrained_fraction(models[n]),
                      "median_steps_per_s": statistics.median(v),
                      "median_speedup_vs_full": statistics.median(a / b for a, b in zip(v, full)),
                      "rounds": v} for n, v in rates.items()},
    }
    save_result(args.out, summary)
    print(json.dumps({n: {k: round(v, 3) for k, v in d.items() if k != "rounds"} for n, d in summary["plans"].items()},
                     indent=2))


if __name__ == "__main__":
    main()
