"""Post-training methods (autoselect.quant.methods): each improves on plain rounding, lands in the generic layer
state the simulation and the export apply, and leaves the float reference alone."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from autoselect.quant import calibrate, get_target, quantize_model
from autoselect.quant.methods import ROUNDINGS, run_methods
from autoselect.quant.methods._capture import layer_inputs
from autoselect.quant.methods.adaround import adaround_layer
from autoselect.quant.simulate import quant_layers, set_mode


def _calibrated(model, spec, batches, **kw):
    q = quantize_model(model, spec, **kw)
    calibrate(q, batches)
    return q


def _err(q, model, x):
    with torch.no_grad():
        return float((q(x) - model(x)).pow(2).mean())


def test_bias_correction_removes_most_of_the_output_error_and_the_fp32_mode_is_untouched(tiny, batches):
    x = torch.cat([b[0] for b in batches])
    spec = get_target("generic").spec(weight_bits=3)
    plain = _calibrated(tiny, spec, batches)
    corrected = _calibrated(tiny, replace(spec, bias_correction=True), batches)
    assert "bias_correction" in corrected.autoselect_method_seconds
    assert all(ql.bias_delta is not None for ql in quant_layers(corrected).values())
    assert _err(corrected, tiny, x) < 0.5 * _err(plain, tiny, x)
    set_mode(corrected, "fp32")  # the correction is a quantized-mode term only
    with torch.no_grad():
        torch.testing.assert_close(corrected(x), quantize_model(tiny, spec)(x))


def test_adaround_puts_weights_on_the_grid_and_reconstructs_better_than_nearest(tiny, batches):
    assert "adaround" in ROUNDINGS
    q = quantize_model(tiny, get_target("generic").spec(weight_bits=3))
    calibrate(q, batches)
    path = "blocks.1.conv.0"
    ql = quant_layers(q)[path]
    reference = quantize_model(tiny, get_target("generic").spec(weight_bits=3))
    set_mode(reference, "fp32")
    x_q = layer_inputs(q, path, batches, torch.device("cpu"))
    x_fp = layer_inputs(reference, path, batches, torch.device("cpu"))
    ratio = adaround_layer(ql, x_q, x_fp, quant_layers(reference)[path], iterations=200)
    assert ratio < 1.0  # the learned rounding reconstructs the float output better than rounding to nearest
    s, _ = ql.weight_qparams()
    ints = ql.layer.weight / s.view(-1, 1, 1, 1)
    torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)
    assert ql.weight_scale_fixed is not None  # the export reads these qparams
    assert run_methods(q, batches) == {}  # nothing asked for by the specs: nothing runs


def test_brecq_reconstructs_a_block_better_than_nearest_and_leaves_weights_and_ranges_on_grids(tiny, batches):
    """Block reconstruction (BRECQ + QDrop): a whole block's rounding is learned jointly; below 8-bit activations
    the layers' input ranges are learned too and written back as calibrated ranges."""
    from autoselect.quant.methods import block_reconstruction as br

    assert "brecq" in ROUNDINGS
    spec = get_target("generic").spec(weight_bits=3, act_bits=4)
    block = "blocks.1"
    ratios = []
    for seed in (0, 1, 2):  # the learned result depends on the draws: judged on the median of three seeds
        q, reference = _calibrated(copy.deepcopy(tiny), spec, batches), quantize_model(tiny, spec)
        set_mode(reference, "fp32")
        paths = [p for p in quant_layers(q) if p.startswith(block + ".")]
        assert len(paths) == 3
        before = {p: quant_layers(q)[p].act_scale.clone() for p in paths}
        x_q = layer_inputs(q, block, batches, torch.device("cpu"))
        x_fp = layer_inputs(reference, block, batches, torch.device("cpu"))
        with torch.no_grad():
            target = reference.get_submodule(block)(x_fp)
        ratios.append(br.reconstruct_block(q.get_submodule(block), [quant_layers(q)[p] for p in paths], x_q, x_fp,
                                           target, iterations=500, batch=8, seed=seed))
    # jointly learned rounding (and ranges) beat rounding to nearest on the block's output (measured: 0.92 / 0.81 /
    # 0.76 at seeds 0-2 on this tiny net, 0.78-0.79 at seeds 3-5)
    assert sorted(ratios)[1] < 0.9 and max(ratios) < 1.0
    for p in paths:
        ql = quant_layers(q)[p]
        assert ql.weight_learner is None and ql.act_learner is None  # the relaxation is gone
        s, _ = ql.weight_qparams()
        ints = ql.layer.weight / s.view(-1, *[1] * (ql.layer.weight.dim() - 1))
        torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)
    assert any(not torch.equal(before[p], quant_layers(q)[p].act_scale) for p in paths)  # learned A4 ranges kept
    with torch.no_grad():  # what the model computes now is what was measured
        err = float((q.get_submodule(block)(x_q) - target).pow(2).sum(1).sum())
    assert err > 0


