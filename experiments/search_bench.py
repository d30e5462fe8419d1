"""Issue 4's figures: the search on the reference MobileNetV2 / CIFAR-10 in the regime where PTQ loses accuracy.

Phases (each writes into --out and is skipped when its result exists, so the script can be re-run):

- ``tpe``: ``autoselect search`` with the profile prior (TPE, warm start from the drift ranking);
- ``random``: the same trial budget and seed with Optuna's RandomSampler and no prior;
- ``manual``: the seed study's five manual plans under the same QAT proxy;
- ``full``: full QAT, the chosen plan and other searched plans retrained with the seed table's budget
  (300 steps x 128), simulated INT8 top-1 on the 10,000 test images;
- ``report``: hypervolumes, compute multiple, Spearman(proxy, full), the Pareto plot with the manual plans.

    python experiments/search_bench.py --trials 20 --proxy-steps 100 --eval-every 25 --val-images 2000 \
        --full-others 4 --out experiments/results/search_w5pt_p100
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
from _common import apply_threads, plan_in_regime, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.models import build_layer_graph
from autoselect.plans import builtin_plan, builtin_plans
from autoselect.quant.apply import apply_plan, retrained_fraction
from autoselect.search import Constraints, ProxyBudget, SearchConfig, TrialEvaluator, hypervolume, pareto_mask, search
from autoselect.search.latency import LatencyModel
from autoselect.search.plots import plot_pareto
from autoselect.space import find_space, load_space
from autoselect.train import QATConfig, train_qat


def _cfg(args, out: Path, **kw) -> SearchConfig:
    return SearchConfig(model="mobilenet_v2", weights=args.weights, data=args.data, target=args.target,
                        weight_bits=args.weight_bits, trials=args.trials, seed=args.seed, out=str(out),
                        proxy=ProxyBudget(steps=args.proxy_steps, batch_size=args.proxy_batch,
                                          eval_every=args.eval_every, lr=args.proxy_lr),
                        val_images=args.val_images, constraints=Constraints(max_retrained=0.5), space=args.space,
                        **kw)


def _with_bits(plan, args):
    return plan_in_regime(plan, weight_bits=args.weight_bits, target=args.target)


def phase_search(args, out: Path, name: str, **kw) -> dict:
    path = out / name / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    if name != "tpe" and (out / "tpe" / "profile").is_dir():  # same profile; the random search does not use it
        import shutil

        shutil.copytree(out / "tpe" / "profile", out / name / "profile", dirs_exist_ok=True)
    t = time.perf_counter()
    res = search(_cfg(args, out / name, **kw))
    res.summary["wall_s"] = time.perf_counter() - t
    save_result(path, res.summary)
    return res.summary


def phase_manual(args, out: Path) -> list[dict]:
    path = out / "manual.json"
    if path.is_file():
        return json.loads(path.read_text())
    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    train, val = train.split(args.val_images, seed=args.seed)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    ev = TrialEvaluator(lm.model, graph, train, val, ProxyBudget(steps=args.proxy_steps, batch_size=args.proxy_batch,
                        eval_every=args.eval_every, lr=args.proxy_lr), LatencyModel(graph.layers), seed=args.seed)
    rows = []
    for name in builtin_plans():
        o = ev.evaluate(_with_bits(builtin_plan(name), args))
        rows.append({"label": name.replace("seed001_", ""), "plan": name, "top1": o.top1, "retrained": o.retrained,
                     "latency": o.latency, "ptq_top1": o.ptq_top1, "seconds": o.seconds})
        print(f"manual {name}: proxy top-1 {o.top1:.2f}% ({100 * o.retrained:.1f}% retrained)", flush=True)
    save_result(path, rows)
    return rows


def phase_full(args, out: Path) -> list[dict]:
    path = out / "full.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {r["name"] for r in done}
    trials = pd.read_csv(out / "tpe" / "trials.csv")
    summary = json.loads((out / "tpe" / "summary.json").read_text())
    complete = trials[(trials["state"] == "complete") & trials["duplicate_of"].isna() & (trials["retrained"] > 0)]
    chosen = summary["chosen_trial"]
    others = complete[complete["trial"] != chosen].sort_values("top1", ascending=False)
    picks = [int(t) for t in others["trial"].head(args.full_others)]
    jobs = [("seed001_full_qat", _with_bits(builtin_plan("seed001_full_qat"), args), None)]
    space = replace(load_space(args.space) if args.space else find_space("mobilenet_v2"),
                    weight_bits=(args.weight_bits,))
    lm = load_model("mobilenet_v2", weights=args.weights)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    groups = space.groups(graph.layers)
    for t in [chosen, *picks]:
        params = json.loads(trials[trials["trial"] == t].iloc[0]["params"])
        jobs.append((f"trial_{t}", space.plan(groups, params, target=args.target), t))
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test").with_normalize(lm.normalize)
    calib = train.subset(1024)
    for name, plan, trial in jobs:
        if name in have:
            continue
        t0 = time.perf_counter()
        q = apply_plan(lm.model, plan, calib.batches(128))
        if retrained_fraction(q) > 0:
            top1 = train_qat(q, train, test, QATConfig(steps=args.full_steps, batch_size=128, lr=0.01)).top1
            steps = args.full_steps
        else:  # a plan that retrains nothing (PTQ, smoothed or not): its calibrated model is the result
            top1, steps = accuracy(q, test.batches(500)), 0
        secs = time.perf_counter() - t0
        done.append({"name": name, "trial": trial, "retrained": retrained_fraction(q), "int8_top1": top1,
                     "seconds": secs, "steps": steps})
        print(f"full {name}: INT8 top-1 {top1:.2f}% ({100 * retrained_fraction(q):.1f}% retrained, "
              f"{secs:.0f} s)", flush=True)
        save_result(path, done)
    return done


def phase_report(args, out: Path, tpe: dict, rnd: dict, manual: list[dict], full: list[dict]) -> dict:
    t = pd.read_csv(out / "tpe" / "trials.csv")
    r = pd.read_csv(out / "random" / "trials.csv")
    tc, rc = t[t["state"] == "complete"], r[r["state"] == "complete"]
    ref_top1 = tpe["ptq_top1"]
    ref_lat = tpe["fp32_latency"]
    hv = {"tpe_prior": hypervolume(tc, ref_top1=ref_top1, ref_latency=ref_lat),
          "random": hypervolume(rc, ref_top1=ref_top1, ref_latency=ref_lat)}
    man = pd.DataFrame(manual)
    plot_pareto(tc, tc[pareto_mask(tc.reset_index(drop=True))], out / "pareto_vs_manual.png",
                latency_unit=tpe["latency_unit"], chosen=tpe["chosen_trial"], references=man,
                title=f"MobileNetV2 CIFAR-10, W{args.weight_bits} per-tensor: {len(t)} trials vs manual plans")
    full_df = pd.DataFrame(full)
    fq = full_df[full_df["name"] == "seed001_full_qat"].iloc[0]
    proxy = {f"trial_{int(x.trial)}": x.top1 for x in tc.itertuples()}
    proxy.update({m["plan"]: m["top1"] for m in manual})
    seed = json.loads((Path(args.seed_table)).read_text())["rows"] if Path(args.seed_table).is_file() else []
    pairs = [(proxy[row["name"]], row["int8_top1"], row["name"]) for _, row in full_df.iterrows()
             if row["name"] in proxy and row["name"] != "seed001_full_qat"]
    fq_proxy = next(m["top1"] for m in manual if m["plan"] == "seed001_full_qat")
    pairs.append((fq_proxy, fq["int8_top1"], "seed001_full_qat"))
    for row in seed:  # the other manual plans at full budget: the seed table (same recipe, same budget)
        if row["plan"] in proxy and row["plan"] not in {p[2] for p in pairs}:
            pairs.append((proxy[row["plan"]], row["int8_top1"], row["plan"] + " (seed table)"))
    pdf = pd.DataFrame(pairs, columns=["proxy", "full", "plan"])
    report = {
        "date": str(date.today()), "trials": args.trials, "space": args.space or "mobilenet_v2",
        "proxy": f"{args.proxy_steps} steps x {args.proxy_batch}, lr {args.proxy_lr}",
        "hypervolume": hv, "hypervolume_ref": {"top1": ref_top1, "retrained": 1.0, "latency": ref_lat},
        "compute_multiple_of_full_qat": tpe["seconds"]["total"] / fq["seconds"],
        "random_compute_multiple": rnd["seconds"]["total"] / fq["seconds"],
        "full_qat_seconds": fq["seconds"], "search_seconds": tpe["seconds"],
        "spearman": pdf["proxy"].corr(pdf["full"], method="spearman"), "spearman_pairs": pairs,
        "full": full, "manual_proxy": manual, "chosen_trial": tpe["chosen_trial"],
    }
    save_result(out / "report.json", report)
    return report


def main() -> None:
    ap = reference_parser(__doc__, "search_w5pt")
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--proxy-steps", type=int, default=50)
    ap.add_argument("--proxy-batch", type=int, default=64)
    ap.add_argument("--proxy-lr", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--full-steps", type=int, default=300)
    ap.add_argument("--full-others", type=int, default=3, help="searched plans retrained at full budget besides "
                                                                  "the chosen one")
    ap.add_argument("--space", help="search space file or built-in name (default: the model family's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-table", default=str(Path(__file__).parent / "results" / "seed_table_w5pt.json"))
    ap.add_argument("--phases", default="tpe,random,manual,full,report")
    args = ap.parse_args()
    apply_threads(args)
    out = Path(args.out)
    phases = args.phases.split(",")
    tpe = phase_search(args, out, "tpe") if "tpe" in phases else None
    rnd = phase_search(args, out, "random", sampler="random", prior=False) if "random" in phases else None
    manual = phase_manual(args, out) if "manual" in phases else None
    full = phase_full(args, out) if "full" in phases else None
    if "report" in phases:
        assert tpe and rnd and manual is not None and full is not None
        rep = phase_report(args, out, tpe, rnd, manual, full)
        print(json.dumps({k: rep[k] for k in ("hypervolume", "compute_multiple_of_full_qat", "spearman")}, indent=1))


if __name__ == "__main__":
    main()
