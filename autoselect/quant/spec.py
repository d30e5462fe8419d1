"""What to quantize and how: one :class:`TensorQuant` per tensor, one :class:`QuantSpec` per layer.

Per-layer maps (:func:`resolve_specs`) are keyed by module path like plans: exact path, ``"re:<pattern>"``,
``"role:<role>"``, ``"_default"`` (see :mod:`autoselect.plan`); a layer matched by nothing stays FP32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from autoselect.errors import AutoselectError
from autoselect.plan import resolve_keys

__all__ = ["TensorQuant", "QuantSpec", "OBSERVERS", "resolve_specs", "w8a8"]

OBSERVERS = ("minmax", "mse", "percentile")


@dataclass(frozen=True, kw_only=True)
class TensorQuant:
    """Uniform quantization of one tensor (seed 002, eq. 1).

    ``symmetric`` uses signed integers with zero-point 0; asymmetric uses unsigned integers ``[0, 2^bits - 1]`` with
    a zero-point, so that non-negative activations use the whole range. ``per_channel`` (weights only) gives each
    output channel its own scale. ``pot`` rounds scales up to powers of two (TVM).
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    observer: str = "minmax"
    percentile: float = 99.99
    pot: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise AutoselectError(f"bit-width must be between 2 and 16, got {self.bits}")
        if self.observer not in OBSERVERS:
            raise AutoselectError(f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise AutoselectError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def describe(self) -> str:
        gran = "per-channel" if self.per_channel else "per-tensor"
        sym = "sym" if self.symmetric else "asym"
        pot = " pot" if self.pot else ""
        return f"{self.bits}b {sym} {gran} {self.observer}{pot}"


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one layer is quantized: its weight and its input activation (``None`` = kept in FP32)."""

    weight: TensorQuant | None = field(default_factory=lambda: TensorQuant(per_channel=True))
    act: TensorQuant | None = field(default_factory=lambda: TensorQuant(symmetric=False))
    smooth: bool = False  # seed 003: weight / s_c and activation * s_c per input channel, s_c = max|w_c|
    # the layer's output (before its activation function): integer runtimes requantize it (QLinearConv's output)
    output: TensorQuant | None = None
    # post-training methods (autoselect.quant.methods): how the weight is rounded onto its grid, and whether the
    # mean shift of the output that quantization causes is corrected in the bias
    rounding: str = "nearest"
    bias_correction: bool = False
    # cross-layer equalization with the layer feeding this one (a transform of both layers' float weights)
    equalize: bool = False

    def __post_init__(self) -> None:
        for t in (self.act, self.output):
            if t is not None and t.per_channel:
                raise AutoselectError("per-channel activation quantization is not supported by any target")
        if not isinstance(self.rounding, str) or not self.rounding:
            raise AutoselectError(f"rounding must be a method name, got {self.rounding!r}")

    def describe(self) -> str:
        w = self.weight.describe() if self.weight else "fp32"
        a = self.act.describe() if self.act else "fp32"
        out = f" O[{self.output.describe()}]" if self.output else ""
        extra = "".join([" smoothed" if self.smooth else "", " equalized" if self.equalize else "",
                         f" {self.rounding}" if self.rounding != "nearest" and self.weight else "",
                         " bias-corrected" if self.bias_correction else ""])
        return f"W[{w}] A[{a}]{out}{extra}"


def w8a8(*, per_channel: bool = True, weight_bits: int = 8, act_bits: int = 8, weight_observer: str = "minmax",
         act_observer: str = "minmax", act_symmetric: bool = False) -> QuantSpec:
    """The usual deployment scheme: symmetric weights, asymmetric (unsigned) activations."""
    return QuantSpec(
        weight=TensorQuant(bits=weight_bits, symmetric=True, per_channel=per_channel, observer=weight_observer),
        act=TensorQuant(bits=act_bits, symmetric=act_symmetric, observer=act_observer),
    )


def resolve_specs(
    paths: Iterable[str],
    mapping: QuantSpec | Mapping[str, QuantSpec | None],
    roles: Mapping[str, str] | None = None,
) -> dict[str, QuantSpec | None]:
    """Give every layer path its spec from ``mapping`` (precedence: see :mod:`autoselect.plan`)."""
    if isinstance(mapping, QuantSpec):
        return {p: mapping for p in paths}
    return resolve_keys(paths, mapping, roles)
