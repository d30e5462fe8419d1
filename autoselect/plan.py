"""Selective-QAT plans: per-layer actions, versioned, in human-readable JSON (or YAML).

A plan maps layer keys to actions. Keys, in order of precedence:

1. an exact module path (``"features.3.conv.1.0"``);
2. the first ``"re:<pattern>"`` key, in file order, whose pattern ``re.fullmatch``-es the path;
3. ``"role:<role>"`` — every layer of that role in the layer graph (``depthwise``, ``project``, ``classifier``, ...);
4. ``"_default"``; a layer matched by nothing stays FP32.

An action is one of ``freeze`` (quantized with calibrated parameters, not retrained), ``qat`` (quantized and
retrained) or ``fp32`` (left in floating point), with modifiers: ``act`` (``"sym"``: signed activations with zero-point
0; ``"asym"``: the full unsigned range with a zero-point; default: the target's), ``weight_bits`` (default: the
target's), ``act_bits`` (4-8, the layer's input activation; default: the target's; below the target's, on the
simulation-only ``generic`` targets only) and ``smooth`` (seed 003: per-channel weight magnitudes moved into the
activation, for per-tensor targets).
``"qat_sym"`` and ``"qat_asym"`` are shorthands for ``{"action": "qat", "act": ...}``.

Post-training methods (:mod:`autoselect.quant.methods`), per layer: ``rounding`` (``"nearest"`` or a registered
rounding method such as ``"adaround"``), ``bias_correction`` (true/false) and ``equalize`` (cross-layer equalization
with the layer feeding this one). Left out, each takes its default for the action and the target
(:func:`autoselect.quant.methods.defaults`): a plan that says only ``"freeze"`` gets the strongest post-training
treatment measured for its target.

A ``qat`` action also takes ``learn_scales`` (default true): its weight and input-activation steps are trained with
the weights (LSQ, LSQ+ offsets on asymmetric grids, :mod:`autoselect.quant.lsq`), starting from the post-training
state; false keeps the calibrated activation grid fixed and recomputes the weight's from the weight (min-max or MSE)
at every step, as before.

This module is pure data: it imports neither torch nor the models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from autoselect._io import atomic_path, read_text
from autoselect.errors import AutoselectError, first_line

__all__ = ["PLAN_VERSION", "LayerAction", "ModelRef", "Plan", "load_plan", "save_plan", "resolve_keys"]

PLAN_VERSION = 1
KINDS = ("freeze", "qat", "fp32")
_SHORTHANDS = {"qat_sym": ("qat", "sym"), "qat_asym": ("qat", "asym")}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class LayerAction:
    kind: str = "freeze"
    act: str | None = None  # "sym" | "asym" | None (the target's)
    weight_bits: int | None = None
    act_bits: int | None = None  # input activation bits, 4-8 (None: the target's); below 8: simulation only
    smooth: bool = False
    # post-training methods; None: the default for the action and target (autoselect.quant.methods.defaults)
    rounding: str | None = None
    bias_correction: bool | None = None
    equalize: bool | None = None
    # qat only: train the quantizers' steps with the weights (LSQ); None: the default (true for qat)
    learn_scales: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AutoselectError(f"unknown action {self.kind!r}; choose one of {', '.join(KINDS)}, qat_sym, qat_asym")
        if self.act not in (None, "sym", "asym"):
            raise AutoselectError(f"act must be 'sym' or 'asym', got {self.act!r}")
        if self.weight_bits is not None and not (isinstance(self.weight_bits, int) and 2 <= self.weight_bits <= 8):
            raise AutoselectError(f"weight_bits must be an integer from 2 to 8, got {self.weight_bits!r}")
        if self.act_bits is not None and not (isinstance(self.act_bits, int) and not isinstance(self.act_bits, bool)
                                              and 4 <= self.act_bits <= 8):
            raise AutoselectError(f"act_bits must be an integer from 4 to 8, got {self.act_bits!r}")
        if self.kind == "fp32" and (self.act or self.weight_bits or self.act_bits or self.smooth
                                    or self.rounding is not None or self.bias_correction is not None
                                    or self.equalize is not None):
            raise AutoselectError("an fp32 action takes no act, weight_bits, act_bits, smooth or post-training method")
        if self.rounding is not None and not (isinstance(self.rounding, str) and re.fullmatch(r"[a-z0-9_]+",
                                                                                             self.rounding)):
            raise AutoselectError(f"rounding must be a method name such as 'nearest' or 'adaround', "
                                  f"got {self.rounding!r}"[:300])
        for name in ("bias_correction", "equalize", "learn_scales"):
            val = getattr(self, name)
            if val is not None and not isinstance(val, bool):
                raise AutoselectError(f"'{name}' must be true or false, got {val!r}"[:300])
        if self.learn_scales is not None and self.kind != "qat":
            raise AutoselectError("'learn_scales' applies to qat (retrained) layers only")
        if self.smooth and self.equalize:
            raise AutoselectError("a smoothed layer cannot also be equalized (both rescale its input channels)")

    @property
    def trainable(self) -> bool:
        return self.kind == "qat"

    @property
    def learns_scales(self) -> bool:
        """Whether a retrained layer trains its quantizers' steps (the default) or keeps them as calibrated."""
        return self.trainable and self.learn_scales is not False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind}
        if self.act is not None:
            out["act"] = self.act
        if self.weight_bits is not None:
            out["weight_bits"] = self.weight_bits
        if self.act_bits is not None:
            out["act_bits"] = self.act_bits
        if self.smooth:
            out["smooth"] = True
        for name in ("rounding", "bias_correction", "equalize", "learn_scales"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> LayerAction:
        if isinstance(obj, str):
            obj = {"action": obj}
        if not isinstance(obj, dict):
            raise AutoselectError(f"{where}: an action must be a string or an object, got {type(obj).__name__}")
        unknown = set(obj) - {"action", "act", "weight_bits", "act_bits", "smooth", "rounding", "bias_correction",
                              "equalize", "learn_scales"}
        if unknown:
            raise AutoselectError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        kind = obj.get("action", "freeze")
        act = obj.get("act")
        smooth = obj.get("smooth", False)
        if not isinstance(kind, str):
            raise AutoselectError(f"{where}: 'action' must be a string, got {kind!r}"[:300])
        if not isinstance(smooth, bool):
            raise AutoselectError(f"{where}: 'smooth' must be true or false, got {smooth!r}"[:300])
        if kind in _SHORTHANDS:
            kind, implied = _SHORTHANDS[kind]
            if act is not None and act != implied:
                raise AutoselectError(f"{where}: {obj['action']} contradicts act={act!r}")
            act = implied
        try:
            return cls(kind=kind, act=act, weight_bits=obj.get("weight_bits"), act_bits=obj.get("act_bits"),
                       smooth=smooth,
                       rounding=obj.get("rounding"), bias_correction=obj.get("bias_correction"),
                       equalize=obj.get("equalize"), learn_scales=obj.get("learn_scales"))
        except AutoselectError as exc:
            raise AutoselectError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    name: str
    num_classes: int | None = None
    input_size: int | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class Plan:
    layers: dict[str, LayerAction]
    target: str = "generic"
    model: ModelRef | None = None
    # range observers; a missing "weight" takes the default of the layer's methods (mse), a missing "act" mse below
    # 8 bits, and at 8 bits percentile on deployable targets, minmax on generic ones (autoselect.quant.targets)
    observers: dict[str, str] = field(default_factory=dict)
    objectives: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def resolve(self, paths: Iterable[str], roles: Mapping[str, str] | None = None) -> dict[str, LayerAction | None]:
        """Each layer path's action (``None`` = FP32); refuses keys that name or match no layer."""
        return resolve_keys(paths, self.layers, roles)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "target": self.target,
            "model": asdict(self.model) if self.model else None,
            "observers": dict(self.observers),
            "layers": {k: a.to_json() for k, a in self.layers.items()},
            "objectives": dict(self.objectives),
            "provenance": dict(self.provenance),
        }