def test_brecq_does_not_depend_on_the_global_random_state(tiny, batches):
    """QDrop's choice of elements kept in float comes from the reconstruction's own seeded generator: calibrating
    the same model after different global seeds gives the same weights and ranges (a search that trains with another
    seed, or calibrates in another process, starts from the same PTQ)."""
    from autoselect.quant.methods import block_reconstruction as br

    spec = replace(get_target("generic").spec(weight_bits=3, act_bits=4), rounding="brecq")
    old = br.ITERATIONS
    br.ITERATIONS = 40
    try:
        runs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            runs.append(_calibrated(tiny, spec, batches).state_dict())
    finally:
        br.ITERATIONS = old
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=0, atol=0, msg=k)


def test_brecq_runs_as_a_plan_rounding_through_calibrate(tiny, batches):
    x = torch.cat([b[0] for b in batches])
    spec = get_target("generic").spec(weight_bits=3)
    from autoselect.quant.methods import block_reconstruction as br

    old = br.ITERATIONS
    br.ITERATIONS = 60
    try:
        q = _calibrated(tiny, replace(spec, rounding="brecq"), batches)
    finally:
        br.ITERATIONS = old
    assert "brecq" in q.autoselect_method_seconds
    assert all(ql.weight_scale_fixed is not None for ql in quant_layers(q).values())
    assert _err(q, tiny, x) < _err(_calibrated(tiny, spec, batches), tiny, x)


def test_adaround_sampled_patches_give_the_layers_own_reconstruction_error(tiny, batches):
    """With every output position kept, the patch form of the problem is the layer's convolution exactly."""
    from autoselect.quant.methods import adaround as ada

    q = quantize_model(tiny, get_target("generic").spec(weight_bits=3))
    calibrate(q, batches)
    gen = torch.Generator().manual_seed(0)
    for path in ("stem.0", "blocks.1.conv.0", "blocks.1.conv.3", "head"):  # conv 3x3 stride 2, 1x1, depthwise, fc
        ql = quant_layers(q)[path]
        x = ql.quantize_input(layer_inputs(q, path, batches, torch.device("cpu")))
        with torch.no_grad():
            target = torch.relu(ql.layer(x)) + 0.1
        problem = ada._Problem(ql, x, target, ada._patch_kind(ql.layer), gen)
        assert problem.kind is not None and problem.rows == target.numel() // target.shape[1]
        w = ql.quantized_weight()
        with torch.no_grad():
            full = float((problem.act(ql._run(x, w)) - target).pow(2).sum())
        assert abs(problem.error(w) - full) <= 1e-4 * full, path


def _skewed(tiny):
    """``tiny`` with the first block's expand rows scaled by 1/k and the depthwise rows by k (so the next layer's
    input is unchanged): the same function, with channel ranges no per-tensor scale fits."""
    import copy

    model = copy.deepcopy(tiny)
    conv = model.blocks[0].conv
    k = torch.logspace(-1.5, 1.5, conv[0].out_channels)
    with torch.no_grad():
        conv[1].weight.mul_(k)  # BN scale of the expand conv: its output channel c times k_c ...
        conv[1].bias.mul_(k)
        conv[3].weight.div_(k.view(-1, 1, 1, 1))  # ... undone by the depthwise conv that reads it
    return model


