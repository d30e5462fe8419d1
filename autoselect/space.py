"""Search spaces: which action each layer may take, and which layers are decided together.

A space is a declarative YAML file (``search_spaces/*.yaml``, one per model family plus ``generic.yaml``), parsed
once here into a frozen :class:`SearchSpace` that validates itself; nothing deeper sees raw YAML.

The unit of decision is a **group**. In every block, the layers whose role is listed in ``together`` form one
group (seed 001: a block's depthwise layer must co-adapt with its 1x1 layers); every other layer is its own group.
Each group chooses one action (``freeze``, ``qat``, ``qat_sym``, ``qat_asym``, ``fp32``), and, where the space
lists more than one value, a weight bit-width and whether to smooth. A role may narrow the actions (``roles:``).

This module is pure data: it imports neither torch nor the models. Layers come in as rows with ``path``, ``role``,
``block`` and ``params``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoselect._io import read_text
from autoselect.errors import AutoselectError, first_line
from autoselect.plan import LayerAction, ModelRef, Plan

__all__ = ["ACTIONS", "SPACE_VERSION", "Group", "SearchSpace", "builtin_spaces", "find_space", "load_space"]

SPACE_VERSION = 1
ACTIONS = ("freeze", "qat", "qat_sym", "qat_asym", "fp32")
_FIELDS = {"version", "name", "description", "models", "target", "actions", "roles", "together", "weight_bits",
           "act_bits", "smooth", "prior"}
_PRIOR_FIELDS = {"budgets", "search_top"}


class LayerRow(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def block(self) -> str: ...
    @property
    def params(self) -> int: ...


@dataclass(frozen=True)
class Group:
    """Layers decided together. ``choices``: the actions this group may take, in the space's order."""

    name: str
    layers: tuple[str, ...]
    roles: tuple[str, ...]
    params: int
    choices: tuple[str, ...]

    @property
    def untrained(self) -> str:
        """The action when this group is not retrained: freeze where allowed, else its first choice."""
        return "freeze" if "freeze" in self.choices else self.choices[0]


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    name: str
    models: tuple[str, ...] = ("*",)
    target: str = "generic"
    actions: tuple[str, ...] = ("freeze", "qat")
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    together: tuple[str, ...] = ("expand", "depthwise", "project")
    weight_bits: tuple[int | None, ...] = (None,)  # None: the target's bit-width
    act_bits: tuple[int | None, ...] = (None,)  # input activations, 4-8 (None: the target's); generic targets only
    smooth: tuple[bool, ...] = (False,)
    prior_budgets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    search_top: int | None = None
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = f"search space {self.source or self.name}"
        for acts, what in [(self.actions, "actions"), *((v, f"roles.{k}") for k, v in self.roles.items())]:
            if not acts:
                raise AutoselectError(f"{where}: {what} is empty")
            bad = [a for a in acts if a not in ACTIONS]
            if bad:
                raise AutoselectError(f"{where}: unknown action {bad[0]!r} in {what}; choose from {', '.join(ACTIONS)}")
        for b in self.weight_bits:
            if b is not None and (not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8):
                raise AutoselectError(f"{where}: weight_bits must be integers from 2 to 8 (or null), got {b!r}")
        for b in self.act_bits:
            if b is not None and (not isinstance(b, int) or isinstance(b, bool) or not 4 <= b <= 8):
                raise AutoselectError(f"{where}: act_bits must be integers from 4 to 8 (or null), got {b!r}")
        if not self.weight_bits or not self.act_bits or not self.smooth:
            raise AutoselectError(f"{where}: weight_bits, act_bits and smooth need at least one value")
        if any(not 0.0 < b <= 1.0 for b in self.prior_budgets):
            raise AutoselectError(f"{where}: prior.budgets are fractions of the parameters, in (0, 1]")
        if self.search_top is not None and self.search_top < 1:
            raise AutoselectError(f"{where}: prior.search_top must be at least 1")

    # -- groups and plans ------------------------------------------------------------------------------------

    def matches(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def groups(self, layers: Sequence[LayerRow]) -> list[Group]:
        """The model's groups, in layer order (a group sits where its first layer does)."""
        members: dict[str, list[LayerRow]] = {}
        for row in layers:
            key = row.block if row.role in self.together else row.path
            members.setdefault(key, []).append(row)
        out = []
        for name, rows in members.items():
            roles = tuple(dict.fromkeys(r.role for r in rows))
            allowed = [a for a in self.actions if all(a in self.roles.get(role, self.actions) for role in roles)]
            if not allowed:
                raise AutoselectError(f"search space {self.name}: group {name} (roles {', '.join(roles)}) has no "
                                      "action allowed for all of its roles")
            out.append(Group(name=name, layers=tuple(r.path for r in rows), roles=roles,
                             params=sum(r.params for r in rows), choices=tuple(allowed)))
        return out

    def check_target(self, target: Any) -> None:
        """Refuse a space offering actions the target cannot run (``target``: a :class:`~autoselect.quant.Target`)."""
        where = f"search space {self.name}"
        acts = set(self.actions).union(*self.roles.values())
        if "qat_asym" in acts and target.act_symmetric:
            raise AutoselectError(f"{where}: qat_asym (asymmetric activations) cannot run on target {target.name}")
        if "qat_sym" in acts and not target.signed_act_ok:
            raise AutoselectError(f"{where}: qat_sym (signed activations) cannot run faithfully on target "
                                  f"{target.name}; use qat or qat_asym")
        bad = [b for b in self.weight_bits if b is not None and b not in target.weight_bits]
        if bad and not target.name.startswith("generic"):
            raise AutoselectError(f"{where}: {bad[0]}-bit weights cannot run on target {target.name} "
                                  f"(it runs {', '.join(map(str, target.weight_bits))}-bit)")
        for b in self.act_bits:  # the target's own rule (Target.spec refuses bits it cannot run)
            try:
                target.spec(act_bits=b)
            except AutoselectError as exc:
                raise AutoselectError(f"{where}: {exc}") from None

    def parameters(self, group: Group) -> dict[str, tuple[Any, ...]]:
        """The search parameters of one group: name → choices (only those with more than one choice)."""
        params: dict[str, tuple[Any, ...]] = {}
        if len(group.choices) > 1:
            params[f"{group.name}.action"] = group.choices
        if len(self.weight_bits) > 1:
            params[f"{group.name}.bits"] = self.weight_bits
        if len(self.act_bits) > 1:
            params[f"{group.name}.act_bits"] = self.act_bits
        if len(self.smooth) > 1:
            params[f"{group.name}.smooth"] = self.smooth
        return params

    def plan(self, groups: Sequence[Group], params: Mapping[str, Any], *, target: str, model: ModelRef | None = None,
             fixed: Mapping[str, str] | None = None, provenance: Mapping[str, Any] | None = None) -> Plan:
        """The plan of one point of the space. Groups without a parameter take their only choice, or ``fixed``."""
        fixed = fixed or {}
        layers: dict[str, LayerAction] = {}
        for g in groups:
            action = fixed.get(g.name) or params.get(f"{g.name}.action", g.choices[0])
            if action not in g.choices and g.name not in fixed:
                raise AutoselectError(f"group {g.name}: action {action!r} is not among its choices {g.choices}")
            bits = params.get(f"{g.name}.bits", self.weight_bits[0])
            act_bits = params.get(f"{g.name}.act_bits", self.act_bits[0])
            smooth = bool(params.get(f"{g.name}.smooth", self.smooth[0]))
            if action == "fp32":
                act = LayerAction(kind="fp32")
            else:
                kind, a = {"freeze": ("freeze", None), "qat": ("qat", None), "qat_sym": ("qat", "sym"),
                           "qat_asym": ("qat", "asym")}[action]
                act = LayerAction(kind=kind, act=a, weight_bits=bits, act_bits=act_bits, smooth=smooth)
            for path in g.layers:
                layers[path] = act
        return Plan(layers=layers, target=target, model=model, provenance=dict(provenance or {}))


# -- files -----------------------------------------------------------------------------------------------------


_KINDS: dict[str, tuple[type, ...]] = {"models": (str,), "actions": (str,), "together": (str,), "smooth": (bool,),
                                       "weight_bits": (int, type(None)), "act_bits": (int, type(None)),
                                       "roles": (str,)}


def _tuple(value: Any, where: str, what: str) -> tuple[Any, ...]:
    """A list (or a single value) whose items are all of the kind ``what`` takes (``roles.*``: actions)."""
    kinds = _KINDS[what.split(".")[0]]
    items = (value,) if not isinstance(value, list) else tuple(value)
    if isinstance(value, dict) or any(not isinstance(v, kinds) or (bool not in kinds and isinstance(v, bool))
                                      for v in items):
        names = " or ".join("null" if k is type(None) else k.__name__.replace("str", "string")
                            .replace("bool", "true/false").replace("int", "integer") for k in kinds)
        raise AutoselectError(f"{where}: {what} must be a list of {names} values (or one), got {value!r}"[:300])
    return items


def _text(obj: dict, key: str, where: str, default: str) -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise AutoselectError(f"{where}: {key} must be a string, got {value!r}"[:300])
    return value


def _parse(obj: Any, source: str) -> SearchSpace:
    where = f"search space {source}"
    if not isinstance(obj, dict):
        raise AutoselectError(f"{where} is not a mapping")
    if obj.get("version") != SPACE_VERSION or isinstance(obj.get("version"), bool):
        raise AutoselectError(f"{where} has version {obj.get('version')!r}; this autoselect reads {SPACE_VERSION}")
    unknown = set(obj) - _FIELDS
    if unknown:
        raise AutoselectError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    roles = obj.get("roles") or {}
    if not isinstance(roles, dict):
        raise AutoselectError(f"{where}: roles must map a role to its actions")
    prior = obj.get("prior") or {}
    if not isinstance(prior, dict) or set(prior) - _PRIOR_FIELDS:
        raise AutoselectError(f"{where}: prior takes {', '.join(sorted(_PRIOR_FIELDS))}")
    kw: dict[str, Any] = {"name": _text(obj, "name", where, Path(source).stem), "source": source,
                          "description": _text(obj, "description", where, "")}
    for key in ("models", "actions", "together", "weight_bits", "act_bits", "smooth"):
        if key in obj:
            kw[key] = _tuple(obj[key], where, key)
    if "target" in obj:
        kw["target"] = _text(obj, "target", where, "generic")
    kw["roles"] = {str(k): _tuple(v, where, f"roles.{k}") for k, v in roles.items()}
    if "budgets" in prior:
        budgets = prior["budgets"] if isinstance(prior["budgets"], list) else [prior["budgets"]]
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in budgets):
            raise AutoselectError(f"{where}: prior.budgets must be numbers")
        kw["prior_budgets"] = tuple(float(b) for b in budgets)
    top = prior.get("search_top")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool):
            raise AutoselectError(f"{where}: prior.search_top must be an integer, got {top!r}"[:300])
        kw["search_top"] = top
    return SearchSpace(**kw)


