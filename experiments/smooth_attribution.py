"""Where a smoothing search's gain comes from: the seed study's manual plans with the same smoothing, full budget.

Takes a search run of ``search_bench.py`` made with a space that offers smoothing, reads which layers the prior's
smoothed all-frozen plan smooths (the profile's choice), and measures on the 10,000 test images, with the seed
table's full budget (300 steps x 128, lr 0.01):

- that plan as it is (PTQ + smoothing: nothing retrained, nothing trained);
- the seed study's manual plans (``--plans``) with the same layers smoothed.

    cd experiments && python smooth_attribution.py --run results/search_w5pt_p100_lr003_smooth
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
from _common import plan_in_regime, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.models import build_layer_graph
from autoselect.plans import builtin_plan
from autoselect.quant.apply import apply_plan, retrained_fraction
from autoselect.space import load_space
from autoselect.train import QATConfig, train_qat


def main() -> None:
    ap = reference_parser(__doc__, "smooth_attribution.json")
    ap.add_argument("--run", required=True, help="a search_bench.py output folder (its tpe/ search)")
    ap.add_argument("--space", default=str(Path(__file__).parent / "spaces" / "mobilenet_v2_smooth.yaml"))
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--full-steps", type=int, default=300)
    ap.add_argument("--plans", default="seed001_depthwise_1x1,seed001_full_qat")
    args = ap.parse_args()
    run = Path(args.run)
    trials = pd.read_csv(run / "tpe" / "trials.csv")
    prior = trials[(trials["source"] == "prior") & (trials["retrained"] == 0)]
    smoothed_ptq = None
    for _, row in prior.iterrows():
        params = json.loads(row["params"])
        if any(k.endswith(".smooth") and v is True for k, v in params.items()):
            smoothed_ptq = (int(row["trial"]), params)
            break
    if smoothed_ptq is None:
        raise SystemExit(f"{run}: no smoothed all-frozen prior plan in tpe/trials.csv")
    lm = load_model("mobilenet_v2", weights=args.weights)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    space = replace(load_space(args.space), weight_bits=(args.weight_bits,))
    base = space.plan(space.groups(graph.layers), smoothed_ptq[1], target=args.target)
    resolved = base.resolve(graph.paths, {x.path: x.role for x in graph})
    smooth = {p for p, a in resolved.items() if a is not None and a.smooth}
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test").with_normalize(lm.normalize)
    calib = train.subset(1024)
    jobs = [(f"trial_{smoothed_ptq[0]} (prior: PTQ + smoothing)", base)]
    for name in args.plans.split(","):
        manual = plan_in_regime(builtin_plan(name), weight_bits=args.weight_bits, target=args.target)
        per_layer = manual.resolve(graph.paths, {x.path: x.role for x in graph})
        layers = {p: replace(a, smooth=p in smooth) for p, a in per_layer.items() if a is not None}
        jobs.append((f"{name} + smoothing", replace(manual, layers=layers)))
    rows = []
    for name, plan in jobs:
        t0 = time.perf_counter()
        q = apply_plan(lm.model, plan, calib.batches(128))
        if retrained_fraction(q) > 0:
            top1 = train_qat(q, train, test, QATConfig(steps=args.full_steps, batch_size=128, lr=0.01)).top1
        else:
            top1 = accuracy(q, test.batches(500))
        rows.append({"name": name, "retrained": retrained_fraction(q), "int8_top1": top1,
                     "smoothed_layers": len(smooth), "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    save_result(args.out, {"date": date.today().isoformat(), "run": str(run), "full_steps": args.full_steps,
                           "rows": rows})


if __name__ == "__main__":
    main()
