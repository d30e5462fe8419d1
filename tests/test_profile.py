from __future__ import annotations

import pytest
import torch

from autoselect.errors import AutoselectError
from autoselect.models import create_model
from autoselect.profiling import SensitivityReport, profile
from autoselect.quant import QuantSpec, TensorQuant, w8a8
from tests.helpers import random_batches


def test_report_columns_and_ranking(tiny, batches):
    r = profile(tiny, batches, spec=w8a8())
    assert len(r.layers) == 11 and len(r.blocks) == 5
    for col in ("drift", "qmse", "local_drift", "act_range", "act_avg_precision", "w_range", "w_range_unfolded",
                "w_channel_spread", "bn_fold_range_ratio", "role", "block", "params", "macs"):
        assert col in r.layers.columns, col
    assert list(r.layers["rank"]) == list(range(1, 12))
    assert r.layers["local_drift"].is_monotonic_decreasing
    assert (r.layers["drift"] > 0).all() and (r.layers["drift"] < 1).all()
    for key in ("qmse", "qce", "qkl", "agreement", "top1_fp32", "top1_quant"):
        assert key in r.output
    assert r.output["qkl"] >= 0


def test_more_bits_less_drift(tiny, batches):
    low = profile(tiny, batches, spec=w8a8(weight_bits=4, act_bits=4))
    high = profile(tiny, batches, spec=w8a8(weight_bits=8, act_bits=8))
    exact = profile(tiny, batches, spec=w8a8(weight_bits=16, act_bits=16))
    assert low.output["qmse"] > high.output["qmse"] > exact.output["qmse"]
    assert exact.layers["drift"].max() < 1e-3
    lo = low.blocks.set_index("block")["drift"]
    hi = high.blocks.set_index("block")["drift"]
    assert (lo > hi).all()


def test_fp32_layers_have_no_local_drift(tiny, batches):
    spec = {"_default": w8a8(), "re:blocks\\.1\\..*": None}
    r = profile(tiny, batches, spec=spec).layers.set_index("path")
    assert (r.loc[r.index.str.startswith("blocks.1."), "local_drift"] == 0).all()
    assert (r.loc[~r.index.str.startswith("blocks.1."), "local_drift"] > 0).all()


def test_weight_only_quantization_shows_in_local_drift(tiny, batches):
    spec = QuantSpec(weight=TensorQuant(bits=3, per_channel=False), act=None)
    r = profile(tiny, batches, spec=spec)
    assert (r.layers["local_drift"] > 0).all()
    assert "act_range" not in r.layers.columns or r.layers["act_range"].isna().all()


def test_cached_and_recomputed_reference_agree(tiny, batches):
    cached = profile(tiny, batches, spec=w8a8())
    recomputed = profile(tiny, batches, spec=w8a8(), cache_mb=0)
    assert cached.timings["reference_cached"] == 1.0 and recomputed.timings["reference_cached"] == 0.0
    for col in ("drift", "qmse", "local_drift"):
        torch.testing.assert_close(torch.tensor(cached.layers[col].values), torch.tensor(recomputed.layers[col].values))


def test_isolated_sensitivity(tiny, batches):
    r = profile(tiny, batches, spec=w8a8(weight_bits=3, act_bits=4), isolated=True, isolated_images=8,
                rank_by="iso_qkl")
    assert r.timings["isolated_images"] == 8
    assert r.layers["iso_qkl"].is_monotonic_decreasing
    assert (r.layers["iso_qkl"] >= 0).all() and r.layers["iso_qkl"].max() > 0
    assert "iso_top1_drop" in r.layers.columns


def test_unknown_rank_column_is_refused_before_work(tiny, batches):
    with pytest.raises(AutoselectError, match="iso_qkl.*--isolated"):
        profile(tiny, batches, rank_by="iso_qkl")


def test_save_and_load_roundtrip(tiny, batches, tmp_path):
    r = profile(tiny, batches, spec=w8a8(), model_name="tiny")
    written = r.save(tmp_path)
    for key in ("layers", "blocks", "summary", "drift_plot", "ranges_plot"):
        assert written[key].exists() and written[key].stat().st_size > 0
    assert written["drift_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = SensitivityReport.load(tmp_path)
    assert list(back.layers["path"]) == list(r.layers["path"])
    assert back.output == pytest.approx(r.output)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_missing_and_wrong_version(tmp_path, tiny, batches):
    with pytest.raises(AutoselectError, match="summary.json is missing"):
        SensitivityReport.load(tmp_path)
    profile(tiny, batches).save(tmp_path, plots=False)
    summary = tmp_path / "summary.json"
    summary.write_text(summary.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(AutoselectError, match="version 99"):
        SensitivityReport.load(tmp_path)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_b0"])
def test_profiler_works_unchanged_on_torchvision_families(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    data = random_batches(n_batches=2, batch=4)
    with torch.no_grad():  # an untrained net's eval-mode activations vanish; fit BN statistics to the data first
        model.train()
        for _ in range(3):
            for x, _ in data:
                model(x)
    r = profile(model.eval(), data, spec=w8a8())
    assert len(r.layers) == len(set(r.layers["path"]))
    assert r.layers["drift"].notna().all() and (r.layers["local_drift"] > 0).all()
    assert r.blocks["drift"].notna().all()
    assert set(r.layers["role"]) >= {"stem", "classifier"}


def test_profile_applies_the_specs_post_training_methods_and_times_them(tiny, batches):
    """Bias correction and AdaRound, asked for by the spec, shape what the quantized pass measures; their seconds
    are in the timings. A 3-bit weight spec leaves an error the methods visibly reduce."""
    from dataclasses import replace

    import autoselect.quant.methods.adaround as adaround

    plain_spec = w8a8(weight_bits=3, act_bits=8)
    plain = profile(tiny, batches, spec=plain_spec)
    assert not any(k.startswith("method_") for k in plain.timings)
    old = adaround.ITERATIONS
    adaround.ITERATIONS = 100
    try:
        treated = profile(tiny, batches, spec=replace(plain_spec, rounding="adaround", bias_correction=True))
    finally:
        adaround.ITERATIONS = old
    assert treated.timings["method_adaround_s"] > 0 and treated.timings["method_bias_correction_s"] > 0
    assert treated.output["qmse"] < 0.8 * plain.output["qmse"], (treated.output, plain.output)


def test_large_inputs_are_profiled_in_pieces_that_fit_memory(tiny, batches, monkeypatch):
    import autoselect.profiling.profiler as prof

    whole = profile(tiny, batches, spec=w8a8(), local_fraction=1.0)
    monkeypatch.setattr(prof, "TAP_BATCH_MB", 0)  # one image per piece
    seen: list[int] = []
    hook = tiny.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        pieces = profile(tiny, batches, spec=w8a8(), local_fraction=1.0)
    finally:
        hook.remove()
    assert seen and max(seen) == 1 and len(seen) >= 24  # 3 batches of 8, one image at a time
    a, b = whole.layers.set_index("path"), pieces.layers.set_index("path")
    for col in ("drift", "qmse", "local_drift", "act_range"):  # min-max ranges: the same, whatever the pieces
        assert b[col].to_numpy() == pytest.approx(a.loc[b.index, col].to_numpy(), rel=1e-3, abs=1e-9), col
