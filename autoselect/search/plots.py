"""The search's plots: the Pareto front (top-1 against parameters retrained, latency as colour), the confirmation
(proxy against full-budget top-1) and the profile's fidelity (each metric against the groups' measured benefit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from autoselect.profiling.plots import _pyplot, _save

__all__ = ["plot_confirm", "plot_fidelity", "plot_pareto"]


def plot_pareto(trials: pd.DataFrame, front: pd.DataFrame, path: str | Path, *, latency_unit: str,
                chosen: int | None = None, references: pd.DataFrame | None = None,
                title: str = "") -> Path:
    """``trials``/``front``: frames with top1, retrained, latency (complete trials); ``references``: extra points
    with a ``label`` column (e.g. the seed study's manual plans under the same proxy), drawn as labelled stars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if not trials.empty:
        sc = ax.scatter(100 * trials["retrained"], trials["top1"], c=trials["latency"], cmap="viridis", s=28,
                        alpha=0.75, label="trials")
        if trials["latency"].nunique() > 1:
            fig.colorbar(sc, ax=ax, label=f"latency [{latency_unit}]")
    if not front.empty:
        f = front.sort_values("retrained")
        ax.step(100 * f["retrained"], np.maximum.accumulate(f["top1"].to_numpy()), where="post", color="#d62728",
                lw=1.5, label="Pareto front")
        ax.scatter(100 * f["retrained"], f["top1"], facecolors="none", edgecolors="#d62728", s=70)
    if chosen is not None and chosen in set(trials.get("trial", [])):
        row = trials[trials["trial"] == chosen].iloc[0]
        ax.scatter([100 * row["retrained"]], [row["top1"]], marker="D", s=90, color="#ff7f0e", zorder=5,
                   label=f"chosen (trial {chosen})")
    if references is not None and not references.empty:
        ax.scatter(100 * references["retrained"], references["top1"], marker="*", s=140, color="black", zorder=6,
                   label="manual plans")
        for _, r in references.iterrows():
            ax.annotate(str(r["label"]), (100 * r["retrained"], r["top1"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7)
    ax.set_xlabel("parameters retrained [%]")
    ax.set_ylabel("INT8 top-1 after the QAT proxy [%] (validation)")
    ax.set_title(title or "search: top-1 vs parameters retrained")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, Path(path))


def plot_confirm(table: pd.DataFrame, path: str | Path, *, spearman: float | None, chosen: str,
                 title: str = "", retest: float | None = None, one_run: float | None = None) -> Path:
    """Proxy top-1 against full-budget top-1 of the confirmed plans (the range over training seeds as bars;
    references, with no proxy figure, as horizontal lines), the plan chosen from the full-budget results marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ranked = table[table["proxy_top1"].notna()]
    seeds = [c for c in table.columns if c.startswith("full_top1_seed")]
    if len(seeds) > 1:  # the spread over training seeds around the mean
        lo, hi = ranked[seeds].min(axis=1), ranked[seeds].max(axis=1)
        ax.errorbar(ranked["proxy_top1"], ranked["full_top1"], fmt="none", ecolor="gray", lw=1, capsize=2,
                    yerr=[ranked["full_top1"] - lo, hi - ranked["full_top1"]])
    ax.scatter(ranked["proxy_top1"], ranked["full_top1"], c=100 * ranked["retrained"], cmap="viridis", s=40,
               zorder=3)
    for _, r in ranked.iterrows():
        ax.annotate(f"{r['label']} ({100 * r['retrained']:.0f}%)", (r["proxy_top1"], r["full_top1"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7,
                    weight="bold" if r["label"] == chosen else "normal")
    for _, r in table[table["proxy_top1"].isna()].iterrows():
        ax.axhline(r["full_top1"], ls="--", lw=1, color="gray")
        ax.annotate(str(r["label"]), (ax.get_xlim()[0], r["full_top1"]), fontsize=7, color="gray",
                    textcoords="offset points", xytext=(2, 2))
    rho = "n/a" if spearman is None else f"{spearman:.2f}"
    ceiling = "" if retest is None else f" (one full run vs another: {retest:.2f}" + (
        ")" if one_run is None else f"; proxy vs one full run: {one_run:.2f})")
    ax.set_xlabel("top-1 after the proxy [%] (validation)")
    ax.set_ylabel("top-1 at the full budget [%] (validation; mean over training seeds)")
    ax.set_title((title + "\n" if title else "") + f"Spearman {rho}{ceiling}; chosen now: {chosen}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_fidelity(fidelity: dict, path: str | Path, *, rank_by: str, title: str = "") -> Path:
    """One panel per profile metric: each group's summed metric (log scale) against its measured QAT benefit."""
    plt = _pyplot()
    table = fidelity["table"]
    known = table[table["benefit"].notna()]
    metrics = list(fidelity["spearman"])
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4 * max(1, len(metrics)), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        x = known[metric].clip(lower=1e-12)
        ax.scatter(x, known["benefit"], s=22, color="#d62728" if metric == rank_by else "#1f77b4")
        for _, r in known.iterrows():
            ax.annotate(str(r["group"]), (max(r[metric], 1e-12), r["benefit"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 2))
        rho = fidelity["spearman"][metric]
        ax.set_xscale("log")
        ax.set_xlabel(f"{metric} (group sum){' - the prior' if metric == rank_by else ''}")
        ax.set_title(f"Spearman {'n/a' if rho is None else f'{rho:+.2f}'}", fontsize=9)
        ax.axhline(0.0, lw=0.8, color="gray")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("measured QAT benefit [top-1 points]")
    fig.suptitle(title or f"profile fidelity: {fidelity['groups']} groups, {fidelity['trials']} trials", fontsize=9)
    return _save(fig, Path(path))