def test_equalization_keeps_the_float_function_and_fixes_per_tensor_ranges(tiny, batches):
    x = torch.cat([b[0] for b in batches])
    model = _skewed(tiny)
    model.blocks[0].conv[2] = torch.nn.ReLU()  # a ReLU between the pair: CLE is exact
    spec = get_target("generic-pt").spec(weight_bits=4)
    plain = _calibrated(model, spec, batches)
    eq = _calibrated(model, replace(spec, equalize=True), batches)
    assert "equalize" in eq.autoselect_method_seconds
    assert "blocks.0.conv.0 -> blocks.0.conv.3" in eq.autoselect_equalized
    first, second = quant_layers(eq)["blocks.0.conv.0"].layer, quant_layers(eq)["blocks.0.conv.3"].layer
    torch.testing.assert_close(first.weight.abs().flatten(1).amax(1), second.weight.abs().flatten(1).amax(1),
                               rtol=1e-3, atol=1e-6)
    set_mode(eq, "fp32")
    with torch.no_grad():
        torch.testing.assert_close(eq(x), model(x), rtol=1e-4, atol=1e-4)
    set_mode(eq, "quant")

    def block_err(q) -> float:  # the equalized pair's block (on random weights CLE elsewhere may help or not)
        with torch.no_grad():
            return float((q.blocks[0](q.stem(x)) - model.blocks[0](model.stem(x))).pow(2).mean())

    assert block_err(eq) < 0.6 * block_err(plain)


def test_equalization_turns_relu6_between_a_pair_into_relu_and_leaves_smoothed_layers_alone(tiny, batches):
    eq = _calibrated(tiny, replace(get_target("generic-pt").spec(weight_bits=4), equalize=True), batches)
    assert isinstance(eq.blocks[0].conv[2], torch.nn.ReLU) and isinstance(eq.stem[2], torch.nn.ReLU6)  # stem: shortcut
    assert quant_layers(eq)["blocks.0.conv.0"].followed_by == "ReLU"  # what AdaRound then reconstructs
    both = _calibrated(tiny, replace(get_target("generic-pt").spec(weight_bits=4), equalize=True, smooth=True),
                       batches)
    assert both.autoselect_equalized == []


def test_plan_method_fields_default_to_the_best_treatment_and_are_validated(tiny):
    import pytest

    from autoselect.errors import AutoselectError
    from autoselect.models.graph import build_layer_graph
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import plan_specs

    graph = build_layer_graph(tiny, (1, 3, 32, 32))
    specs, _ = plan_specs(Plan(layers={"_default": LayerAction(weight_bits=4)}, target="generic-pt"), graph)
    assert all(s is not None and s.rounding == "adaround" and s.bias_correction and s.equalize
               and s.weight is not None and s.weight.observer == "mse" for s in specs.values())
    explicit = Plan(layers={"_default": LayerAction(weight_bits=4)}, target="generic-pt", observers={"weight": "minmax"})
    specs, _ = plan_specs(explicit, graph)  # a plan that names the observer keeps it
    assert all(s is not None and s.weight is not None and s.weight.observer == "minmax" for s in specs.values())
    specs, _ = plan_specs(Plan(layers={"_default": LayerAction(weight_bits=4)}, target="generic"), graph)
    assert all(s is not None and s.rounding == "adaround" and not s.equalize for s in specs.values())
    specs, _ = plan_specs(Plan(layers={"_default": LayerAction(weight_bits=4, act_bits=4)}, target="generic"), graph)
    assert all(s is not None and s.rounding == "brecq" for s in specs.values())  # A4: block reconstruction
    specs, _ = plan_specs(Plan(layers={"_default": LayerAction(weight_bits=5)}, target="generic"), graph)
    assert all(s is not None and s.rounding == "nearest" and s.weight is not None and s.weight.observer == "mse"
               for s in specs.values())  # 5 bits: AdaRound measured no better than nearest; MSE ranges still
    specs, _ = plan_specs(Plan(layers={"_default": LayerAction()}, target="x86"), graph)  # 8-bit: nearest
    assert all(s is not None and s.rounding == "nearest" and s.bias_correction for s in specs.values())
    asked = LayerAction.from_json({"action": "freeze", "rounding": "nearest", "bias_correction": False}, "x")
    specs, _ = plan_specs(Plan(layers={"_default": asked}, target="generic-pt"), graph)
    assert all(s is not None and s.rounding == "nearest" and not s.bias_correction and s.equalize
               for s in specs.values())
    assert LayerAction.from_json(asked.to_json(), "x") == asked
    for bad in ({"rounding": 1}, {"bias_correction": "yes"}, {"equalize": 0}, {"action": "fp32", "rounding": "nearest"},
                {"smooth": True, "equalize": True}):
        with pytest.raises(AutoselectError):
            LayerAction.from_json({"action": "freeze", **bad}, "layers[x]")
    unknown = LayerAction.from_json({"action": "freeze", "rounding": "stochastic"}, "x")
    with pytest.raises(AutoselectError, match="unknown rounding 'stochastic'"):
        plan_specs(Plan(layers={"_default": unknown}, target="generic"), graph)


