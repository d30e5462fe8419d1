"""Confirm a finished search at the full budget: retrain its best plans and say how far the proxy was right.

``confirm(run_dir, top=K)`` reads a search's folder (``summary.json``'s ``config``, ``trials.csv``, ``plans/``),
rebuilds its data split (same seed: the same validation images), and evaluates again, with the full QAT budget
instead of the proxy's, ``K`` plans — the plan the search chose and any trials named in ``trials_to_add`` (these even
beyond ``K``), then those of the Pareto front, best proxy top-1 first, then the other complete trials in the same
order, skipping plans that repeat one already taken —, and the all-frozen plan and full QAT of the same
configuration (``plans/all_frozen.json``, ``plans/full_qat.json``) as references. Each plan is trained at ``seeds``
training seeds (2 by default) from one calibration; its full-budget top-1 is their mean. It reports the proxy-vs-full
Spearman rank correlation, its ceiling — the full budget's own ranking at one seed against the other (measured on
MobileNetV2 W4/A4 with 2,000 validation images: 0.37, and no pair of the 8 plans told apart by the paired test;
experiments/RESULTS.md, issue 15): no proxy can rank plans more like the full budget than the full budget ranks them
itself —, how many plan pairs the full budget tells apart, the full-budget ranking and the plan the search's rule
(:func:`choose`, noise-aware by default) picks from the full-budget results, in ``confirm.json``, ``summary.json``'s
``confirm`` section and ``confirm.png`` (proxy top-1 against full-budget top-1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoselect._io import atomic_path
from autoselect.errors import AutoselectError
from autoselect.search.noise import spearman, tied, unpack
from autoselect.search.objective import ProxyBudget

__all__ = ["FULL_BUDGET", "ConfirmResult", "confirm", "config_from_dict"]

FULL_BUDGET = ProxyBudget(steps=300, batch_size=128, lr=0.001, warmup_steps=20, eval_every=300, calib_images=1024,
                          rounding_effort=1.0)


@dataclass
class ConfirmResult:
    table: pd.DataFrame  # one row per plan: label, trial, retrained, proxy top-1, full top-1
    spearman: float | None
    retest: float | None  # the full budget's ranking against itself at another training seed (None: one seed)
    chosen: str  # the label of the plan the search's rule picks from the full-budget results
    path: Path
    summary: dict[str, Any]  # what summary.json's ``confirm`` section holds
    # like for like with ``retest``: the proxy against one full-budget run, averaged over the training seeds
    one_run: float | None = None


def config_from_dict(d: dict[str, Any]) -> Any:
    """The :class:`SearchConfig` of ``summary.json``'s ``config``."""
    from autoselect.search.pareto import Constraints
    from autoselect.search.run import RayOptions, SearchConfig

    known = {f.name for f in fields(SearchConfig)}
    kw = {k: v for k, v in d.items() if k in known}
    kw["proxy"] = ProxyBudget(**d.get("proxy", {}))
    kw["constraints"] = Constraints(**d.get("constraints", {}))
    kw["ray"] = RayOptions(**d.get("ray", {}))
    if isinstance(kw.get("weight_bits"), list):
        kw["weight_bits"] = tuple(kw["weight_bits"])
    return SearchConfig(**kw)


def _separated(ranked: pd.DataFrame, seeds: int) -> tuple[int, int]:
    """(pairs of ranked plans the full budget tells apart, pairs): McNemar p < 0.05 on the first seed's per-image
    results, and the same order at every seed."""
    full = ranked[[f"full_top1_seed{k}" for k in range(seeds)]].to_numpy(float)
    hits = [unpack(v) for v in ranked["val_correct"]]
    pairs = list(combinations(range(len(ranked)), 2))
    separated = 0
    for i, j in pairs:
        signs = np.sign(full[i] - full[j])
        if signs[0] != 0 and (signs == signs[0]).all() and not tied(hits[i], hits[j]):
            separated += 1
    return separated, len(pairs)


