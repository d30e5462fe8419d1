"""How well does a QAT proxy setting rank plans the way the full QAT budget does?

Takes the plans a ``search_bench.py`` run retrained at full budget (its ``report.json`` pairs: searched trials,
full QAT, and the seed table's manual plans), evaluates each under other proxy settings (same validation split,
same seed), and prints the Spearman rank correlation of each setting's proxy top-1 with the full-budget top-1.

    python experiments/proxy_fidelity.py --run experiments/results/search_w5pt_p100 --lrs 0.003,0.001
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
from _common import apply_threads, plan_in_regime, reference_parser, save_result

from autoselect import load_images, load_model
from autoselect.models import build_layer_graph
from autoselect.plans import builtin_plan
from autoselect.search import ProxyBudget, TrialEvaluator
from autoselect.search.latency import LatencyModel
from autoselect.space import find_space, load_space


def main() -> None:
    ap = reference_parser(__doc__, "proxy_fidelity")
    ap.add_argument("--run", required=True, help="a search_bench.py output directory with report.json")
    ap.add_argument("--lrs", default="0.003,0.001", help="proxy peak learning rates to try")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--proxy-batch", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--space")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    apply_threads(args)
    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    trials = pd.read_csv(run / "tpe" / "trials.csv")
    lm = load_model("mobilenet_v2", weights=args.weights)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    space = replace(load_space(args.space) if args.space else find_space("mobilenet_v2"),
                    weight_bits=(args.weight_bits,))
    groups = space.groups(graph.layers)
    plans = {}
    for proxy_top1, full_top1, name in report["spearman_pairs"]:
        key = name.replace(" (seed table)", "")
        if key.startswith("trial_"):
            params = json.loads(trials[trials["trial"] == int(key[6:])].iloc[0]["params"])
            plan = space.plan(groups, params, target=args.target)
        else:
            plan = plan_in_regime(builtin_plan(key), weight_bits=args.weight_bits, target=args.target)
        plans[key] = (plan, full_top1, proxy_top1)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    train, val = train.split(args.val_images, seed=args.seed)
    out_path = Path(args.out) / "result.json"
    rows = json.loads(out_path.read_text())["rows"] if out_path.is_file() else []
    done = {(r["lr"], r["plan"]) for r in rows}
    for lr in [float(x) for x in args.lrs.split(",")]:
        ev = TrialEvaluator(lm.model, graph, train, val, ProxyBudget(steps=args.steps, batch_size=args.proxy_batch,
                            lr=lr, eval_every=args.steps), LatencyModel(graph.layers), seed=args.seed)
        for key, (plan, full_top1, _) in plans.items():
            if (lr, key) in done:
                continue
            o = ev.evaluate(plan)
            rows.append({"lr": lr, "plan": key, "proxy_top1": o.top1, "full_top1": full_top1,
                         "retrained": o.retrained, "seconds": o.seconds})
            print(f"lr {lr}: {key}: proxy {o.top1:.2f}%  full {full_top1:.2f}%", flush=True)
            save_result(out_path, {"rows": rows})
    df = pd.DataFrame(rows)
    base = pd.DataFrame([{"lr": "search run", "plan": k, "proxy_top1": v[2], "full_top1": v[1]}
                         for k, v in plans.items()])
    df = pd.concat([base, df], ignore_index=True)
    summary = {str(lr): {"spearman": g["proxy_top1"].corr(g["full_top1"], method="spearman"),
                         "spearman_without_classifier_only": g[g["plan"] != "seed001_classifier_only"]["proxy_top1"]
                         .corr(g[g["plan"] != "seed001_classifier_only"]["full_top1"], method="spearman"),
                         "plans": len(g)}
               for lr, g in df.groupby(df["lr"].astype(str))}
    save_result(out_path, {"date": str(date.today()), "run": str(run), "steps": args.steps,
                           "batch": args.proxy_batch, "rows": rows, "spearman": summary})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
