"""How much do full-budget QAT results move with the training seed? (issue 4: are the gaps between plans real?)

Retrains plans with the seed table's budget (300 steps x 128, lr 0.01, 1,024 calibration images, simulated INT8
top-1 on the 10,000 test images) under several training seeds. Plans: plan files (e.g. a search's plan.json) or
built-in plan names (given ``--weight-bits`` and ``--target``, as the seed table does).

    cd experiments && R=results/search_w5pt_p100_lr003 && python full_budget_seeds.py --seeds 1 \
        --plans seed001_full_qat,seed001_depthwise_1x1,$R/tpe/plan.json,${R}_split/tpe/plan.json
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

from _common import apply_threads, plan_in_regime, reference_parser, save_result

from autoselect import load_images, load_model, load_plan
from autoselect.plans import builtin_plan, builtin_plans
from autoselect.quant.apply import apply_plan, retrained_fraction
from autoselect.train import QATConfig, train_qat


def main() -> None:
    ap = reference_parser(__doc__, "full_budget_seeds")
    ap.add_argument("--plans", required=True, help="comma-separated plan files or built-in plan names")
    ap.add_argument("--seeds", default="1", help="comma-separated training seeds")
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test").with_normalize(lm.normalize)
    calib = train.subset(1024)
    out = Path(args.out) / "result.json"
    rows: list[dict] = []
    for name in args.plans.split(","):
        if name in builtin_plans():
            plan = plan_in_regime(builtin_plan(name), weight_bits=args.weight_bits, target=args.target)
        else:
            plan = load_plan(name)
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.perf_counter()
            q = apply_plan(lm.model, plan, calib.batches(128))
            res = train_qat(q, train, test, QATConfig(steps=args.steps, batch_size=128, lr=0.01, seed=seed))
            rows.append({"plan": name, "seed": seed, "retrained": retrained_fraction(q), "int8_top1": res.top1,
                         "seconds": time.perf_counter() - t0})
            print(f"{name} seed {seed}: INT8 top-1 {res.top1:.2f}% ({100 * retrained_fraction(q):.1f}% retrained)",
                  flush=True)
            save_result(out, {"date": str(date.today()), "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