def _space_dir() -> Path:
    from importlib import resources

    try:
        return Path(str(resources.files("autoselect.search_spaces")))
    except ModuleNotFoundError:  # a source checkout not installed
        return Path(__file__).resolve().parent.parent / "search_spaces"


def builtin_spaces() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_space_dir().glob("*.yaml"))}


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Read and validate a space file, or a built-in space by name (``generic``, ``mobilenet_v2``, ...)."""
    p = Path(path_or_name)
    if not p.is_file():
        spaces = builtin_spaces()
        if str(path_or_name) not in spaces:
            raise AutoselectError(f"search space not found: {path_or_name} (built-in: {', '.join(spaces)})")
        p = spaces[str(path_or_name)]
    import yaml

    try:
        obj = yaml.safe_load(read_text(p, "search space"))
    except Exception as exc:  # noqa: BLE001 - yaml's errors
        raise AutoselectError(f"search space {p} is not valid YAML: {first_line(exc)}") from None
    return _parse(obj, str(p))


def find_space(model: str) -> SearchSpace:
    """The first built-in family space whose ``models`` patterns match ``model``, else ``generic``."""
    spaces = builtin_spaces()
    for name, path in spaces.items():
        if name == "generic":
            continue
        space = load_space(path)
        if space.matches(model):
            return space
    return load_space(spaces["generic"]) if "generic" in spaces else SearchSpace(name="generic")