def test_block_inputs_match_a_full_forward_pass_for_every_layer(tiny, batches):
    from autoselect.quant.methods._capture import BlockInputs

    q = _calibrated(tiny, get_target("generic-pt").spec(weight_bits=4), batches, integer_graph=True)
    cpu = torch.device("cpu")
    inputs = BlockInputs(q, batches, cpu)
    chained = 0
    for info in q.autoselect_graph:
        before = inputs.block
        got = inputs(info.block, info.path)
        chained += before is not None and before != info.block
        torch.testing.assert_close(got, layer_inputs(q, info.path, batches, cpu), rtol=1e-5, atol=1e-5)
    assert chained >= 3  # stem -> blocks.0 -> blocks.1 -> blocks.2 -> head: the blocks were walked in order


def test_learned_roundings_are_reused_between_calibrations_of_one_model(tiny, batches, monkeypatch):
    """With a ``reuse`` dict, a layer's AdaRound rounding is learned once per (layer, spec, weight, input grid):
    calibrating the same configuration again learns nothing, one that moves one layer to another bit-width learns
    that layer only, and a reused layer has the integer weights it was learned with."""
    from autoselect.models import build_layer_graph
    from autoselect.plan import LayerAction, Plan
    from autoselect.quant.apply import calibrated_model, plan_specs
    from autoselect.quant.methods import adaround

    graph = build_layer_graph(tiny, (1, 3, 32, 32))
    learned: list[int] = []
    real = adaround.adaround_layer
    monkeypatch.setattr(adaround, "ITERATIONS", 50)
    monkeypatch.setattr(adaround, "adaround_layer", lambda ql, *a, **kw: learned.append(1) or real(ql, *a, **kw))

    def calibrated(plan, reuse):
        specs, _ = plan_specs(plan, graph)
        return calibrated_model(tiny, specs, graph, batches, target=plan.target, reuse=reuse)

    four = Plan(layers={"_default": LayerAction(weight_bits=4)}, target="generic-pt")
    reuse: dict = {}
    first = calibrated(four, reuse)
    n = len(graph.paths)
    assert len(learned) == n and len(reuse) == n
    again = calibrated(four, reuse)
    assert len(learned) == n  # nothing learned again
    for path, ql in quant_layers(first).items():
        torch.testing.assert_close(quant_layers(again)[path].quantized_weight(), ql.quantized_weight())
    one = Plan(layers={graph.paths[-1]: LayerAction(weight_bits=3), "_default": LayerAction(weight_bits=4)},
               target="generic-pt")
    calibrated(one, reuse)
    assert len(learned) == n + 1  # only the layer at 3 bits
    calibrated(four, None)
    assert len(learned) == 2 * n + 1  # without a reuse dict every layer is learned


