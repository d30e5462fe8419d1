"""Block reconstruction: BRECQ's rounding (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization
by Block Reconstruction") with QDrop's random dropping of activation quantization (Wei et al. 2022, "QDrop").

AdaRound (:mod:`.adaround`) learns each layer's rounding to reconstruct that layer's own output. Here every selected
layer of a block (an inverted residual, the stem, the head; ``LayerInfo.block``) learns its rounding *jointly*, to
reconstruct the block's float output from the block's input in the quantized model, so that the errors of a block's
layers may cancel rather than each being minimized alone. Blocks are visited in forward order; a block's input comes
from the model with the earlier blocks already rounded. Per block:

    min_{V, s_a}  mean_positions || block_q(x_q; W_soft(V), s_a) - block_fp(x_fp) ||^2  +  lambda * sum(1 - |2h(V)-1|^beta)

with AdaRound's soft rounding ``h(V)``, regularizer and annealing (its module's constants), batches of :data:`BATCH`
calibration images, :data:`ITERATIONS` steps. Two additions from QDrop:

- while the block is reconstructed, each element of a selected layer's quantized input is replaced by its float
  value with probability :data:`DROP` (and the block's input mixes the quantized model's input with the float
  model's alike), so that the rounding fits a flatter neighbourhood of the activation noise rather than one draw;
- below 8-bit activations, the input activation steps of the selected layers are learned too (LSQ, as QAT does,
  Adam at :data:`ACT_LR` on log-steps); the trained grid is written back as the layer's calibrated activation range.

The result is left in the generic state: each weight fixed on its chosen integers (``QuantLayer.fix_weight``), the
activation ranges in the layer's buffers. A block whose hard-rounded reconstruction error (no dropping) is not below
the one of rounding to nearest with the calibrated ranges is left at nearest with its ranges (never worse on the
calibration images than the cheap treatment).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.quant.layer import QuantLayer
from autoselect.quant.lsq import GridQuantizer, LearnedQuantizer
from autoselect.quant.methods import MethodContext, register_method
from autoselect.quant.methods._capture import BlockInputs
from autoselect.quant.methods.adaround import LR, REG, _h, regularizer, soft_start
from autoselect.quant.observers import fake_quant

__all__ = ["ACT_LR", "BATCH", "DROP", "ITERATIONS", "reconstruct_block"]

ITERATIONS = 1000  # steps per block
BATCH = 32  # calibration images per step (BRECQ's and QDrop's batch)
DROP = 0.5  # QDrop's probability of using an activation's float value instead of its quantized one
ACT_LR = 1e-3  # Adam on log activation steps (below 8 bits)
_EVAL_CHUNK = 128


class _SoftRounding(GridQuantizer):
    """A layer's weight as ``s * (clamp(floor(w / s) + h(V), lo, hi))``: AdaRound's continuous relaxation, in the
    place QAT puts a learned quantizer (``QuantLayer.weight_learner``), so the block's own forward uses it."""

    def __init__(self, ql: QuantLayer) -> None:
        super().__init__()
        assert ql.spec is not None and ql.spec.weight is not None
        tq = ql.spec.weight
        scale, zp = ql.weight_qparams()
        w = ql.effective_weight().detach()
        shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
        self.scale, self.zp = scale, zp
        self.s, z = scale.view(shape).to(w), zp.view(shape).to(w)
        w_div = w / self.s
        self.z = z
        self.lo, self.hi = tq.qmin - z, tq.qmax - z
        self.floor, v = soft_start(w_div)
        self.v = nn.Parameter(v)
        self.nearest = torch.clamp(torch.round(w_div), self.lo, self.hi)
        self.hard: torch.Tensor | None = None  # set: forward gives these integers (evaluation)

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # ``w``: the layer's weight, unused (its floor is kept)
        q = self.hard if self.hard is not None else torch.clamp(self.floor + _h(self.v), self.lo, self.hi)
        return q * self.s

    def rounded(self) -> torch.Tensor:
        return torch.clamp(self.floor + (_h(self.v) >= 0.5).to(self.floor), self.lo, self.hi)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zp


class _DropQuant(GridQuantizer):
    """A layer's input quantizer during reconstruction: the calibrated grid, or a learned one (``learn``), with each
    element kept in float with probability ``drop`` while training (QDrop)."""

    def __init__(self, ql: QuantLayer, *, learn: bool) -> None:
        super().__init__()
        assert ql.spec is not None and ql.spec.act is not None
        self.tq = ql.spec.act
        self.scale, self.zp = ql.act_scale, ql.act_zero_point
        self.learner = LearnedQuantizer(self.tq, ql.act_scale, ql.act_zero_point, elements=None) if learn else None
        self.drop = 0.0
        self.gen: torch.Generator | None = None  # the reconstruction's own (CPU) generator: no global RNG state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.learner(x) if self.learner is not None else fake_quant(x, self.scale, self.zp, self.tq)
        if self.drop > 0.0:
            keep_float = torch.rand(x.shape, generator=self.gen).to(x.device) < self.drop
            return torch.where(keep_float, x, q)
        return q

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learner.qparams() if self.learner is not None else (self.scale, self.zp)


