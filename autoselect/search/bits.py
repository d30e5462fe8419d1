"""Weight bit-widths under a memory limit: the prior's allocation, and the repair of a draw over the limit.

A group's error at ``b``-bit weights is modelled from the profile, measured at ``ref_bits`` (the space's lowest
bit-width): ``sensitivity * 4 ** (ref_bits - b)`` (uniform quantization noise power falls fourfold per bit). Its
memory is its quantized weights times ``b / 8`` bytes. Both greedy passes trade the modelled error against bytes,
like a knapsack solved by ratio:

- :meth:`BitBudget.allocate` starts every group at the lowest bit-width and raises, one step at a time, the group
  whose next step removes the most error per byte added, while the model still fits;
- :meth:`BitBudget.fit` takes a sampler's draw that does not fit and lowers, one step at a time, the group whose
  step down adds the least error per byte saved, until it fits. The study then never spends a trial (calibration,
  AdaRound, training) on a plan the constraint would reject.

Pure arithmetic on group names: the exact size of an assignment comes in as ``size``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BitBudget"]


@dataclass(frozen=True)
class BitBudget:
    """``weights``: quantized weights per group; ``sensitivity``: the profile's error per group at ``ref_bits``;
    ``size(bits_by_group)``: the deployed bytes of an assignment; ``limit``: the bytes allowed."""

    choices: tuple[int, ...]
    weights: Mapping[str, int]
    sensitivity: Mapping[str, float]
    ref_bits: int
    size: Callable[[Mapping[str, int]], int]
    limit: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(sorted(set(self.choices))))

    def error(self, group: str, bits: int) -> float:
        return max(0.0, float(self.sensitivity.get(group, 0.0))) * 4.0 ** (self.ref_bits - bits)

    def _step(self, bits: int, up: bool) -> int | None:
        i = self.choices.index(bits) + (1 if up else -1)
        return self.choices[i] if 0 <= i < len(self.choices) else None

    def _ratio(self, group: str, old: int, new: int) -> float:
        """Modelled error removed (or added) per byte added (or saved) by moving ``group`` from ``old`` to ``new``."""
        nbytes = max(1e-9, self.weights.get(group, 0) * abs(new - old) / 8)
        return abs(self.error(group, old) - self.error(group, new)) / nbytes

    def allocate(self, groups: Sequence[str]) -> dict[str, int]:
        """The lowest error the model finds within the limit, greedily from every group at the lowest bit-width.
        Where even that does not fit, the lowest bit-width everywhere (the constraint then rejects the trials)."""
        bits = {g: self.choices[0] for g in groups}
        while True:
            moves = sorted(((self._ratio(g, b, up), g, up) for g, b in bits.items()
                            if (up := self._step(b, True)) is not None), reverse=True)
            for _, g, up in moves:
                trial = {**bits, g: up}
                if self.size(trial) <= self.limit:
                    bits = trial
                    break
            else:
                return bits

    def fit(self, bits: Mapping[str, int]) -> dict[str, int]:
        """``bits`` lowered until the model fits (unchanged where it already does); the lowest bit-width
        everywhere at worst."""
        out = dict(bits)
        while self.size(out) > self.limit:
            moves = [(self._ratio(g, b, down), g, down) for g, b in out.items()
                     if (down := self._step(b, False)) is not None]
            if not moves:
                break
            _, g, down = min(moves)
            out[g] = down
        return out