def resolve_keys(paths: Iterable[str], mapping: Mapping[str, T], roles: Mapping[str, str] | None = None
                 ) -> dict[str, T | None]:
    """Resolve a per-layer map by the precedence in the module docstring."""
    paths = list(paths)
    known = set(paths)
    exact = {k: v for k, v in mapping.items() if not k.startswith(("re:", "role:")) and k != "_default"}
    unknown = sorted(set(exact) - known)
    if unknown:
        raise AutoselectError(f"no quantizable layer named {unknown[0]!r} in this model ({len(unknown)} unknown)")
    patterns = []
    for key, value in mapping.items():
        if key.startswith("re:"):
            try:
                patterns.append((key, re.compile(key[3:]), value))
            except re.error as exc:
                raise AutoselectError(f"bad layer pattern {key!r}: {exc}") from None
    by_role = {k[5:]: v for k, v in mapping.items() if k.startswith("role:")}
    if by_role and roles is None:
        raise AutoselectError("role: keys need the model's layer roles")
    roles = roles or {}
    missing_roles = sorted(set(by_role) - set(roles.values()))
    if missing_roles:
        raise AutoselectError(f"no layer has role {missing_roles[0]!r} in this model "
                              f"(roles here: {', '.join(sorted(set(roles.values())))})")
    default = mapping.get("_default")
    out: dict[str, T | None] = {}
    used: set[str] = set()
    for p in paths:
        if p in exact:
            out[p] = exact[p]
            continue
        for key, pat, value in patterns:
            if pat.fullmatch(p):
                out[p] = value
                used.add(key)
                break
        else:
            role = roles.get(p)
            out[p] = by_role[role] if role in by_role else default
    unused = [key for key, _, _ in patterns if key not in used]
    if unused:
        raise AutoselectError(f"layer pattern {unused[0]!r} matches no layer of this model")
    return out


