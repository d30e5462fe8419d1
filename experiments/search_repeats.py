"""The same search under several seeds: how often each group is retrained, and how the chosen plans do at the full
budget (issue 15, item 3).

For each seed: ``autoselect search ... --seed S`` into ``OUT/sS`` (skipped when that folder already holds a finished
search), then ``confirm`` at the full budget with ``--top`` plans, the search's choice and the plan the 0.5-point rule
would have chosen from the same trials. Reported per seed and over the seeds: each rule's chosen plan (retrained
fraction, proxy and full-budget top-1), the full budget's best feasible plan, the proxy-vs-full Spearman, and, per
group, in how many seeds each rule's plan retrained it. ``OUT/repeats.json``, ``OUT/repeats.png``.

``--bc-mode local`` runs the searches and confirms with the bias correction of sessions 15-17 (local in every layer;
no frozen layer is then re-matched after training), so that a seed added later stays like for like with them.

    python experiments/search_repeats.py --seeds 0 1 2 --out experiments/results/repeats_w4a4 -- \
        --model mobilenet_v2 --weights ../shared/fixtures/mobilenet_v2_cifar10_fp32.pt --data ../shared/datasets/cifar10 \
        --target generic --weight-bits 4 --act-bits 4 --trials 16 --val-images 2000 --max-retrained 0.1 --latency cost
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from _common import save_result

from autoselect.cli import main as cli
from autoselect.profiling.plots import _pyplot, _save
from autoselect.quant.methods import bias_correction
from autoselect.search.confirm import config_from_dict, confirm
from autoselect.search.noise import unpack
from autoselect.search.pareto import choose, near_best
from autoselect.search.prior import QAT_ACTIONS

RULES = {"auto": None, "0.5": 0.5}


def _rule_choice(run: Path, tolerance: float | None) -> pd.Series:
    summary = json.loads((run / "summary.json").read_text())
    cons = replace(config_from_dict(summary["config"]).constraints, tolerance=tolerance)
    trials = pd.read_csv(run / "trials.csv")
    return choose(trials[trials["state"] == "complete"].reset_index(drop=True), cons,
                  fp32_top1=float(summary["fp32_top1"]))


def _retrained_groups(params: str) -> list[str]:
    return sorted(k.rsplit(".", 1)[0] for k, v in json.loads(params).items()
                  if k.endswith(".action") and v in QAT_ACTIONS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--top", type=int, default=8, help="plans confirmed besides the rules' choices")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bc-mode", choices=bias_correction.MODES, default=bias_correction.MODE,
                    help="bias correction mode (local: the code before session 18)")
    ap.add_argument("search_args", nargs=argparse.REMAINDER, help="after --: the `autoselect search` options")
    args = ap.parse_args()
    extra = [a for a in args.search_args if a != "--"]
    bias_correction.MODE = args.bc_mode
    out = Path(args.out)
    per_seed, counts = [], {rule: {} for rule in RULES}
    for seed in args.seeds:
        run = out / f"s{seed}"
        if not (run / "summary.json").is_file():
            rc = cli(["search", *extra, "--seed", str(seed), "--out", str(run)])
            if rc != 0:
                raise SystemExit(f"search seed {seed} failed (exit {rc})")
        picks = {rule: _rule_choice(run, tol) for rule, tol in RULES.items()}
        if not (run / "confirm.json").is_file():
            confirm(run, top=args.top, trials_to_add=[int(p["trial"]) for p in picks.values()])
        conf = json.loads((run / "confirm.json").read_text())
        table = pd.DataFrame(conf["table"]).set_index("label")
        cons = config_from_dict(json.loads((run / "summary.json").read_text())["config"]).constraints
        feasible = table[table["retrained"] <= (cons.max_retrained if cons.max_retrained is not None else 1.0)]
        best = feasible["full_top1"].idxmax()
        within = near_best(feasible.rename(columns={"full_top1": "top1"})
                           .assign(latency=1.0).reset_index(), replace(cons, tolerance=None))
        tied_best = set(feasible.reset_index()["label"][within])
        row: dict = {"seed": seed, "spearman": conf["spearman_proxy_vs_full"], "best_feasible": best,
                     "best_feasible_top1": float(feasible.loc[best, "full_top1"]),
                     "best_feasible_retrained": float(feasible.loc[best, "retrained"]),
                     "tied_with_best_at_full": sorted(tied_best)}
        for rule, pick in picks.items():
            label = f"trial {int(pick['trial'])}"
            row[rule] = {"trial": int(pick["trial"]), "retrained": float(pick["retrained"]),
                         "proxy_top1": float(pick["top1"]), "full_top1": float(table.loc[label, "full_top1"]),
                         "is_best": label == best, "ties_best": label in tied_best,
                         "groups": _retrained_groups(pick["params"])}
            for g in row[rule]["groups"]:
                counts[rule][g] = counts[rule].get(g, 0) + 1
        per_seed.append(row)
        print(f"seed {seed}: Spearman {row['spearman']}; best feasible at full budget {best} "
              f"({row['best_feasible_top1']:.2f}%); " + "; ".join(
                  f"{rule}: {r['trial']} ({100 * r['retrained']:.1f}% retrained) full {r['full_top1']:.2f}%"
                  for rule, r in ((k, row[k]) for k in RULES)), flush=True)
    agg = {}
    for rule in RULES:
        full = np.array([r[rule]["full_top1"] for r in per_seed])
        frac = np.array([r[rule]["retrained"] for r in per_seed])
        agg[rule] = {"full_top1_mean": float(full.mean()), "full_top1_sd": float(full.std(ddof=1)) if len(full) > 1
                     else 0.0, "full_top1_range": [float(full.min()), float(full.max())],
                     "retrained_mean": float(frac.mean()), "retrained_range": [float(frac.min()), float(frac.max())],
                     "picked_best": int(sum(r[rule]["is_best"] for r in per_seed)),
                     "picked_a_tie_of_best": int(sum(r[rule]["ties_best"] for r in per_seed)),
                     "groups_retrained": dict(sorted(counts[rule].items()))}
        print(f"{rule}: full-budget top-1 {agg[rule]['full_top1_mean']:.2f} +- {agg[rule]['full_top1_sd']:.2f} "
              f"({len(per_seed)} seeds), retrained {100 * agg[rule]['retrained_mean']:.1f}% on average; picked the "
              f"full budget's best {agg[rule]['picked_best']}/{len(per_seed)}, a plan tied with it "
              f"{agg[rule]['picked_a_tie_of_best']}/{len(per_seed)}; groups retrained: {agg[rule]['groups_retrained']}")
    save_result(out / "repeats.json", {"date": date.today().isoformat(), "search_args": extra, "top": args.top,
                                       "bc_mode": args.bc_mode,
                                       "seeds": per_seed, "rules": agg})
    _plot(per_seed, agg, out / "repeats.png")


def _plot(per_seed: list[dict], agg: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, rule in enumerate(RULES):
        xs = [100 * r[rule]["retrained"] for r in per_seed]
        ys = [r[rule]["full_top1"] for r in per_seed]
        ax1.scatter(xs, ys, label=f"rule {rule}", marker="os"[i], s=50)
    ax1.scatter([100 * r["best_feasible_retrained"] for r in per_seed], [r["best_feasible_top1"] for r in per_seed],
                marker="*", s=120, color="black", label="best feasible at full budget")
    ax1.set_xlabel("parameters retrained [%]")
    ax1.set_ylabel("full-budget top-1 [%] (validation)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    groups = sorted({g for rule in RULES for g in agg[rule]["groups_retrained"]})
    width = 0.4
    for i, rule in enumerate(RULES):
        ax2.bar(np.arange(len(groups)) + i * width, [agg[rule]["groups_retrained"].get(g, 0) for g in groups], width,
                label=f"rule {rule}")
    ax2.set_xticks(np.arange(len(groups)) + width / 2, groups, rotation=70, fontsize=7)
    ax2.set_ylabel(f"seeds retraining it (of {len(per_seed)})")
    ax2.legend(fontsize=8)
    fig.suptitle("the search under several seeds: chosen plans at the full budget, groups retrained", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


if __name__ == "__main__":
    main()
