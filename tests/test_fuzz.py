"""Property-based fuzzing of every file autoselect reads: plans, search spaces and checkpoints, from random bytes
and from random JSON/YAML/pickled structures shaped like the real thing. Each loader must return a valid object
or raise AutoselectError (one line for the user), never anything else; whatever it accepts must then be usable
(a plan resolves against a model's layers, a space makes groups and plans) or be refused the same way."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoselect.errors import AutoselectError
from autoselect.models import build_layer_graph
from autoselect.models.checkpoint import read_checkpoint
from autoselect.plan import Plan, load_plan
from autoselect.quant.apply import plan_specs
from autoselect.space import SearchSpace, load_space

from .helpers import tiny_net

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GRAPH = build_layer_graph(tiny_net(), (1, 3, 32, 32))

# scalars and containers of the kinds JSON and YAML produce, with the real files' words mixed in
WORDS = st.sampled_from(["freeze", "qat", "fp32", "qat_sym", "qat_asym", "sym", "asym", "minmax", "mse",
                         "percentile", "generic", "x86", "generic-pt", "_default", "role:depthwise", "role:nope",
                         "re:blocks\\..*", "re:(", "stem.0", "head", "blocks.0.conv.0", "weight", "act", "*"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12), WORDS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(WORDS, st.text(max_size=6)), inner,
                                                                       max_size=4)), max_leaves=12)
ACTION = st.one_of(WORDS, st.fixed_dictionaries({}, optional={
    "action": st.one_of(WORDS, SCALARS), "act": st.one_of(WORDS, SCALARS), "weight_bits": SCALARS,
    "smooth": SCALARS, "extra": SCALARS}), VALUES)
LAYER_KEYS = st.one_of(WORDS, st.sampled_from(GRAPH.paths), st.text(max_size=8))
PLANS = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.just(1), SCALARS), "target": st.one_of(WORDS, SCALARS),
    "layers": st.one_of(st.dictionaries(LAYER_KEYS, ACTION, max_size=5), VALUES),
    "model": st.one_of(st.fixed_dictionaries({"name": st.one_of(WORDS, SCALARS)}, optional={
        "num_classes": SCALARS, "input_size": SCALARS, "weights_sha256": SCALARS, "other": SCALARS}), VALUES),
    "observers": st.one_of(st.dictionaries(WORDS, st.one_of(WORDS, SCALARS), max_size=3), VALUES),
    "objectives": VALUES, "provenance": VALUES, "unknown": VALUES})
SPACES = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.just(1), SCALARS), "name": SCALARS, "description": SCALARS,
    "models": st.one_of(st.lists(WORDS, max_size=3), VALUES), "target": st.one_of(WORDS, SCALARS),
    "actions": st.one_of(st.lists(WORDS, max_size=4), VALUES),
    "roles": st.one_of(st.dictionaries(st.sampled_from(["depthwise", "stem", "classifier", "x"]),
                                       st.one_of(st.lists(WORDS, max_size=3), VALUES), max_size=3), VALUES),
    "together": st.one_of(st.lists(st.sampled_from(["expand", "depthwise", "project", "stem"]), max_size=3), VALUES),
    "weight_bits": st.one_of(st.lists(st.one_of(st.none(), st.integers(0, 10)), max_size=3), VALUES),
    "smooth": st.one_of(st.lists(st.booleans(), max_size=2), VALUES),
    "prior": st.one_of(st.fixed_dictionaries({}, optional={"budgets": VALUES, "search_top": SCALARS}), VALUES),
    "unknown": VALUES})


VALID_PLAN = {"version": 1, "target": "generic", "observers": {"weight": "mse", "act": "minmax"},
              "model": {"name": "tiny", "num_classes": 10, "input_size": 32, "weights_sha256": "ab"},
              "layers": {"stem.0": "fp32", "role:depthwise": {"action": "qat", "act": "asym", "weight_bits": 6,
                                                              "smooth": True},
                         "re:blocks\\.1\\..*": "qat_sym", "_default": "freeze"},
              "objectives": {"top1": 1.0}, "provenance": {"made_by": "test"}}
VALID_SPACE = {"version": 1, "name": "s", "description": "d", "models": ["tiny*"], "target": "generic",
               "actions": ["freeze", "qat", "qat_asym"], "roles": {"stem": ["freeze", "fp32"]},
               "together": ["expand", "depthwise", "project"], "weight_bits": [4, 8, None], "smooth": [False, True],
               "prior": {"budgets": [0.1, 0.5], "search_top": 2}}


def _paths(obj, prefix=()):
    """Every key path into a nested dict (the places a mutation can hit)."""
    for k, v in obj.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


@st.composite
def mutated(draw, valid):
    """A valid object with one to three of its fields (at any depth) replaced by a random value or removed."""
    import copy

    obj = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(obj))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and len(path) > 0:
            parent[path[-1]] = draw(VALUES)
        else:
            del parent[path[-1]]
    return obj


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def _load_plan_or_refuse(path: Path) -> None:
    try:
        plan = load_plan(path)
    except AutoselectError:
        return
    assert isinstance(plan, Plan)
    try:  # accepted: it must resolve against a real model, or be refused in one line
        plan_specs(plan, GRAPH)
    except AutoselectError:
        pass


def _load_space_or_refuse(path: Path) -> None:
    try:
        space = load_space(path)
    except AutoselectError:
        return
    assert isinstance(space, SearchSpace)
    try:
        space.matches("tiny_net")
        groups = space.groups(GRAPH.layers)
        params = {k: v[-1] for g in groups for k, v in space.parameters(g).items()}
        space.plan(groups, params, target="generic")
    except AutoselectError:
        pass


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".yaml"]))
def test_plan_from_random_bytes(tmp_path, data, suffix):
    _load_plan_or_refuse(_write(tmp_path, "plan" + suffix, data))


@SETTINGS
@given(obj=st.one_of(PLANS, mutated(VALID_PLAN)), as_yaml=st.booleans())
def test_plan_from_random_structures(tmp_path, obj, as_yaml):
    text = yaml.safe_dump(obj) if as_yaml else json.dumps(obj)
    _load_plan_or_refuse(_write(tmp_path, "plan.yaml" if as_yaml else "plan.json", text.encode()))


@SETTINGS
@given(data=st.binary(max_size=300))
def test_space_from_random_bytes(tmp_path, data):
    _load_space_or_refuse(_write(tmp_path, "space.yaml", data))


@SETTINGS
@given(obj=st.one_of(SPACES, mutated(VALID_SPACE)))
def test_space_from_random_structures(tmp_path, obj):
    _load_space_or_refuse(_write(tmp_path, "space.yaml", yaml.safe_dump(obj).encode()))


def _read_or_refuse(path: Path) -> None:
    try:
        ck = read_checkpoint(path)
    except AutoselectError:
        return
    assert ck.state_dict and all(isinstance(v, torch.Tensor) for v in ck.state_dict.values())
    assert all(bool(torch.isfinite(v).all()) for v in ck.state_dict.values() if v.is_floating_point())


TENSORS = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=4).map(torch.tensor),
    st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(torch.tensor), st.just(torch.zeros(0)))
CKPT_VALUES = st.one_of(TENSORS, SCALARS, st.lists(SCALARS, max_size=3))
CHECKPOINTS = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), TENSORS, max_size=3),
    st.fixed_dictionaries({}, optional={
        "state_dict": st.one_of(st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), CKPT_VALUES,
                                                max_size=3), CKPT_VALUES),
        "model": SCALARS, "num_classes": SCALARS, "input_size": SCALARS, "test_acc": SCALARS,
        "normalize": st.one_of(st.fixed_dictionaries({}, optional={"mean": st.lists(SCALARS, max_size=4),
                                                                   "std": st.lists(SCALARS, max_size=4)}),
                               CKPT_VALUES)}),
    CKPT_VALUES)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_checkpoint_from_random_bytes(tmp_path, data):
    _read_or_refuse(_write(tmp_path, "w.pt", data))


@SETTINGS
@given(obj=CHECKPOINTS, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_checkpoint_from_random_structures_whole_or_truncated(tmp_path, obj, cut):
    p = tmp_path / "w.pt"
    torch.save(obj, p)
    if cut is not None:
        p.write_bytes(p.read_bytes()[:cut])
    _read_or_refuse(p)


def test_checkpoint_with_a_nan_weight_is_refused(tmp_path):
    sd = tiny_net().state_dict()
    sd["head.weight"][0, 0] = float("nan")
    torch.save({"model": "tiny", "state_dict": sd}, tmp_path / "w.pt")
    with pytest.raises(AutoselectError, match=r"'head.weight' has 1 non-finite value"):
        read_checkpoint(tmp_path / "w.pt")


def test_the_fuzzers_reach_the_valid_objects(tmp_path):
    """The generators are not all noise: the valid objects they mutate load and apply."""
    _write(tmp_path, "valid.json", json.dumps(VALID_PLAN).encode())
    assert plan_specs(load_plan(tmp_path / "valid.json"), GRAPH)[1]["blocks.0.conv.3"].smooth
    _write(tmp_path, "valid.yaml", yaml.safe_dump(VALID_SPACE).encode())
    assert load_space(tmp_path / "valid.yaml").matches("tiny_net")
    plan = {"version": 1, "target": "generic", "layers": {"role:depthwise": "qat_asym", "_default": "freeze"}}
    _write(tmp_path, "p.json", json.dumps(plan).encode())
    assert plan_specs(load_plan(tmp_path / "p.json"), GRAPH)[1]["blocks.0.conv.3"].kind == "qat"
    space = {"version": 1, "actions": ["freeze", "qat"], "weight_bits": [4, 8], "smooth": [False, True]}
    _write(tmp_path, "s.yaml", yaml.safe_dump(space).encode())
    assert len(load_space(tmp_path / "s.yaml").groups(GRAPH.layers)) > 1