@contextmanager
def _relaxed(layers: list[QuantLayer], learn_act: bool) -> Iterator[tuple[list[_SoftRounding], list[_DropQuant]]]:
    """Soft rounding and dropping quantizers put in the layers for the time of the block's reconstruction."""
    soft, drops = [], []
    for ql in layers:
        if ql.weight_learner is not None or ql.act_learner is not None:
            raise RuntimeError(f"block reconstruction on a layer with learned quantizers ({ql.layer})")
        s = _SoftRounding(ql)
        ql.weight_learner = s
        soft.append(s)
        if ql.spec is not None and ql.spec.act is not None:
            d = _DropQuant(ql, learn=learn_act and not ql.spec.act.pot)
            ql.act_learner = d
            drops.append(d)
    try:
        yield soft, drops
    finally:
        for ql in layers:
            ql.weight_learner = None
            ql.act_learner = None


def _error(block: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(float((block(xb) - tb).pow(2).sum(1).sum())
                   for xb, tb in zip(x.split(_EVAL_CHUNK), target.split(_EVAL_CHUNK)))


def reconstruct_block(block: nn.Module, layers: list[QuantLayer], x_q: torch.Tensor, x_fp: torch.Tensor,
                      target: torch.Tensor, *, iterations: int = ITERATIONS, batch: int = BATCH, drop: float = DROP,
                      seed: int = 0) -> float:
    """Learn the rounding of ``layers`` (quantized layers inside ``block``, in quant mode) so that ``block`` maps its
    quantized-model input ``x_q`` to ``target`` (the float block's output for the float model's input ``x_fp``),
    then fix it. Returns the final error relative to rounding to nearest (below 1: better)."""
    device = next(iter(layers)).layer.weight.device
    x_q, x_fp, target = x_q.to(device), x_fp.to(device), target.to(device)
    learn_act = any(ql.spec is not None and ql.spec.act is not None and ql.spec.act.bits < 8 for ql in layers)
    gen = torch.Generator().manual_seed(seed)
    n = x_q.shape[0]
    batch = min(batch, n)
    with _relaxed(layers, learn_act) as (soft, drops):
        for s in soft:
            s.hard = s.nearest
        nearest_err = _error(block, x_q, target)
        for s in soft:
            s.hard = None
        opt = torch.optim.Adam([s.v for s in soft], lr=LR)
        act_params = [p for d in drops if d.learner is not None for p in d.learner.parameters()]
        opt_act = torch.optim.Adam(act_params, lr=ACT_LR) if act_params else None
        for d in drops:
            d.drop, d.gen = drop, gen
        with torch.enable_grad():
            for it in range(iterations):
                idx = torch.randint(0, n, (batch,), generator=gen).to(device)
                xb = x_q[idx]
                if drop > 0.0:
                    xb = torch.where(torch.rand(xb.shape, generator=gen).to(device) < drop, x_fp[idx], xb)
                loss = (block(xb) - target[idx]).pow(2).sum(1).mean()
                regs = [r for s in soft if (r := regularizer(s.v, it, iterations)) is not None]
                if regs:  # past the warm-up
                    loss = loss + REG * sum(regs)
                opt.zero_grad(set_to_none=True)
                if opt_act is not None:
                    opt_act.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if opt_act is not None:
                    opt_act.step()
        for d in drops:
            d.drop = 0.0
        for s in soft:
            s.hard = s.rounded()
        final_err = _error(block, x_q, target)
        act_q = [d.qparams() for d in drops]
    keep = final_err < nearest_err
    with torch.no_grad():
        for s, ql in zip(soft, layers):
            w_int = s.rounded() if keep else s.nearest
            ql.fix_weight(w_int + s.z, s.scale, s.zp)
        if keep:
            acted = [ql for ql in layers if ql.spec is not None and ql.spec.act is not None]
            for ql, (scale, zp) in zip(acted, act_q):
                ql.act_scale.copy_(scale.to(ql.act_scale))
                ql.act_zero_point.copy_(zp.to(ql.act_zero_point))
    return min(final_err, nearest_err) / max(nearest_err, 1e-30)


def _blocks(ctx: MethodContext) -> list[tuple[str, list[str]]]:
    """The selected layers grouped by block, blocks in forward order (no layer graph: each layer its own block)."""
    groups: dict[str, list[str]] = {}
    for path in ctx.paths:
        groups.setdefault(ctx.block_of(path) or path, []).append(path)
    return list(groups.items())


@register_method("brecq", kind="rounding", order=10, selects=lambda spec: spec.rounding == "brecq"
                 and spec.weight is not None)
def _run(ctx: MethodContext) -> None:
    inputs_q, inputs_fp = BlockInputs(ctx.model, ctx.data, ctx.device), BlockInputs(ctx.reference, ctx.data, ctx.device)
    for i, (name, paths) in enumerate(tqdm(_blocks(ctx), desc="brecq", disable=not ctx.progress, leave=False)):
        block, ref_block = ctx.model.get_submodule(name), ctx.reference.get_submodule(name)
        x_q, x_fp = inputs_q.block_input(name), inputs_fp.block_input(name)
        with torch.no_grad():
            target = torch.cat([ref_block(xb.to(ctx.device)).cpu() for xb in x_fp.split(_EVAL_CHUNK)])
        reconstruct_block(block, [ctx.layer(p) for p in paths], x_q, x_fp, target, iterations=ctx.steps(ITERATIONS),
                          seed=i)