def test_effort_scales_the_steps_of_learned_roundings(tiny, batches, monkeypatch):
    """``calibrate(effort=0.2)`` runs a fifth of AdaRound's and block reconstruction's steps (a search's trials);
    the default runs them all; a proxy budget refuses an effort outside (0, 1]."""
    import pytest

    from autoselect.errors import AutoselectError
    from autoselect.quant.methods import adaround, block_reconstruction
    from autoselect.search.objective import ProxyBudget

    seen: dict[str, list[int]] = {"adaround": [], "brecq": []}

    def record(name, real):
        def fn(*args, iterations, **kw):
            seen[name].append(iterations)
            return real(*args, iterations=2, **kw)  # keep the test fast: what matters is what was asked
        return fn

    monkeypatch.setattr(adaround, "adaround_layer", record("adaround", adaround.adaround_layer))
    monkeypatch.setattr(block_reconstruction, "reconstruct_block",
                        record("brecq", block_reconstruction.reconstruct_block))
    for rounding, act_bits in (("adaround", None), ("brecq", 4)):
        spec = replace(get_target("generic").spec(weight_bits=4, act_bits=act_bits), rounding=rounding)
        for effort, steps in ((1.0, 1000), (0.2, 200)):
            seen[rounding].clear()
            q = quantize_model(tiny, spec)
            calibrate(q, batches, effort=effort)
            assert seen[rounding] and set(seen[rounding]) == {steps}, (rounding, effort, seen[rounding])
    with pytest.raises(AutoselectError, match="rounding effort"):
        ProxyBudget(rounding_effort=0)


def _output_means(model, batches):
    sums: dict = {}
    hooks = [ql.register_forward_hook(lambda m, a, y, p=p: sums.setdefault(p, []).append(
        y.transpose(0, 1).flatten(1).mean(1) if y.dim() > 2 else y.mean(0))) for p, ql in quant_layers(model).items()]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {p: torch.stack(v).mean(0) for p, v in sums.items()}


def test_sequential_bias_correction_matches_every_layers_float_mean_including_shifts_from_earlier_layers(
        tiny, batches, monkeypatch):
    from autoselect.quant.methods import bias_correction

    spec = replace(get_target("generic").spec(weight_bits=3), bias_correction=True)
    ref = quantize_model(tiny, spec)
    calibrate(ref, batches)
    set_mode(ref, "fp32")
    target = _output_means(ref, batches)

    def worst(mode):
        monkeypatch.setattr(bias_correction, "MODE", mode)
        q = quantize_model(tiny, spec)
        calibrate(q, batches)
        got = _output_means(q, batches)
        return {p: float((got[p] - target[p]).abs().max() / target[p].abs().max()) for p in target}

    sequential, local = worst("sequential"), worst("local")
    # each layer's quantized output mean is the float model's, up to its own bias's int32 rounding (0.2% measured)
    assert max(sequential.values()) < 0.005, sequential
    # correcting each layer's own error only leaves the shift earlier layers pass on (2.6% at the head measured)
    assert local["head"] > 5 * sequential["head"], (local, sequential)
    # by default, layers below 5-bit weights are corrected sequentially, the others locally
    monkeypatch.setattr(bias_correction, "MODE", "auto")
    modes = {bits: {bias_correction.mode_for(ql) for ql in quant_layers(quantize_model(
        tiny, replace(get_target("generic").spec(weight_bits=bits), bias_correction=True))).values()}
        for bits in (4, 5, 8)}
    assert modes == {4: {"sequential"}, 5: {"local"}, 8: {"local"}}
    monkeypatch.setattr(bias_correction, "MODE", "nope")
    with pytest.raises(ValueError, match="bias correction mode"):
        calibrate(quantize_model(tiny, spec), batches)
