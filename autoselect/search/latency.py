"""The latency objective: measured on the exported INT8 model where the target runs here, else a cost model.

Latency depends on the quantization configuration only (which layers are quantized, at which bit-width, with
which activation grid, smoothed or not), not on whether a layer was retrained. Measurements are therefore cached
per distinct configuration, on disk, so that a study of a hundred freeze/QAT trials exports and times once.

**Measured** (targets that run here: x86, qnnpack): ONNX QDQ export, onnxruntime, batch 1, one thread, median of
``runs``; the unit is milliseconds.

**Cost model** (every other target; said so in the output): for each layer,
``time = max(compute, memory)`` with ``compute = MACs x w_bits x a_bits`` (BitOps) and ``memory = bits of weights +
input + output activations``, each divided by the same layer's FP32 figures (32 x 32 BitOps, 32-bit tensors) and
weighted by the layer's share of the FP32 model's MACs; each boundary between an FP32 layer and a quantized one
adds the cost of converting its activation tensor (one memory pass), and so does a smoothed layer whose scale
cannot be folded into the layer before it (an explicit float Mul). The unit is "FP32 = 1": 0.25 means a quarter
of the FP32 model's cost. It ranks configurations; it is not a prediction in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoselect._io import atomic_path

__all__ = ["LatencyModel", "config_key", "cost_model"]


def config_key(specs: Mapping[str, Any]) -> str:
    """A short hash of the deployable configuration: per layer, FP32 or (weight bits, act symmetric, smooth)."""
    items: list[tuple[Any, ...]] = []
    for path in sorted(specs):
        spec = specs[path]
        if spec is None:
            items.append((path, None))
        else:
            items.append((path, spec.weight.bits if spec.weight is not None else None,
                          spec.act.symmetric if spec.act is not None else None, bool(spec.smooth)))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def cost_model(layers: Sequence[Any], specs: Mapping[str, Any]) -> float:
    """Relative cost (FP32 model = 1) of ``specs`` over the layer graph rows ``layers`` (see the module doc)."""
    from autoselect.quant.simulate import smoothing_folds

    total_macs = sum(max(1, r.macs) for r in layers)
    by_path = {r.path: r for r in layers}
    cost = 0.0
    prev_fp32: bool | None = None
    for r in layers:
        spec = specs.get(r.path)
        share = max(1, r.macs) / total_macs
        act_elems = _numel(r.input_shape) + _numel(r.output_shape)
        fp32_mem = 32 * (r.params + act_elems)
        if spec is None or spec.weight is None:
            cost += share
            is_fp32 = True
        else:
            wb = spec.weight.bits
            ab = spec.act.bits if spec.act is not None else 32
            compute = wb * ab / (32 * 32)
            memory = (wb * r.params + ab * act_elems) / fp32_mem
            cost += share * max(compute, memory)
            is_fp32 = False
            if spec.smooth and not smoothing_folds(r, by_path, specs):  # an explicit float Mul on the input
                cost += share * _numel(r.input_shape) * 32 / fp32_mem
        if prev_fp32 is not None and is_fp32 != prev_fp32:
            cost += share * _numel(r.input_shape) * 32 / fp32_mem
        prev_fp32 = is_fp32
    return cost


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape[1:]:  # per image
        n *= int(s)
    return n


class LatencyModel:
    """Latency of a quantization configuration, measured (and cached in ``cache_path``) or estimated.

    ``measure(specs) -> ms`` is given only for targets that run here; it is called once per new configuration,
    and once with ``None`` for the FP32 model (the reference point of :meth:`reference`).
    """

    def __init__(self, layers: Sequence[Any], *, measure: Callable[[Any], float] | None = None,
                 cache_path: str | Path | None = None) -> None:
        self.layers = list(layers)
        self._measure = measure
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, float] = {}
        self.measurements = 0
        if self.cache_path is not None and self.cache_path.is_file():
            try:
                self.cache = {str(k): float(v) for k, v in json.loads(self.cache_path.read_text()).items()}
            except (ValueError, AttributeError):
                self.cache = {}

    @property
    def measured(self) -> bool:
        return self._measure is not None

    @property
    def unit(self) -> str:
        return "ms (onnxruntime, batch 1, 1 thread)" if self.measured else "relative (cost model: BitOps + memory, FP32 = 1)"

    def reference(self) -> float:
        """The FP32 model's latency in the same unit: 1 for the cost model, measured (and cached) otherwise."""
        if self._measure is None:
            return 1.0
        return self._cached("fp32", None)

    def __call__(self, specs: Mapping[str, Any]) -> float:
        if self._measure is None:
            return cost_model(self.layers, specs)
        return self._cached(config_key(specs), specs)

    def _cached(self, key: str, specs: Mapping[str, Any] | None) -> float:
        assert self._measure is not None
        if key not in self.cache:
            self.cache[key] = float(self._measure(specs))  # type: ignore[arg-type]
            self.measurements += specs is not None
            if self.cache_path is not None:
                with atomic_path(self.cache_path) as tmp:
                    tmp.write_text(json.dumps(self.cache, indent=1) + "\n")
        return self.cache[key]
