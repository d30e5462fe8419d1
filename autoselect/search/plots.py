"""The Pareto plot: top-1 against parameters retrained, latency as colour, the front joined by a line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from autoselect.profiling.plots import _pyplot, _save

__all__ = ["plot_confirm", "plot_pareto"]


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
                 title: str = "") -> Path:
    """Proxy top-1 against full-budget top-1 of the confirmed plans (references, with no proxy figure, as
    horizontal lines), the plan chosen from the full-budget results marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ranked = table[table["proxy_top1"].notna()]
    ax.scatter(ranked["proxy_top1"], ranked["full_top1"], c=100 * ranked["retrained"], cmap="viridis", s=40)
    for _, r in ranked.iterrows():
        ax.annotate(f"{r['label']} ({100 * r['retrained']:.0f}%)", (r["proxy_top1"], r["full_top1"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7,
                    weight="bold" if r["label"] == chosen else "normal")
    for _, r in table[table["proxy_top1"].isna()].iterrows():
        ax.axhline(r["full_top1"], ls="--", lw=1, color="gray")
        ax.annotate(str(r["label"]), (ax.get_xlim()[0], r["full_top1"]), fontsize=7, color="gray",
                    textcoords="offset points", xytext=(2, 2))
    rho = "n/a" if spearman is None else f"{spearman:.2f}"
    ax.set_xlabel("top-1 after the proxy [%] (validation)")
    ax.set_ylabel("top-1 at the full budget [%] (validation)")
    ax.set_title((title + "\n" if title else "") + f"Spearman {rho}; chosen now: {chosen}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
