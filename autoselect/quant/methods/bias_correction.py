"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2; Brevitas'
``bias_correction_mode``; NNCF's fast bias correction).

Quantizing a layer's weight and input shifts the mean of its output per channel: ``E[W_q Q(x)] != E[W x]``.
In one pass of the quantized model over the calibration images, each selected layer compares, on the input ``x``
that reaches it, its quantized output with the output of its original float weights (taken before any other
method ran, so that a rounding method's change is corrected too), and the mean difference per output channel
becomes ``bias_delta``: the quantized layer adds it, the export folds it into the bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.data.batches import split_batch
from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import MethodContext, register_method

__all__: list[str] = []


def _channel_sum(y: torch.Tensor) -> torch.Tensor:
    return y.transpose(0, 1).reshape(y.shape[1], -1).sum(dim=1) if y.dim() > 2 else y.sum(dim=0)


class _Collect:
    """Forward pre-hook: on the layer's input, the summed float and quantized outputs per channel."""

    def __init__(self, ql: QuantLayer, ref: QuantLayer) -> None:
        self.ql, self.ref = ql, ref
        self.diff: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        ql, ref = self.ql, self.ref
        y_fp = ref.layer(x)  # the original float layer (smoothing, if any, cancels in float)
        y_q = ql._run(ql.quantize_input(x), ql.quantized_weight())
        d = _channel_sum(y_fp.float() - y_q.float())
        self.diff = d if self.diff is None else self.diff + d
        self.count += y_q.numel() // y_q.shape[1]


@register_method("bias_correction", kind="correction", order=20, selects=lambda spec: spec.bias_correction)
@torch.no_grad()
def _run(ctx: MethodContext) -> None:
    hooks = {p: _Collect(ctx.layer(p), ctx.reference_layer(p)) for p in ctx.paths}
    handles = [ctx.layer(p).register_forward_pre_hook(hook) for p, hook in hooks.items()]
    try:
        for batch in tqdm(ctx.data, desc="bias correction", disable=not ctx.progress, leave=False):
            x, _ = split_batch(batch)
            ctx.model(x.to(ctx.device))
    finally:
        for handle in handles:
            handle.remove()
    for p, hook in hooks.items():
        if hook.diff is not None and hook.count:
            ql = ctx.layer(p)
            delta = (hook.diff / hook.count).to(ql.layer.weight)
            ql.bias_delta = delta if ql.bias_delta is None else ql.bias_delta + delta
