"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2; AIMET's empirical
``correct_bias``; Brevitas' ``bias_correction_mode``; NNCF's fast bias correction).

Quantizing a layer's weight and input shifts the mean of its output per channel: ``E[W_q Q(x_q)] != E[W x]``. The
shift has two parts: the layer's own error, and the shifts the layers before it pass on through its input (their
errors, and their biases' rounding onto the int32 grid that the simulation and the export keep them on). Two
corrections, each adding the mean difference per output channel to ``bias_delta`` (the quantized layer adds it, the
export folds it into the bias):

- ``local``: in one pass, each layer compares its quantized output with its original float weights' output on the
  same input, the one that reaches it (NNCF's fast bias correction): its own error only;
- ``sequential``: layer by layer in forward order, each layer's quantized output mean on the calibration images,
  with every earlier layer already corrected, is matched to the float model's output mean of the same layer (AIMET's
  empirical correction): the shifts passed on from earlier layers are corrected too. It costs one pass of the float
  model and one run of each layer on its captured input (:class:`~._capture.BlockInputs`).

The float reference is the copy taken before any method ran, so that a rounding method's change is corrected too.
Layers are compared before their output grid (a deployable target's requantization after a fused activation).

A sequential correction of a frozen layer also compensates what the layers before it pass on; when some of those
are retrained (selective QAT), that part goes stale. The float means it matched are kept on the model
(``autoselect_bias_targets``, path -> mean per channel), and :func:`recorrect_frozen` matches them again after
training, with the retrained layers in place (``train_qat`` does it after its last step when given the calibration
images). Measured on nine seeds of 4-bit plans it moved top-1 by +0.06 on average (-0.12 to +0.48, the largest
recovering a QAT run that had lost 0.37): a tie overall, kept because it restores what calibration established for
seconds of work (experiments/RESULTS.md, issue 14, sessions 18-19).
:data:`MODE` ``"auto"`` (the default) corrects layers with weights below :data:`SEQUENTIAL_BELOW_BITS` bits
sequentially and the others locally: on the reference checkpoint, sequential was better at 4-bit weights and a
little worse at 8 bits (experiments/RESULTS.md, issue 14, "Sequential bias correction").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from autoselect.data.batches import split_batch
from autoselect.models.graph import LayerGraph
from autoselect.quant.layer import QuantLayer
from autoselect.quant.methods import MethodContext, block_of, register_method
from autoselect.quant.methods._capture import BlockInputs

__all__ = ["MODES", "MODE", "SEQUENTIAL_BELOW_BITS", "TARGETS", "mode_for", "recorrect_frozen", "recorrectable"]

MODES = ("auto", "sequential", "local")
# what the registered method does: "auto" corrects layers with weights below SEQUENTIAL_BELOW_BITS bits
# sequentially and the others locally; experiments/bias_correction_modes.py sets it to compare the modes
MODE = "auto"
SEQUENTIAL_BELOW_BITS = 5
_BATCH = 128
# the model attribute holding each sequentially corrected layer's float output mean per channel (CPU, float64)
TARGETS = "autoselect_bias_targets"


def mode_for(ql: QuantLayer) -> str:
    """The correction a layer gets under :data:`MODE`."""
    if MODE != "auto":
        return MODE
    spec = ql.spec
    low = spec is not None and spec.weight is not None and spec.weight.bits < SEQUENTIAL_BELOW_BITS
    return "sequential" if low else "local"


def _channel_sum(y: torch.Tensor) -> torch.Tensor:
    return y.transpose(0, 1).reshape(y.shape[1], -1).sum(dim=1) if y.dim() > 2 else y.sum(dim=0)


def _count(y: torch.Tensor) -> int:
    return y.numel() // y.shape[1]


def _quantized_output(ql: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's quantized output before its output grid (what its float twin's output is compared with)."""
    return ql._run(ql.quantize_input(x), ql.quantized_weight())


def _add(ql: QuantLayer, delta: torch.Tensor) -> None:
    delta = delta.to(ql.layer.weight)
    ql.bias_delta = delta if ql.bias_delta is None else ql.bias_delta + delta


class _Collect:
    """Forward pre-hook (local mode): on the layer's input, the summed float and quantized outputs per channel."""

    def __init__(self, ql: QuantLayer, ref: QuantLayer) -> None:
        self.ql, self.ref = ql, ref
        self.diff: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        y_fp = self.ref.layer(x)  # the original float layer (smoothing, if any, cancels in float)
        y_q = _quantized_output(self.ql, x)
        d = _channel_sum(y_fp.float() - y_q.float())
        self.diff = d if self.diff is None else self.diff + d
        self.count += _count(y_q)


def _local(ctx: MethodContext, paths: list[str]) -> None:
    hooks = {p: _Collect(ctx.layer(p), ctx.reference_layer(p)) for p in paths}
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
            _add(ctx.layer(p), hook.diff / hook.count)


def _float_means(reference: nn.Module, paths: list[str], data: Iterable,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Each layer's mean output per channel in the float model, in one pass."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(paths, 0)

    def hook(path: str):
        def grab(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            s = _channel_sum(out.double())
            sums[path] = s if path not in sums else sums[path] + s
            counts[path] += _count(out)
        return grab

    handles = [reference.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
    try:
        for batch in data:
            x, _ = split_batch(batch)
            reference(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {p: sums[p] / counts[p] for p in paths if counts[p]}


def _match(model: nn.Module, target: dict[str, torch.Tensor], paths: list[str], data: Iterable,
           device: torch.device, graph: LayerGraph | None, progress: bool) -> None:
    """Layer by layer in forward order: add to each layer's ``bias_delta`` what its quantized output mean per
    channel (on ``data``, with the layers before it as they are now) lacks of ``target``."""
    inputs = BlockInputs(model, data, device)
    for path in tqdm(paths, desc="bias correction", disable=not progress, leave=False):
        if path not in target:
            continue
        ql = model.get_submodule(path)
        assert isinstance(ql, QuantLayer)
        x = inputs(block_of(graph, path), path)
        total: torch.Tensor | None = None
        count = 0
        for xb in x.split(_BATCH):
            y = _quantized_output(ql, xb.to(device))
            s = _channel_sum(y.double())
            total = s if total is None else total + s
            count += _count(y)
        if total is not None:
            _add(ql, (target[path].to(total) - total / count).float())


def _sequential(ctx: MethodContext, paths: list[str]) -> None:
    target = _float_means(ctx.reference, paths, ctx.data, ctx.device)
    kept = dict(getattr(ctx.model, TARGETS, None) or {})
    kept.update({p: t.detach().cpu() for p, t in target.items()})
    setattr(ctx.model, TARGETS, kept)
    _match(ctx.model, target, paths, ctx.data, ctx.device, ctx.graph, ctx.progress)


def recorrectable(model: nn.Module) -> list[str]:
    """The layers :func:`recorrect_frozen` would re-match: frozen, corrected sequentially, after a retrained one."""
    from autoselect.quant.apply import trainable_layers
    from autoselect.quant.simulate import quant_layers

    targets = getattr(model, TARGETS, None) or {}
    layers = list(quant_layers(model))  # forward (module) order
    trained = set(trainable_layers(model))
    first = next((i for i, p in enumerate(layers) if p in trained), None)
    if first is None:
        return []
    return [p for p in layers[first + 1:] if p in targets and p not in trained]


@torch.no_grad()
def recorrect_frozen(model: nn.Module, data: Iterable, *, device: torch.device | str | None = None,
                     progress: bool = False) -> list[str]:
    """After training some layers of a quantized model, match the sequential bias correction of the frozen layers
    that follow a retrained one to the float means they were corrected to at calibration (kept on the model); the
    layers are re-measured in forward order on ``data`` (the calibration images: others work, within their
    sampling noise; they are read several times, so a one-shot iterator is first collected into a list), with the
    retrained layers as they are now, on ``device`` (default: the model's). Returns the re-corrected paths (none
    where no layer is retrained or none was corrected sequentially). The model is left in quant mode and its train/eval
    state; call it once training is over (or at any point of a user's own loop: the model simulates the same)."""
    from autoselect.quant.simulate import set_mode

    targets = getattr(model, TARGETS, None) or {}
    paths = recorrectable(model)
    if not paths:
        return []
    if device is None:
        device = next(model.parameters()).device
    if iter(data) is data:  # a one-shot iterator: BlockInputs reads the batches several times
        data = list(data)
    was_training = model.training
    model.eval()
    set_mode(model, "quant")
    try:
        _match(model, targets, paths, data, torch.device(device), getattr(model, "autoselect_graph", None),
               progress)
    finally:
        model.train(was_training)
    return paths


@register_method("bias_correction", kind="correction", order=20, selects=lambda spec: spec.bias_correction)
@torch.no_grad()
def _run(ctx: MethodContext) -> None:
    if MODE not in MODES:
        raise ValueError(f"bias correction mode must be one of {MODES}, got {MODE!r}")
    modes = {p: mode_for(ctx.layer(p)) for p in ctx.paths}
    local = [p for p in ctx.paths if modes[p] == "local"]
    sequential = [p for p in ctx.paths if modes[p] == "sequential"]
    if local:  # each layer's own error, whatever reaches it: before the sequential pass measures what is left
        _local(ctx, local)
    if sequential:
        _sequential(ctx, sequential)
