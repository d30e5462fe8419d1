"""Deployment targets and the quantizers they run (seed 002, Table 2).

A target fixes what the hardware's integer kernels can do: weight granularity and symmetry, activation symmetry,
power-of-two scales, bit-widths. :meth:`Target.spec` builds the matching :class:`QuantSpec`.

``x86`` (FBGEMM) uses 7-bit activations (``reduce_range``): on CPUs without VNNI, the int8 kernels add pairs of
uint8 x int8 products in 16 bits, which saturates with full 8-bit activations (the reference checkpoint fell from
79.71% simulated to 50.96% on real kernels; 7-bit activations gave 79.73%). Simulating the 7-bit range keeps the
simulation honest about what runs. For the same reason ``x86`` refuses symmetric (signed) activations: the kernels
shift signed values into the unsigned range, which undoes the 7-bit guard (measured: the fused integer model then
strays 10x further from the simulation than the unfused QDQ graph does).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from autoselect.errors import AutoselectError
from autoselect.quant.spec import QuantSpec, TensorQuant

__all__ = ["Target", "TARGETS", "get_target"]


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    description: str
    weight_per_channel: bool
    weight_symmetric: bool
    act_symmetric: bool
    pot: bool = False
    act_bits: int = 8
    weight_bits: tuple[int, ...] = (8,)
    runs_here: bool = False  # integer kernels for it exist on this kind of CPU (via onnxruntime)
    signed_act_ok: bool = True  # whether a plan may ask for symmetric (signed) activations

    def spec(self, *, weight_bits: int | None = None, weight_observer: str = "minmax",
             act_observer: str | None = None, per_channel: bool | None = None,
             act_bits: int | None = None) -> QuantSpec:
        """The target's quantizer; ``weight_bits``/``per_channel``/``act_bits`` override it for simulation studies
        (activations at other than the target's bits: the simulation-only ``generic`` targets only).
        ``act_observer`` left out: min-max, or ``mse`` where ``act_bits`` asks for fewer than 8 bits (a min-max range
        wastes the few levels on outliers).

        Deployable targets also quantize each layer's output, as their integer kernels do; the simulation-only
        ``generic`` targets quantize layer inputs and weights only (the profiler's default, and its cost floor).
        """
        if act_bits is not None and act_bits != self.act_bits and not self.name.startswith("generic"):
            raise AutoselectError(f"{act_bits}-bit activations cannot run on target {self.name} (it runs "
                                  f"{self.act_bits}-bit; lower bit-widths are simulated on the generic targets only)")
        low = act_bits is not None and act_bits < 8
        act = TensorQuant(bits=act_bits or self.act_bits, symmetric=self.act_symmetric,
                          observer=act_observer or ("mse" if low else "minmax"), pot=self.pot)
        return QuantSpec(
            weight=TensorQuant(
                bits=weight_bits or self.weight_bits[-1],
                symmetric=self.weight_symmetric,
                per_channel=self.weight_per_channel if per_channel is None else per_channel,
                observer=weight_observer,
                pot=self.pot,
            ),
            act=act,
            output=None if self.name.startswith("generic") else act,
        )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(name="generic", description="simulation default: W sym per-channel, A asym per-tensor, 8 bits",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False, weight_bits=(4, 5, 6, 7, 8)),
        Target(name="generic-pt", description="simulation: W sym per-tensor, A asym per-tensor, 4-8-bit weights",
               weight_per_channel=False, weight_symmetric=True, act_symmetric=False, weight_bits=(4, 5, 6, 7, 8)),
        Target(name="x86", description="FBGEMM/x86: W sym per-channel, A asym per-tensor, 7-bit activations",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False, act_bits=7, runs_here=True,
               signed_act_ok=False),
        Target(name="qnnpack", description="QNNPACK/XNNPACK (ARM): W sym per-channel, A asym per-tensor",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False, runs_here=True),
        Target(name="tensorrt", description="TensorRT: W sym per-channel, A sym per-tensor",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=True),
        Target(name="acl", description="ACL: W sym per-channel, A asym per-tensor",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False),
        Target(name="snpe", description="SNPE (Hexagon DSP): W asym per-tensor, A asym per-tensor",
               weight_per_channel=False, weight_symmetric=False, act_symmetric=False),
        Target(name="tvm", description="TVM (ARM CPU): W sym per-tensor, A sym per-tensor, power-of-two scales",
               weight_per_channel=False, weight_symmetric=True, act_symmetric=True, pot=True),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, TARGETS, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise AutoselectError(f"unknown target {name!r}{hint}; known: {', '.join(TARGETS)}") from None
