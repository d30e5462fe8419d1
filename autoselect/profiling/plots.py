"""PNG plots of a sensitivity report (matplotlib's Agg backend; files written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autoselect._io import atomic_path

if TYPE_CHECKING:
    from autoselect.profiling.report import SensitivityReport

__all__ = ["plot_block_drift", "plot_layer_ranges"]

_ROLE_COLORS = {
    "stem": "#7f7f7f", "expand": "#1f77b4", "depthwise": "#ff7f0e", "se": "#bcbd22", "project": "#2ca02c",
    "conv": "#9467bd", "classifier": "#d62728", "linear": "#8c564b",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_block_drift(report: SensitivityReport, path: str | Path) -> Path:
    """Accumulated drift of each block's output (seed 001, Fig. 5) and the largest local drift inside it."""
    plt = _pyplot()
    b = report.blocks.sort_values("order")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(b)), 4.0))
    xs = range(len(b))
    ax.bar(xs, b["drift"], color="#ff7f0e", label="drift of block output (accumulated)")
    ax.plot(xs, b["max_local_drift"], "o-", color="#1f77b4", label="max local drift of its layers")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(b["block"], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("||A_fp32 - A_q|| / ||A_fp32||")
    ax.set_title(f"Quantization drift per block — {report.model} — {report.spec}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_layer_ranges(report: SensitivityReport, path: str | Path) -> Path:
    """Weight range before/after BN folding, activation range, and local drift, per layer in network order."""
    plt = _pyplot()
    df = report.layers.sort_values("order")
    colors = [_ROLE_COLORS.get(r, "#333333") for r in df["role"]]
    xs = list(range(len(df)))
    fig, axes = plt.subplots(3, 1, figsize=(max(7.0, 0.18 * len(df)), 8.0), sharex=True)
    axes[0].plot(xs, df["w_range_unfolded"], "--", color="#999999", label="before BN folding")
    axes[0].scatter(xs, df["w_range"], c=colors, s=14, zorder=3, label="after BN folding")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("weight range")
    axes[0].legend(fontsize=7)
    if "act_range" in df:
        axes[1].scatter(xs, df["act_range"], c=colors, s=14)
        axes[1].set_yscale("log")
    axes[1].set_ylabel("input activation range")
    axes[2].bar(xs, df["local_drift"], color=colors)
    axes[2].set_ylabel("local drift")
    axes[2].set_xticks(xs)
    axes[2].set_xticklabels(df["path"], rotation=90, fontsize=5)
    handles = [plt.Line2D([0], [0], marker="o", ls="", color=c, label=r) for r, c in _ROLE_COLORS.items()
               if r in set(df["role"])]
    axes[1].legend(handles=handles, fontsize=7, ncol=4)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Ranges and local drift per layer — {report.model} — {report.spec}", fontsize=9)
    return _save(fig, Path(path))
