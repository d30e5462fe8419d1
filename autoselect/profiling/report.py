"""``SensitivityReport``: the profiler's result, as DataFrames, files and a printable ranking."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from autoselect._io import atomic_path
from autoselect.errors import AutoselectError

__all__ = ["SensitivityReport", "REPORT_VERSION"]

REPORT_VERSION = 1


@dataclass
class SensitivityReport:
    """``layers``: one row per quantizable layer, ranked (``rank`` 1 = most sensitive by ``rank_by``).
    ``blocks``: one row per block, in network order. ``output``: logit-level metrics (qmse, qce, qkl, agreement,
    top1_fp32/top1_quant when labels were given)."""

    layers: pd.DataFrame
    blocks: pd.DataFrame
    output: dict[str, float]
    rank_by: str
    spec: str
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    total_params: int = 0

    @classmethod
    def build(cls, layer_rows: list[dict[str, Any]], block_rows: list[dict[str, Any]], output: dict[str, float],
              *, rank_by: str, **kw: Any) -> SensitivityReport:
        layers = pd.DataFrame(layer_rows)
        if rank_by not in layers.columns or not pd.api.types.is_numeric_dtype(layers[rank_by]):
            numeric = [c for c in layers.columns if pd.api.types.is_numeric_dtype(layers[c])]
            raise AutoselectError(f"cannot rank by {rank_by!r}; numeric columns: {', '.join(numeric)}")
        layers = layers.sort_values(rank_by, ascending=False, kind="stable").reset_index(drop=True)
        layers.insert(0, "rank", range(1, len(layers) + 1))
        blocks = pd.DataFrame(block_rows)
        blocks["drift_rank"] = blocks["drift"].rank(ascending=False, method="first").astype(int)
        return cls(layers=layers, blocks=blocks, output=output, rank_by=rank_by, **kw)

    def top(self, n: int = 10) -> pd.DataFrame:
        return self.layers.head(n)

    def format_top(self, n: int = 10) -> str:
        cols = [c for c in ("rank", "path", "role", "block", "params", self.rank_by, "drift", "qmse", "iso_qkl")
                if c in self.layers.columns]
        cols = list(dict.fromkeys(cols))
        return self.top(n)[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def summary(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "model": self.model,
            "spec": self.spec,
            "rank_by": self.rank_by,
            "input_shape": list(self.input_shape),
            "total_params": self.total_params,
            "output": self.output,
            "timings": self.timings,
        }

    def save(self, directory: str | Path, *, plots: bool = True) -> dict[str, Path]:
        """Write layers.csv, blocks.csv, summary.json (and PNG plots); returns what was written."""
        d = Path(directory)
        written = {"layers": d / "layers.csv", "blocks": d / "blocks.csv", "summary": d / "summary.json"}
        with atomic_path(written["layers"]) as tmp:
            self.layers.to_csv(tmp, index=False)
        with atomic_path(written["blocks"]) as tmp:
            self.blocks.to_csv(tmp, index=False)
        with atomic_path(written["summary"]) as tmp:
            tmp.write_text(json.dumps(_jsonable(self.summary()), indent=2) + "\n")
        if plots:
            from autoselect.profiling.plots import plot_block_drift, plot_layer_ranges

            written["drift_plot"] = plot_block_drift(self, d / "drift_per_block.png")
            written["ranges_plot"] = plot_layer_ranges(self, d / "ranges_per_layer.png")
        return written

    @classmethod
    def load(cls, directory: str | Path) -> SensitivityReport:
        d = Path(directory)
        try:
            summary = json.loads((d / "summary.json").read_text())
            layers = pd.read_csv(d / "layers.csv")
            blocks = pd.read_csv(d / "blocks.csv")
        except FileNotFoundError as exc:
            raise AutoselectError(f"no saved profile in {d}: {Path(exc.filename or '').name} is missing") from None
        except (ValueError, json.JSONDecodeError) as exc:
            raise AutoselectError(f"saved profile in {d} is malformed: {exc}") from None
        if summary.get("version") != REPORT_VERSION:
            raise AutoselectError(f"saved profile in {d} has version {summary.get('version')!r}; "
                                  f"this autoselect reads version {REPORT_VERSION}")
        return cls(layers=layers, blocks=blocks, output=summary["output"], rank_by=summary["rank_by"],
                   spec=summary["spec"], model=summary.get("model", ""), timings=summary.get("timings", {}),
                   input_shape=tuple(summary.get("input_shape", ())), total_params=summary.get("total_params", 0))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