def confirm(run_dir: str | Path, *, top: int = 5, budget: ProxyBudget = FULL_BUDGET, device: str | None = None,
            progress: bool = True, trials_to_add: Sequence[int] = (), seeds: int = 2) -> ConfirmResult:
    from autoselect.evaluate import resolve_device
    from autoselect.models import build_layer_graph
    from autoselect.plan import load_plan
    from autoselect.search.objective import TrialEvaluator
    from autoselect.search.pareto import choose
    from autoselect.search.plots import plot_confirm
    from autoselect.search.run import _prepare, _say, search_split

    out = Path(run_dir)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise AutoselectError(f"{out} holds no finished search (no summary.json)")
    summary = json.loads(summary_path.read_text())
    if "config" not in summary:
        raise AutoselectError(f"{summary_path} predates `autoselect confirm` (no config): run the search again")
    if top < 1 or seeds < 1:
        raise AutoselectError("confirm: --top and --seeds must be at least 1")
    cfg = replace(config_from_dict(summary["config"]), out=str(out), progress=progress,
                  device=device or summary["config"].get("device", "auto"))
    dev = resolve_device(cfg.device)
    prep = _prepare(cfg, out)
    assert prep.train is not None
    train, val = search_split(cfg, prep)
    lm = prep.loaded
    graph = build_layer_graph(lm.model, (1, 3, lm.input_size, lm.input_size))
    trials = pd.read_csv(out / "trials.csv")
    trials = trials[trials["state"] == "complete"]
    front = set(pd.read_csv(out / "pareto.csv")["trial"].astype(int))
    order = trials.assign(_front=~trials["trial"].astype(int).isin(front), _neg=-trials["top1"]) \
        .sort_values(["_front", "_neg"], kind="stable")
    plans: list[tuple[str, int | None, Any, float | None]] = []  # label, trial, plan, proxy top-1
    seen: set[str] = set()
    chosen_trial = int(summary["chosen_trial"])
    named = [chosen_trial, *(int(t) for t in trials_to_add)]
    unknown = sorted(set(named) - set(trials["trial"].astype(int)))
    if unknown:
        raise AutoselectError(f"confirm: no complete trial {', '.join(map(str, unknown))} in {out / 'trials.csv'}")
    first = pd.concat([trials[trials["trial"].astype(int) == n] for n in dict.fromkeys(named)])
    for k, (_, row) in enumerate(pd.concat([first, order]).iterrows()):
        n = int(row["trial"])
        path = out / "plans" / f"trial_{n}.json"
        if (k >= len(first) and len(plans) >= top) or not path.is_file() or row["params"] in seen:
            continue
        seen.add(row["params"])
        plans.append((f"trial {n}", n, load_plan(path), float(row["top1"])))
    for label, name in (("all frozen", "all_frozen.json"), ("full QAT", "full_qat.json")):
        if (out / "plans" / name).is_file():
            plans.append((label, None, load_plan(out / "plans" / name), None))
    evaluator = TrialEvaluator(lm.model, graph, train, val, replace(budget, eval_every=max(1, budget.steps)),
                               lambda specs: 0.0, device=dev, seed=cfg.seed)  # type: ignore[arg-type]
    rows = []
    for i, (label, trial, plan, proxy) in enumerate(plans, 1):
        t0 = time.perf_counter()
        runs = []
        for k in range(seeds):  # the same calibration (cached), another training seed
            evaluator.train_seed = cfg.seed + k
            runs.append(evaluator.evaluate(plan))
        res = runs[0]
        full = [r.top1 for r in runs]
        rows.append({"label": label, "trial": trial, "retrained": res.retrained, "proxy_top1": proxy,
                     "full_top1": sum(full) / len(full), **{f"full_top1_seed{k}": v for k, v in enumerate(full)},
                     "ptq_top1": res.ptq_top1, "size_mb": res.size_mb, "seconds": time.perf_counter() - t0,
                     "val_correct": res.correct})
        each = f" ({' / '.join(f'{v:.2f}' for v in full)})" if seeds > 1 else ""
        _say(cfg, f"confirm {i}/{len(plans)}: {label}: full-budget top-1 {rows[-1]['full_top1']:.2f}%{each} "
                  f"(proxy {'-' if proxy is None else f'{proxy:.2f}%'}), {100 * res.retrained:.1f}% retrained, "
                  f"{time.perf_counter() - t0:.0f} s")
    table = pd.DataFrame(rows)
    ranked = table[table["proxy_top1"].notna()]
    rho = spearman(ranked["proxy_top1"], ranked["full_top1"])
    retest = spearman(ranked["full_top1_seed0"], ranked["full_top1_seed1"]) if seeds > 1 else None
    one_run = _proxy_vs_one_run(ranked, seeds)
    separated, pairs = _separated(ranked, seeds)
    pick = choose(table.rename(columns={"full_top1": "top1"}).assign(latency=1.0), cfg.constraints,
                  fp32_top1=float(summary["fp32_top1"]))
    chosen = str(pick["label"])
    proxy_choice = f"trial {chosen_trial}"
    result = {
        "budget": asdict(budget), "top": top, "plans": len(table), "seeds": seeds, "spearman_proxy_vs_full": rho,
        "spearman_full_retest": retest, "spearman_proxy_vs_one_run": one_run, "separated_pairs": separated,
        "pairs": pairs,
        "ranking": table.sort_values("full_top1", ascending=False)[["label", "full_top1", "retrained"]]
        .to_dict("records"),
        "chosen_now": chosen, "chosen_by_proxy": proxy_choice, "same_choice": chosen == proxy_choice,
        "tolerance": cfg.constraints.describe_tolerance(), "seconds": float(table["seconds"].sum()),
    }
    with atomic_path(out / "confirm.json") as tmp:
        rows_json = table.astype(object)  # per-image results kept: later paired comparisons need them
        rows_json = rows_json.where(rows_json.notna(), None).to_dict("records")  # no NaN in the JSON
        tmp.write_text(json.dumps({**result, "table": rows_json}, indent=2) + "\n")
    summary["confirm"] = result
    with atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    plot_confirm(table, out / "confirm.png", spearman=rho, chosen=chosen, retest=retest, one_run=one_run,
                 title=f"{summary.get('model', '')}: proxy ({cfg.proxy.steps} steps) vs full budget "
                       f"({budget.steps} steps)")
    return ConfirmResult(table=table, spearman=rho, retest=retest, one_run=one_run, chosen=chosen,
                         path=out / "confirm.json", summary=result)


def _proxy_vs_one_run(ranked: pd.DataFrame, seeds: int) -> float | None:
    """The proxy's Spearman against a single full-budget run, averaged over the training seeds: the figure to set
    beside the full budget against itself (one run against another), both sides then carrying one run's noise. The
    proxy against the seeds' mean is higher for the same proxy, since a mean is less noisy. None with one seed."""
    if seeds < 2:
        return None
    each = [spearman(ranked["proxy_top1"], ranked[f"full_top1_seed{k}"]) for k in range(seeds)]
    known = [r for r in each if r is not None]
    return sum(known) / len(known) if known else None
