"""How well can any proxy rank a search's plans? The full budget against itself, and proxies that share its start.

Takes a search folder that ``autoselect confirm`` has run on (its ``confirm.json`` names the plans) and evaluates
the same plans, on the same validation images, from one calibration (the full budget's: its image count, the
search's seed), under:

- ``full``: the full budget (``autoselect confirm``'s), training seed = the search's seed: the reference;
- ``full_retest``: the full budget again, another training seed — the ceiling: no proxy can rank the plans more
  like the full budget than the full budget ranks them itself;
- ``proxy_shared`` / ``proxy_shared_retest``: the search's proxy (steps, batch, lr), but calibrated as the full budget
  is (same images, same count), at the two training seeds — how much of the proxy's disagreement is its start;
- ``proxy_long``: ``--long-steps`` proxy steps from the shared start.

For each: Spearman over the searched plans against ``full``, and, of the plan pairs the full
budget separates (McNemar p < 0.05 at the retest seed, same order at both seeds), how many the setting orders alike.

    python experiments/proxy_ceiling.py experiments/results/confirm_w4pca4_s0 [--val-images 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import date
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import save_result

from autoselect.models import build_layer_graph
from autoselect.plan import load_plan
from autoselect.search.confirm import FULL_BUDGET, config_from_dict
from autoselect.search.noise import mcnemar_p, spearman, unpack
from autoselect.search.objective import TrialEvaluator
from autoselect.search.run import _prepare, search_split


def ordered_pairs(scores: pd.Series, full: pd.Series, retest: pd.Series,
                  hits: dict[str, np.ndarray]) -> tuple[int, int]:
    """(pairs the full budget separates, of which ``scores`` orders the same way). Separated: McNemar p < 0.05 on
    the retest seed's per-image results, and the same order at both seeds."""
    sep = agree = 0
    for a, b in combinations(full.index, 2):
        if mcnemar_p(hits[a], hits[b]) >= 0.05 or np.sign(full[a] - full[b]) != np.sign(retest[a] - retest[b]):
            continue
        sep += 1
        agree += int(np.sign(scores[a] - scores[b]) == np.sign(full[a] - full[b]))
    return sep, agree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a search folder with confirm.json")
    ap.add_argument("--long-steps", type=int, default=180)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-images", type=int, help="score on this many validation images instead of the search's "
                    "(another seeded split of the train split)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text())
    conf = json.loads((run / "confirm.json").read_text())
    cfg = replace(config_from_dict(summary["config"]), out=str(run), progress=False, device="cpu")
    if args.val_images:
        cfg = replace(cfg, val_images=args.val_images)
    prep = _prepare(cfg, run)
    train, val = search_split(cfg, prep)
    lm = prep.loaded
    graph = build_layer_graph(lm.model, (1, 3, lm.input_size, lm.input_size))
    table = pd.DataFrame(conf["table"]).set_index("label")
    files = {lab: run / "plans" / (f"trial_{int(r.trial)}.json" if pd.notna(r.trial) else
                                   {"all frozen": "all_frozen.json", "full QAT": "full_qat.json"}[lab])
             for lab, r in table.iterrows()}
    plans = {lab: load_plan(p) for lab, p in files.items()}
    searched = [lab for lab in table.index if pd.notna(table.loc[lab, "trial"])]
    # one evaluator, calibrated as the full budget is (confirm: FULL_BUDGET's calibration images, the search's seed)
    ev = TrialEvaluator(lm.model, graph, train, val, FULL_BUDGET, lambda specs: 0.0, device="cpu", seed=cfg.seed)
    settings = {
        "full": (replace(FULL_BUDGET, eval_every=FULL_BUDGET.steps), cfg.seed, list(plans)),
        "full_retest": (replace(FULL_BUDGET, eval_every=FULL_BUDGET.steps), cfg.seed + 1, list(plans)),
        "proxy_shared": (replace(cfg.proxy, calib_images=FULL_BUDGET.calib_images, eval_every=cfg.proxy.steps),
                         cfg.seed, searched),
        "proxy_shared_retest": (replace(cfg.proxy, calib_images=FULL_BUDGET.calib_images,
                                        eval_every=cfg.proxy.steps), cfg.seed + 1, searched),
        "proxy_long": (replace(cfg.proxy, steps=args.long_steps, calib_images=FULL_BUDGET.calib_images,
                               eval_every=args.long_steps), cfg.seed, searched),
    }
    rows, hits = [], {}
    for name, (budget, seed, labels) in settings.items():
        ev.budget, ev.train_seed = budget, seed
        for lab in labels:
            t0 = time.perf_counter()
            res = ev.evaluate(plans[lab])
            rows.append({"setting": name, "label": lab, "top1": res.top1, "ptq_top1": res.ptq_top1,
                         "retrained": res.retrained, "seconds": time.perf_counter() - t0})
            if name == "full_retest":
                hits[lab] = unpack(res.correct or "")
            print(f"{name}: {lab}: {res.top1:.2f}% (confirm.json {table.loc[lab, 'full_top1']:.2f}%, "
                  f"PTQ start {res.ptq_top1:.2f}%) {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    full = df[df.setting == "full"].set_index("label").loc[searched, "top1"]
    report: dict = {"run": str(run), "date": date.today().isoformat(), "plans": searched,
                    "full_budget": FULL_BUDGET.__dict__, "proxy": cfg.proxy.__dict__, "long_steps": args.long_steps,
                    "settings": {}}
    scores_by = {"proxy_search": table.loc[searched, "proxy_top1"]}
    for name in ("full_retest", "proxy_shared", "proxy_shared_retest", "proxy_long"):
        scores_by[name] = df[df.setting == name].set_index("label").loc[searched, "top1"]
    for name, scores in scores_by.items():
        sep, agree = ordered_pairs(scores, full, scores_by["full_retest"], hits)
        report["settings"][name] = {"spearman_vs_confirm": spearman(scores, full), "separated_pairs": sep,
                                    "same_order": agree, "top1": scores.to_dict()}
    report["spearman_proxy_shared_vs_retest"] = spearman(scores_by["proxy_shared"], scores_by["proxy_shared_retest"])
    report["spearman_confirm_json_vs_full"] = spearman(table.loc[searched, "full_top1"], full)
    report["rows"] = rows
    report["val_images"] = len(val)
    save_result(run / f"proxy_ceiling{f'_val{args.val_images}' if args.val_images else ''}.json", report)
    for name, s in report["settings"].items():
        print(f"{name:22s} Spearman {s['spearman_vs_confirm']:+.2f}  separated pairs ordered alike "
              f"{s['same_order']}/{s['separated_pairs']}")


if __name__ == "__main__":
    main()