def _parse(obj: Any, source: str) -> Plan:
    if not isinstance(obj, dict):
        raise AutoselectError(f"plan {source} is not an object")
    version = obj.get("version")
    if version != PLAN_VERSION or isinstance(version, bool):
        raise AutoselectError(f"plan {source} has version {version!r}; this autoselect reads version {PLAN_VERSION}")
    unknown = set(obj) - {"version", "target", "model", "observers", "layers", "objectives", "provenance"}
    if unknown:
        raise AutoselectError(f"plan {source}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    layers = obj.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise AutoselectError(f"plan {source}: 'layers' must be a non-empty object")
    actions = {str(k): LayerAction.from_json(v, f"plan {source}, layer {k!r}") for k, v in layers.items()}
    ref = _model_ref(obj.get("model"), source)
    observers = _mapping(obj, "observers", source) or {}
    for key, val in observers.items():
        if key not in ("weight", "act") or not isinstance(val, str) or val not in ("minmax", "mse", "percentile"):
            raise AutoselectError(f"plan {source}: bad observer {key}={val!r}"[:300])
    target = obj.get("target", "generic")
    if not isinstance(target, str):
        raise AutoselectError(f"plan {source}: 'target' must be a string")
    objectives = _mapping(obj, "objectives", source)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in objectives.values()):
        raise AutoselectError(f"plan {source}: 'objectives' must map names to numbers")
    return Plan(layers=actions, target=target, model=ref, observers=dict(observers), objectives=dict(objectives),
                provenance=dict(_mapping(obj, "provenance", source)), version=version)


def _mapping(obj: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = obj.get(key) or {}
    if not isinstance(value, dict):
        raise AutoselectError(f"plan {source}: {key!r} must be an object, got {type(value).__name__}")
    return value


def _model_ref(model: Any, source: str) -> ModelRef | None:
    if model is None:
        return None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise AutoselectError(f"plan {source}: 'model' must be an object with a 'name' string")
    unknown = set(model) - {"name", "num_classes", "input_size", "weights_sha256"}
    if unknown:
        raise AutoselectError(f"plan {source}: 'model' has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for key in ("num_classes", "input_size"):
        v = model.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise AutoselectError(f"plan {source}: model.{key} must be a positive integer, got {v!r}"[:300])
    if not isinstance(model.get("weights_sha256"), (str, type(None))):
        raise AutoselectError(f"plan {source}: model.weights_sha256 must be a string")
    return ModelRef(**model)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file (``.json``, or ``.yaml``/``.yml``)."""
    p = Path(path)
    if not p.is_file():
        raise AutoselectError(f"plan file not found: {p}")
    text = read_text(p, "plan")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutoselectError(f"plan {p} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except Exception as exc:  # noqa: BLE001 - yaml's errors
        raise AutoselectError(f"plan {p} is not valid YAML: {first_line(exc)}") from None
    return _parse(obj, str(p))


def save_plan(plan: Plan, path: str | Path) -> Path:
    p = Path(path)
    with atomic_path(p) as tmp:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            tmp.write_text(yaml.safe_dump(plan.to_json(), sort_keys=False))
        else:
            tmp.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    return p
