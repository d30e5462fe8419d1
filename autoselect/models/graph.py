"""The layer graph: every quantizable layer of a model, by module path, with its role, block, size and cost.

Everything is derived from the module structure and one traced forward pass, not from a table per model:

- **quantizable layers** are ``nn.Conv2d`` and ``nn.Linear`` modules, in the order the forward pass calls them;
- a layer's **block** is its outermost ancestor below the root that is not a plain container (``Sequential``,
  ``ModuleList``, ``ModuleDict``) or a stage (a subclass of one that chains at least two units, as RegNet's
  ``AnyStage``): an ``InvertedResidual``, ``BasicBlock``, ``MBConv`` or ``ResBottleneckBlock``; a layer with no such
  ancestor is its own block (``fc``, ``classifier.1``);
- **roles**: ``depthwise`` (groups == in_channels > 1); inside a block with a depthwise layer, a 1x1 conv before it
  is ``expand``, a 1x1 conv fed by a global pool is ``se`` (squeeze-excitation), and the last other 1x1 conv after
  it is ``project``; the first conv of the model is ``stem``; a ``Linear`` with no conv after it is
  ``classifier``; everything else is ``conv`` (or ``linear``);
- **BatchNorm pairs**: a ``BatchNorm2d`` whose input is exactly a conv's output is folded into that conv;
- **activation**: the leaf module applied to a layer's (BN'd) output, e.g. ``ReLU6``, if any, and its path; or a
  functional ``F.relu``/``F.relu6`` applied to it (no path);
- **fed_by**: the layer whose output, through its BatchNorm and activation only, is this layer's input and is read
  by nothing else (no shortcut, no second branch): a per-input-channel scale of this layer can be folded into it;
- **feeds_layers_only**: whether the layer's final output (after its BatchNorm and activation) is read by
  quantizable layers and nothing else (not by a pool, a concatenation, an Add): only then can its consumers' input
  grids stand in for its own output grid;
- **MACs** are counted from the traced shapes for the given input size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn

__all__ = ["LayerInfo", "LayerGraph", "build_layer_graph", "QUANTIZABLE", "ROLES"]

QUANTIZABLE = (nn.Conv2d, nn.Linear)
ROLES = ("stem", "expand", "depthwise", "se", "project", "conv", "classifier", "linear")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class LayerInfo:
    path: str
    kind: str  # "conv" | "linear"
    role: str
    block: str
    order: int
    params: int
    macs: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    bn: str | None = None  # path of the BatchNorm2d folded into this layer
    reads_block_input: bool = False  # its input is its block's input tensor (shared with a shortcut, if any)
    activation: str | None = None  # class name of the activation module applied right after it (BN folded)
    activation_path: str | None = None  # that module's path (None for a functional ReLU/ReLU6)
    fed_by: str | None = None  # the layer whose (BN'd, activated) output only this layer reads
    feeds_layers_only: bool = True  # its (BN'd, activated) output is read by quantizable layers only


@dataclass
class LayerGraph:
    layers: list[LayerInfo]
    input_shape: tuple[int, ...]
    total_params: int
    blocks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_path = {layer.path: layer for layer in self.layers}
        if not self.blocks:
            self.blocks = list(dict.fromkeys(layer.block for layer in self.layers))

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, path: object) -> bool:
        return path in self._by_path

    def __getitem__(self, path: str) -> LayerInfo:
        return self._by_path[path]

    @property
    def paths(self) -> list[str]:
        return [layer.path for layer in self.layers]

    def block_layers(self, block: str) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.block == block]

    def bn_pairs(self) -> dict[str, str]:
        """conv path → BatchNorm path, for every conv followed directly by a BatchNorm2d."""
        return {layer.path: layer.bn for layer in self.layers if layer.bn}

    def to_frame(self) -> pd.DataFrame:
        rows = [
            {
                "path": x.path,
                "role": x.role,
                "block": x.block,
                "order": x.order,
                "kind": x.kind,
                "params": x.params,
                "macs": x.macs,
                "in_channels": x.in_channels,
                "out_channels": x.out_channels,
                "kernel": f"{x.kernel[0]}x{x.kernel[1]}",
                "groups": x.groups,
                "bn": x.bn or "",
            }
            for x in self.layers
        ]
        return pd.DataFrame(rows)


def _is_stage(module: nn.Module) -> bool:
    """A subclass of a plain container that chains units (RegNet's ``AnyStage``): at least two of its children are
    modules of their own (not bare layers) holding a quantizable layer. Those children are the blocks, one per
    residual unit. A ``Conv2dNormActivation`` (conv, norm, activation: one unit) is not a stage."""
    if not isinstance(module, _CONTAINERS):
        return False
    units = [c for c in module.children()
             if next(c.children(), None) is not None and any(isinstance(m, QUANTIZABLE) for m in c.modules())]
    return len(units) >= 2


def _block_of(model: nn.Module, path: str) -> str:
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        module = model.get_submodule(prefix)
        if type(module) not in _CONTAINERS and not _is_stage(module):
            return prefix
    return path


@dataclass
class _Call:
    path: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    pooled_input: bool
    input_id: int


# functional activations a layer's output may go through (e.g. torchvision's GoogLeNet: ``F.relu(bn(conv(x)))``)
_FUNCTIONAL_ACTIVATIONS = {"relu": "ReLU", "relu_": "ReLU", "relu6": "ReLU6"}


class _FunctionReads(torch.overrides.TorchFunctionMode):
    """Counts reads of each tensor by torch functions called outside leaf modules (``x + out``, ``torch.cat``)."""

    _META = {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "storage_offset", "data_ptr"}

    def __init__(self, reads: dict[tuple[int, int], int], depth: list[int], keep: list[torch.Tensor],
                 on_activation=None) -> None:
        super().__init__()
        self.reads, self.depth, self.keep = reads, depth, keep
        self.on_activation = on_activation  # (function name, input, output): a functional ReLU/ReLU6 ran

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth[0] == 0 and getattr(func, "__name__", "") not in self._META:
            for a in [*args, *(kwargs or {}).values()]:
                for t in (a if isinstance(a, (list, tuple)) else [a]):
                    if isinstance(t, torch.Tensor):
                        key = (id(t), t._version)
                        self.reads[key] = self.reads.get(key, 0) + 1
        first: tuple[int, int] | None = None  # the first argument, before the call (an in-place op bumps it)
        if self.depth[0] == 0 and args and isinstance(args[0], torch.Tensor):
            first = (id(args[0]), args[0]._version)
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.keep.append(out)
            name = getattr(func, "__name__", "")
            if first is not None and self.on_activation is not None and name in _FUNCTIONAL_ACTIVATIONS:
                self.on_activation(_FUNCTIONAL_ACTIVATIONS[name], first, out)
        return out


@dataclass
class _Trace:
    calls: list[_Call]
    bn_of: dict[str, str]
    module_input: dict[str, int]
    activation_of: dict[str, str]
    activation_path: dict[str, str]
    fed_by: dict[str, str]
    feeds_layers_only: dict[str, bool]


def _trace(model: nn.Module, example: torch.Tensor) -> _Trace:
    calls: list[_Call] = []
    seen: set[str] = set()
    conv_out: dict[int, str] = {}
    pooled: set[int] = set()
    bn_of: dict[str, str] = {}
    module_input: dict[str, int] = {}
    # output tensor id -> (the quantizable layer it stems from, through its BN; the tensor's version then):
    # an in-place op in between (``out += identity``) bumps the version, so it is not mistaken for an activation
    produced_by: dict[int, tuple[str, int]] = {}
    activation_of: dict[str, str] = {}
    activation_path: dict[str, str] = {}
    applying: dict[str, str] = {}  # activation module path -> the layer whose output it is being applied to
    activated: dict[int, tuple[str, int]] = {}  # output id of a layer's activation -> (layer, version)
    candidates: dict[str, tuple[str, tuple[int, int]]] = {}  # layer -> (layer feeding it, its input's key)
    reads: dict[tuple[int, int], int] = {}  # (tensor id, version) -> leaf modules and functions that read it
    layer_reads: dict[tuple[int, int], int] = {}  # ... of which quantizable layers
    final: dict[str, tuple[int, int]] = {}  # layer -> its output after BN and activation, (id, version)
    runs: dict[str, int] = {}  # leaf module path -> times it ran (a ReLU module may serve two places)
    depth = [0]  # leaf modules being run (functions inside them are not counted as reads)
    keep: list[torch.Tensor] = []  # keeps traced tensors alive so that their ids are not reused

    def read(x: torch.Tensor) -> None:
        key = (id(x), x._version)
        reads[key] = reads.get(key, 0) + 1

    def hook(path: str):
        def fn(mod: nn.Module, inputs: tuple, output: object) -> None:
            leaf = not list(mod.children())
            if leaf:
                depth[0] -= 1
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if not isinstance(output, torch.Tensor) or x is None:
                return
            keep.extend((x, output))
            module_input.setdefault(path, id(x))
            if leaf and (isinstance(mod, _POOLS) or id(x) in pooled):
                pooled.add(id(output))
            if path in applying:
                layer = applying.pop(path)
                activated[id(output)] = (layer, output._version)
                final[layer] = (id(output), output._version)
            if isinstance(mod, QUANTIZABLE) and path not in seen:
                seen.add(path)
                final[path] = (id(output), output._version)
                calls.append(_Call(path, mod, tuple(x.shape), tuple(output.shape), id(x) in pooled, id(x)))
                src = activated.get(id(x)) or produced_by.get(id(x))
                if src is not None and src[1] == x._version:
                    candidates[path] = (src[0], (id(x), x._version))
                produced_by[id(output)] = (path, output._version)
                if isinstance(mod, nn.Conv2d):
                    conv_out[id(output)] = path
            elif isinstance(mod, nn.BatchNorm2d) and id(x) in conv_out:
                conv = conv_out.pop(id(x))
                bn_of.setdefault(conv, path)
                produced_by[id(output)] = (conv, output._version)
                final[conv] = (id(output), output._version)

        return fn

    def leaf_pre_hook(path: str):
        def fn(mod: nn.Module, inputs: tuple) -> None:
            for x in inputs:
                if isinstance(x, torch.Tensor):
                    read(x)
                    if isinstance(mod, QUANTIZABLE):
                        key = (id(x), x._version)
                        layer_reads[key] = layer_reads.get(key, 0) + 1
            runs[path] = runs.get(path, 0) + 1
            depth[0] += 1

        return fn

    def pre_hook(path: str):
        def fn(mod: nn.Module, inputs: tuple) -> None:
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            src = produced_by.get(id(x)) if x is not None else None
            if src is not None and x is not None and x._version == src[1] and src[0] not in activation_of:
                activation_of[src[0]] = type(mod).__name__
                activation_path[src[0]] = path
                applying[path] = src[0]

        return fn

    def functional_activation(name: str, key: tuple[int, int], out: torch.Tensor) -> None:
        """A functional ReLU/ReLU6 applied to a layer's (BN'd) output is that layer's activation."""
        src = produced_by.get(key[0])
        if src is not None and src[1] == key[1] and src[0] not in activation_of:
            activation_of[src[0]] = name
            activated[id(out)] = (src[0], out._version)
            final[src[0]] = (id(out), out._version)

    leaves = [(p, m) for p, m in model.named_modules() if p and not list(m.children())]
    handles = [m.register_forward_hook(hook(p)) for p, m in model.named_modules() if p]
    handles += [m.register_forward_pre_hook(leaf_pre_hook(p)) for p, m in leaves]
    handles += [m.register_forward_pre_hook(pre_hook(p)) for p, m in leaves
                if not isinstance(m, (nn.BatchNorm2d, *QUANTIZABLE))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _FunctionReads(reads, depth, keep, functional_activation):
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    fed_by = {layer: src for layer, (src, key) in candidates.items()
              if reads.get(key, 0) == 1 and runs.get(activation_path.get(src, ""), 1) == 1}
    only_layers = {layer: 0 < reads.get(key, 0) == layer_reads.get(key, 0) for layer, key in final.items()}
    return _Trace(calls, bn_of, module_input, activation_of, activation_path, fed_by, only_layers)


def _macs(mod: nn.Module, out_shape: tuple[int, ...]) -> int:
    per_sample_out = 1
    for d in out_shape[1:]:
        per_sample_out *= d
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        return per_sample_out * (mod.in_channels // mod.groups) * kh * kw
    assert isinstance(mod, nn.Linear)
    return per_sample_out * mod.in_features


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1


def _roles(calls: list[_Call], blocks: list[str]) -> list[str]:
    roles = ["" for _ in calls]
    is_conv = [isinstance(c.module, nn.Conv2d) for c in calls]
    last_conv = max((i for i, c in enumerate(is_conv) if c), default=-1)
    for i, c in enumerate(calls):
        m = c.module
        if isinstance(m, nn.Linear):
            roles[i] = "classifier" if i > last_conv else "linear"
        elif isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            roles[i] = "depthwise"
    for block in dict.fromkeys(blocks):
        idx = [i for i, b in enumerate(blocks) if b == block]
        dw = [i for i in idx if roles[i] == "depthwise"]
        if not dw:
            continue
        pointwise = [i for i in idx if not roles[i] and _is_pointwise(calls[i].module)]
        after = []
        for i in pointwise:
            if i < dw[0]:
                roles[i] = "expand"
            elif calls[i].pooled_input:
                roles[i] = "se"
            elif i > dw[0]:
                after.append(i)
        if after:
            roles[after[-1]] = "project"
    first_conv = next((i for i, c in enumerate(is_conv) if c), None)
    if first_conv is not None and roles[first_conv] in ("", "expand"):
        roles[first_conv] = "stem"
    return [r or "conv" for r in roles]


def build_layer_graph(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> LayerGraph:
    """Trace ``model`` once on zeros of ``input_shape`` and describe its quantizable layers."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    tr = _trace(model, torch.zeros(input_shape, device=device))
    calls, bn_of, module_input = tr.calls, tr.bn_of, tr.module_input
    blocks = [_block_of(model, c.path) for c in calls]
    roles = _roles(calls, blocks)
    layers = []
    for i, (c, block, role) in enumerate(zip(calls, blocks, roles)):
        m = c.module
        if isinstance(m, nn.Conv2d):
            kind, cin, cout, groups = "conv", m.in_channels, m.out_channels, m.groups
            kernel = (int(m.kernel_size[0]), int(m.kernel_size[1]))
        else:
            assert isinstance(m, nn.Linear)
            kind, cin, cout, groups, kernel = "linear", m.in_features, m.out_features, 1, (1, 1)
        layers.append(
            LayerInfo(
                path=c.path,
                kind=kind,
                role=role,
                block=block,
                order=i,
                params=sum(p.numel() for p in m.parameters(recurse=False)),
                macs=_macs(m, c.out_shape),
                in_channels=cin,
                out_channels=cout,
                kernel=kernel,
                groups=groups,
                input_shape=c.in_shape,
                output_shape=c.out_shape,
                bn=bn_of.get(c.path),
                reads_block_input=block != c.path and module_input.get(block) == c.input_id,
                activation=tr.activation_of.get(c.path),
                activation_path=tr.activation_path.get(c.path),
                fed_by=tr.fed_by.get(c.path),
                feeds_layers_only=tr.feeds_layers_only.get(c.path, False),
            )
        )
    total = sum(p.numel() for p in model.parameters())
    return LayerGraph(layers=layers, input_shape=tuple(input_shape), total_params=total)
