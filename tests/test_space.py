"""Search spaces, Pareto fronts, hypervolume, the latency model, the pruner and the prior: pure logic."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from autoselect.errors import AutoselectError
from autoselect.quant.spec import QuantSpec, TensorQuant
from autoselect.quant.targets import get_target
from autoselect.search.latency import LatencyModel, config_key, cost_model
from autoselect.search.pareto import Constraints, choose, hypervolume, pareto_mask
from autoselect.search.prior import group_sensitivity, narrow, warm_starts
from autoselect.search.pruning import Finished, ParetoPruner
from autoselect.space import SearchSpace, builtin_spaces, find_space, load_space


@dataclass
class Row:
    path: str
    role: str
    block: str
    params: int
    macs: int = 1000
    input_shape: tuple = (1, 8, 4, 4)
    output_shape: tuple = (1, 8, 4, 4)


LAYERS = [Row("stem", "stem", "stem", 100), Row("b0.e", "expand", "b0", 200), Row("b0.d", "depthwise", "b0", 20),
          Row("b0.p", "project", "b0", 200), Row("b1.e", "expand", "b1", 400), Row("b1.d", "depthwise", "b1", 40),
          Row("b1.p", "project", "b1", 400), Row("fc", "classifier", "fc", 50)]
TOTAL = sum(r.params for r in LAYERS)


def test_builtin_spaces_load_and_match_families():
    assert {"generic", "mobilenet_v2"} <= set(builtin_spaces())
    assert find_space("mobilenet_v2").name == "mobilenet_v2"
    assert find_space("mobilenet_v3_small").name == "mobilenet_v2"
    assert find_space("resnet18").name == "generic"
    for name in builtin_spaces():
        load_space(name).check_target(get_target(load_space(name).target))


def test_groups_put_a_blocks_depthwise_with_its_1x1_layers():
    groups = SearchSpace(name="t").groups(LAYERS)
    assert [g.name for g in groups] == ["stem", "b0", "b1", "fc"]
    assert groups[1].layers == ("b0.e", "b0.d", "b0.p") and groups[1].params == 420
    assert sum(g.params for g in groups) == TOTAL
    per_layer = SearchSpace(name="t", together=()).groups(LAYERS)
    assert len(per_layer) == len(LAYERS)


def test_role_restrictions_narrow_a_groups_actions():
    space = SearchSpace(name="t", actions=("freeze", "qat", "fp32"), roles={"classifier": ("freeze", "qat")})
    groups = {g.name: g for g in space.groups(LAYERS)}
    assert groups["fc"].choices == ("freeze", "qat") and groups["b0"].choices == ("freeze", "qat", "fp32")
    assert set(space.parameters(groups["b0"])) == {"b0.action"}
    bits = SearchSpace(name="t", weight_bits=(4, 8))
    assert set(bits.parameters(groups["b0"])) == {"b0.action", "b0.bits"}


def test_plan_from_parameters():
    space = SearchSpace(name="t", actions=("freeze", "qat_asym", "fp32"), weight_bits=(4, 6))
    groups = space.groups(LAYERS)
    plan = space.plan(groups, {"b0.action": "qat_asym", "b0.bits": 6, "b1.action": "fp32", "stem.action": "freeze"},
                      target="generic", fixed={"fc": "freeze"})
    assert plan.layers["b0.d"].kind == "qat" and plan.layers["b0.d"].act == "asym"
    assert plan.layers["b0.d"].weight_bits == 6 and plan.layers["stem"].weight_bits == 4
    assert plan.layers["b1.p"].kind == "fp32" and plan.layers["fc"].kind == "freeze"
    with pytest.raises(AutoselectError, match="not among its choices"):
        space.plan(groups, {"b0.action": "qat"}, target="generic")
    acts = SearchSpace(name="t", act_bits=(8, 4))
    groups = acts.groups(LAYERS)
    assert acts.parameters({g.name: g for g in groups}["b0"])["b0.act_bits"] == (8, 4)
    plan = acts.plan(groups, {"b0.action": "qat", "b0.act_bits": 4}, target="generic")
    assert plan.layers["b0.d"].act_bits == 4 and plan.layers["stem"].act_bits == 8


@pytest.mark.parametrize("text, message", [
    ("version: 2\n", "version 2"),
    ("version: 1\nactionz: [freeze]\n", "unknown field"),
    ("version: 1\nactions: [freeze, retrain]\n", "unknown action 'retrain'"),
    ("version: 1\nweight_bits: [4, 12]\n", "weight_bits must be integers from 2 to 8"),
    ("version: 1\nact_bits: [8, 2]\n", "act_bits must be integers from 4 to 8"),
    ("version: 1\nactions: []\n", "actions is empty"),
    ("version: 1\nprior: {budgets: [2]}\n", "prior.budgets"),
    ("version: 1\nprior: {warm: 3}\n", "prior takes"),
    ("version: 1\nactions: [freeze\n", "not valid YAML"),
    ("- a\n- b\n", "not a mapping"),
])
def test_bad_space_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(AutoselectError, match=message):
        load_space(path)


def test_missing_space_names_the_builtins():
    with pytest.raises(AutoselectError, match="built-in: generic"):
        load_space("no_such_space")


@pytest.mark.parametrize("space, target, message", [
    (SearchSpace(name="s", actions=("freeze", "qat_sym")), "x86", "signed activations"),
    (SearchSpace(name="s", actions=("freeze", "qat_asym")), "tensorrt", "asymmetric activations"),
    (SearchSpace(name="s", weight_bits=(4, 8)), "x86", "4-bit weights cannot run on target x86"),
    (SearchSpace(name="s", act_bits=(4, 8)), "qnnpack", "4-bit activations cannot run on target qnnpack"),
])
def test_spaces_offering_what_the_target_cannot_run_are_refused(space, target, message):
    with pytest.raises(AutoselectError, match=message):
        space.check_target(get_target(target))
    SearchSpace(name="ok", weight_bits=(4, 8)).check_target(get_target("generic-pt"))


def _df(rows):
    return pd.DataFrame(rows, columns=["top1", "retrained", "latency"])


def test_pareto_mask_keeps_only_non_dominated_rows():
    df = _df([(80, 0.5, 1.0), (79, 0.2, 1.0), (78, 0.3, 1.0), (80, 0.5, 0.5), (70, 0.0, 1.0)])
    assert pareto_mask(df).tolist() == [False, True, False, True, True]


def test_hypervolume_is_the_dominated_area_times_the_latency_gain():
    df = _df([(80, 0.2, 0.5), (75, 0.1, 0.5)])
    # top-1 above 70 x retrained below 1: staircase area = 10*0.8 + 5*(0.9-0.8) = 8.5; latency gain 1 - 0.5
    assert hypervolume(df, ref_top1=70, ref_latency=1.0) == pytest.approx(8.5 * 0.5)
    more = pd.concat([df, _df([(60, 0.05, 0.5), (74, 0.5, 0.5)])])  # below the reference, and dominated
    assert hypervolume(more, ref_top1=70, ref_latency=1.0) == pytest.approx(8.5 * 0.5)
    faster = pd.concat([df, _df([(72, 0.9, 0.25)])])
    assert hypervolume(faster, ref_top1=70, ref_latency=1.0) == pytest.approx(8.5 * 0.5 + 2 * 0.1 * 0.25)


def test_choose_respects_constraints_and_prefers_fewer_retrained_within_tolerance():
    df = _df([(80.0, 0.9, 1.0), (79.8, 0.3, 1.0), (78.0, 0.1, 1.0)]).assign(trial=[0, 1, 2])
    assert choose(df, Constraints(tolerance=0.5), fp32_top1=81)["trial"] == 1
    assert choose(df, Constraints(tolerance=0.0), fp32_top1=81)["trial"] == 0
    assert choose(df, Constraints(max_retrained=0.2), fp32_top1=81)["trial"] == 2
    assert choose(df, Constraints(max_accuracy_drop=1.5, tolerance=5), fp32_top1=81)["trial"] == 1
    with pytest.raises(AutoselectError, match="no finished trial meets the constraints"):
        choose(df, Constraints(max_retrained=0.05), fp32_top1=81)


def _spec(bits: int) -> QuantSpec:
    return QuantSpec(weight=TensorQuant(bits=bits, symmetric=True, per_channel=True),
                     act=TensorQuant(bits=8, symmetric=False))


def test_cost_model_orders_configurations():
    fp32 = {r.path: None for r in LAYERS}
    w8 = {r.path: _spec(8) for r in LAYERS}
    w4 = {r.path: _spec(4) for r in LAYERS}
    island = dict(w8, **{"b0.d": None})
    assert cost_model(LAYERS, fp32) == pytest.approx(1.0)
    assert cost_model(LAYERS, w4) < cost_model(LAYERS, w8) < cost_model(LAYERS, island) < 1.0


def test_latency_is_measured_once_per_configuration_and_cached_on_disk(tmp_path):
    calls = []

    def measure(specs):
        calls.append(specs)
        return 2.0 if specs is None else 1.0 + sum(s is None for s in specs.values())

    cache = tmp_path / "lat.json"
    lat = LatencyModel(LAYERS, measure=measure, cache_path=cache)
    w8 = {r.path: _spec(8) for r in LAYERS}
    assert lat(w8) == 1.0 and lat(dict(w8)) == 1.0 and len(calls) == 1
    assert lat(dict(w8, fc=None)) == 2.0 and len(calls) == 2
    assert lat.reference() == 2.0 and lat.reference() == 2.0 and len(calls) == 3
    again = LatencyModel(LAYERS, measure=measure, cache_path=cache)
    assert again(w8) == 1.0 and len(calls) == 3 and again.measurements == 0
    assert config_key(w8) != config_key(dict(w8, fc=None))
    assert LatencyModel(LAYERS).reference() == 1.0 and not LatencyModel(LAYERS).measured


def test_pruner_stops_a_trial_a_cheaper_finished_one_beat_at_the_same_step():
    cheap = Finished(retrained=0.1, latency=1.0, history={0: 50.0, 20: 70.0})
    pruner = ParetoPruner(margin=1.0)
    assert pruner.should_prune(20, 65.0, 0.3, 1.0, [cheap])
    assert not pruner.should_prune(20, 69.5, 0.3, 1.0, [cheap])  # within the margin
    assert not pruner.should_prune(20, 65.0, 0.05, 1.0, [cheap])  # the finished one retrains more
    assert not pruner.should_prune(0, 40.0, 0.3, 1.0, [cheap])  # never before training
    assert not pruner.should_prune(10, 40.0, 0.3, 1.0, [cheap])  # no value at that step
    assert not ParetoPruner(enabled=False).should_prune(20, 0.0, 1.0, 1.0, [cheap])
    assert not ParetoPruner(margin=1.0, warmup_steps=30).should_prune(20, 65.0, 0.3, 1.0, [cheap])  # too early


def test_prior_warm_starts_spend_the_budget_on_sensitive_groups_first():
    space = SearchSpace(name="t")
    groups = space.groups(LAYERS)
    scores = {"stem": 0.1, "b0.d": 2.0, "b0.e": 0.1, "b1.d": 1.0, "fc": 0.5}
    sens = group_sensitivity(groups, scores)
    assert sens["b0"] == pytest.approx(2.1) and sens["b1"] == pytest.approx(1.0)
    starts = warm_starts(space, groups, sens, TOTAL, (0.05, 0.3, 0.6))
    assert all(v == "freeze" for v in starts[0].values())  # PTQ first
    qat = [sorted(k for k, v in s.items() if v == "qat") for s in starts]
    assert qat[1] == ["fc.action"]  # 50 params: the best sensitivity per parameter within 5%
    assert qat[2] == ["fc.action", "stem.action"]  # b0 (420) does not fit in 30%: the next that fits does
    assert qat[3] == ["b0.action", "fc.action", "stem.action"]
    for s, budget in zip(starts[1:], (0.05, 0.3, 0.6)):
        spent = sum(g.params for g in groups if s[f"{g.name}.action"] == "qat")
        assert spent <= budget * TOTAL
    searched, fixed = narrow(groups, sens, 2)
    assert [g.name for g in searched] == ["b0", "b1"] and fixed == {"stem": "freeze", "fc": "freeze"}


def test_cost_model_charges_smoothing_only_where_it_cannot_fold():
    from dataclasses import replace

    from autoselect.models import build_layer_graph
    from tests.helpers import tiny_net

    layers = list(build_layer_graph(tiny_net()))
    for per_channel, extra in ((True, False), (False, True)):
        plain = {r.path: QuantSpec(weight=TensorQuant(bits=8, per_channel=per_channel),
                                   act=TensorQuant(bits=8, symmetric=False)) for r in layers}
        smoothed = {p: replace(s, smooth=(p.endswith("conv.3"))) for p, s in plain.items()}  # the depthwise layers
        if extra:  # per-tensor producers: the scale stays a float Mul, which costs a pass over the input
            assert cost_model(layers, smoothed) > cost_model(layers, plain)
        else:  # per-channel producers take the scale: the same integer graph, the same cost
            assert cost_model(layers, smoothed) == pytest.approx(cost_model(layers, plain))


def test_prior_smooths_the_groups_whose_weight_channels_spread_when_weights_are_per_tensor():
    from autoselect.search.prior import smooth_candidates

    space = SearchSpace(name="t", smooth=(False, True))
    groups = space.groups(LAYERS)
    spread = {"b0.d": 9.0, "b0.e": 1.5, "b1.d": 1.2, "stem": 3.0}
    assert smooth_candidates(groups, spread, per_channel_weights=True) == set()
    smooth = smooth_candidates(groups, spread, per_channel_weights=False)
    assert smooth == {"b0", "stem"}
    sens = group_sensitivity(groups, {"b0.d": 2.0, "b1.d": 1.0, "fc": 0.5})
    starts = warm_starts(space, groups, sens, TOTAL, (0.3,), smooth)
    assert not any(v is True for v in starts[0].values())  # plain PTQ first
    assert all(v == "freeze" for k, v in starts[1].items() if k.endswith(".action"))  # then smoothed PTQ
    for s in starts[1:]:
        assert {k for k, v in s.items() if v is True} == {"b0.smooth", "stem.smooth"}
    assert len(warm_starts(SearchSpace(name="t"), groups, sens, TOTAL, (0.3,), smooth)) == 2  # not offered: as before
