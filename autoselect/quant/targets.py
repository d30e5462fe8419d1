"""Deployment targets and the quantizers they run (seed 002, Table 2).

A target fixes what the hardware's integer kernels can do: weight granularity and symmetry, activation symmetry,
power-of-two scales, bit-widths. :meth:`Target.spec` builds the matching :class:`QuantSpec`.

x86 comes in two kinds, because onnxruntime's int8 kernels differ by CPU:

- ``x86-avx2`` (CPUs without VNNI) uses 7-bit weights: there the uint8 x int8 kernels add pairs of products in 16
  bits, which saturates when both sides use 8 bits (the reference checkpoint fell from 79.71% simulated to 50.96% on
  such a CPU); with weights in [-64, 63] a pair stays below 2**15 (2 x 255 x 64 = 32,640). This is onnxruntime's own
  ``reduce_range``. (FBGEMM reduces the activations instead; on onnxruntime a 7-bit activation grid cannot be kept:
  its uint8 ``QuantizeLinear`` saturates at 255, not 127, so the export strayed from the simulation.)
- ``x86-vnni`` (AVX-512 VNNI or AVX-VNNI) accumulates in 32 bits and runs full 8-bit weights and activations
  (measured on an AMD EPYC with both: the export agrees with the simulation on 99.85-100% of images).

``x86`` is resolved to one of them from the CPU at hand (:func:`detect_x86`), where the latency is measured, and
plans name the resolved target, so that a plan says which CPU it was made for. Both refuse symmetric (signed)
activations: the kernels shift signed values into the unsigned range (measured with 7-bit activations: the fused
integer model then strayed 10x further from the simulation than the unfused QDQ graph did; not re-measured since).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from autoselect.errors import AutoselectError
from autoselect.quant.spec import QuantSpec, TensorQuant

__all__ = ["Target", "TARGETS", "ALIASES", "get_target", "detect_x86", "resolve_target", "cpu_facts",
           "mlas_fma_kernels"]


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
        ``act_observer`` left out: ``mse`` where ``act_bits`` asks for fewer than 8 bits (a min-max range wastes the
        few levels on outliers); at 8 bits ``percentile`` on deployable targets, whose layer outputs (residual
        branches before an Add) are quantized too, and min-max on the simulation-only ``generic`` ones. Measured
        (experiments/act_ranges.py, issue 18): on x86 a digits RegNet-X-400MF went from 84.3 +- 4.0 (min-max) to
        89.9 +- 3.0, and no model measured lost more than one image of 360 by it.

        Deployable targets also quantize each layer's output, as their integer kernels do; the simulation-only
        ``generic`` targets quantize layer inputs and weights only (the profiler's default, and its cost floor).
        """
        if act_bits is not None and act_bits != self.act_bits and not self.name.startswith("generic"):
            raise AutoselectError(f"{act_bits}-bit activations cannot run on target {self.name} (it runs "
                                  f"{self.act_bits}-bit; lower bit-widths are simulated on the generic targets only)")
        low = act_bits is not None and act_bits < 8
        generic = self.name.startswith("generic")
        act = TensorQuant(bits=act_bits or self.act_bits, symmetric=self.act_symmetric,
                          observer=act_observer or ("mse" if low else "minmax" if generic else "percentile"),
                          pot=self.pot)
        return QuantSpec(
            weight=TensorQuant(
                bits=weight_bits or self.weight_bits[-1],
                symmetric=self.weight_symmetric,
                per_channel=self.weight_per_channel if per_channel is None else per_channel,
                observer=weight_observer,
                pot=self.pot,
            ),
            act=act,
            output=None if generic else act,
        )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(name="generic", description="simulation default: W sym per-channel, A asym per-tensor, 8 bits",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False, weight_bits=(4, 5, 6, 7, 8)),
        Target(name="generic-pt", description="simulation: W sym per-tensor, A asym per-tensor, 4-8-bit weights",
               weight_per_channel=False, weight_symmetric=True, act_symmetric=False, weight_bits=(4, 5, 6, 7, 8)),
        Target(name="x86-avx2", description="x86 without VNNI: W sym per-channel 7 bits, A asym per-tensor 8 bits",
               weight_per_channel=True, weight_symmetric=True, act_symmetric=False, weight_bits=(7,),
               runs_here=True, signed_act_ok=False),
        Target(name="x86-vnni", description="x86 with AVX-512 VNNI / AVX-VNNI: W sym per-channel, A asym "
               "per-tensor, 8 bits", weight_per_channel=True, weight_symmetric=True, act_symmetric=False,
               runs_here=True, signed_act_ok=False),
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


#: names that stand for a target chosen from the machine at hand
ALIASES = ("x86",)
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@functools.cache
def _cpuinfo() -> dict[str, str] | None:
    """The first value of each field of Linux's /proc/cpuinfo (read once per process); None elsewhere."""
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.exists():
        return None
    fields: dict[str, str] = {}
    for line in info.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux /proc/cpuinfo; macOS sysctl); None where they cannot be read."""
    import platform
    import subprocess

    info = _cpuinfo()
    if info is not None:
        return set(info["flags"].split()) if "flags" in info else None
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                 capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return {f.lower().replace("avx512vnni", "avx512_vnni").replace("avxvnni", "avx_vnni") for f in out.split()}
    return None


def detect_x86() -> tuple[str, str]:
    """Which x86 target this CPU runs, and why: ``x86-vnni`` where the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot
    products accumulate in 32 bits), else ``x86-avx2`` (7-bit weights, safe on any x86 CPU, and the answer when the
    flags cannot be read)."""
    flags = _cpu_flags()
    if flags is None:
        return "x86-avx2", "CPU flags unreadable here: 7-bit weights, safe on any x86 CPU"
    found = [f for f in _VNNI_FLAGS if f in flags]
    if found:
        return "x86-vnni", f"this CPU has {' and '.join(found)}: 8-bit weights and activations"
    return "x86-avx2", "this CPU has no VNNI: 7-bit weights against 16-bit saturation"


def cpu_facts() -> dict[str, object]:
    """What an export's latency and agreement were measured on: the CPU's name, the int8-relevant flags it has, and
    the x86 target it runs."""
    import platform

    info = _cpuinfo() or {}
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = _cpu_flags()
    relevant = ("avx2", "avx512f", "avx512bw", *_VNNI_FLAGS, "amx_int8")
    return {"cpu": name, "int8_flags": None if flags is None else [f for f in relevant if f in flags],
            "x86_target": detect_x86()[0]}


def resolve_target(name: str) -> tuple[str, str | None]:
    """``(concrete name, why)``: an alias (``x86``) becomes the target of the CPU at hand, with the reason; any
    other name is returned as it is, with None."""
    if name == "x86":
        return detect_x86()
    return name, None


def get_target(name: str) -> Target:
    """The target called ``name``; ``x86`` gives the x86 target of the CPU at hand (see :func:`detect_x86`)."""
    name, _ = resolve_target(name)
    try:
        return TARGETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, [*TARGETS, *ALIASES], n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise AutoselectError(f"unknown target {name!r}{hint}; known: {', '.join([*ALIASES, *TARGETS])}") from None


def mlas_fma_kernels() -> bool:
    """Whether onnxruntime's MLAS runs its AVX2/FMA3 kernels on this CPU (one rounding per multiply-add), which
    :mod:`autoselect.quant.mlas` reproduces; without them, its SSE2 kernels round each product and sum."""
    flags = _cpu_flags() or set()
    return "avx2" in flags and "fma" in flags
