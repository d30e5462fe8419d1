from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoselect._io import atomic_path
from autoselect.cli import main
from autoselect.errors import AutoselectError

TINY = ["--model", "tests.helpers:tiny_net", "--quiet"]


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    assert "mobilenet_v2" in capsys.readouterr().out.split()


def test_python_dash_m_runs_the_cli_and_a_closed_pipe_is_not_a_traceback():
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "autoselect", "models"]
    ok = subprocess.run(cmd, cwd=root, capture_output=True, timeout=60)
    assert ok.returncode == 0 and b"mobilenet_v2" in ok.stdout.split()
    r, w = os.pipe()  # like `autoselect models | head -1`: the reader is gone before the first write
    os.close(r)
    try:
        closed = subprocess.run(cmd, cwd=root, stdout=w, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(w)
    assert closed.returncode == 0 and closed.stderr == b""


def test_graph_prints_roles(capsys, tmp_path):
    assert main(["graph", *TINY, "--csv", str(tmp_path / "g.csv")]) == 0
    out = capsys.readouterr().out
    assert "depthwise" in out and "11 quantizable layers in 5 blocks" in out
    assert (tmp_path / "g.csv").read_text().startswith("path,role,block")


def test_baseline_then_ptq_then_profile(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "tiny.pt"
    assert main(["baseline", *TINY, "--data", "digits", "--epochs", "1", "--train-images", "128",
                 "--out", str(ckpt)]) == 0
    saved = torch.load(ckpt, weights_only=True)
    assert saved["model"] == "tests.helpers:tiny_net" and saved["num_classes"] == 10 and "test_acc" in saved
    assert main(["ptq", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--eval-images", "64",
                 "--json", str(tmp_path / "ptq.json")]) == 0
    out = capsys.readouterr().out
    assert "per-tensor" in out and "per-channel" in out and "FP32" in out
    # next to plain PTQ, what a plan's "freeze" gets (8-bit: equalization for per-tensor, bias correction), timed
    row = next(line for line in out.splitlines() if "per-tensor+methods" in line)
    assert "equalized" in row and "bias-corrected" in row and "equalize " in row and "bias_correction " in row
    saved_ptq = json.loads((tmp_path / "ptq.json").read_text())
    assert set(saved_ptq["method_seconds"]["per_channel+methods"]) == {"bias_correction"}
    # label-free agreement with FP32 next to each top-1
    assert set(saved_ptq["agreement_with_fp32"]) == set(saved_ptq["seconds"])
    assert all(0 < a <= 100 for a in saved_ptq["agreement_with_fp32"].values())
    assert row.count("same as FP32") == 1
    # the spread over calibration draws, on the same test images
    assert main(["ptq", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--eval-images", "64", "--plain-only",
                 "--calib-seeds", "3", "--json", str(tmp_path / "spread.json")]) == 0
    spread_out = capsys.readouterr().out
    assert "over 3 calibration draws (seeds 0-2)" in spread_out and "±" in spread_out
    spread = json.loads((tmp_path / "spread.json").read_text())
    assert spread["calibration_seeds"] == [0, 1, 2]
    assert all(len(v) == 3 for v in spread["top1_by_calibration_seed"].values())
    assert spread["top1_by_calibration_seed"]["per_tensor"][0] == spread["top1"]["per_tensor"]
    # a plan scored with nothing trained: its own bit-widths, and the same top-1 as `train` reports as its start
    plan = tmp_path / "mixed.json"
    plan.write_text(json.dumps({"version": 1, "target": "generic-pt", "model": {"name": "tests.helpers:tiny_net"},
                                "layers": {"_default": {"action": "freeze", "weight_bits": 4},
                                           "head": {"action": "qat", "weight_bits": 8}}}))
    assert main(["ptq", "--quiet", "--weights", str(ckpt), "--plan", str(plan), "--calib-images", "64",
                 "--eval-images", "64", "--json", str(tmp_path / "plan_ptq.json")]) == 0
    scored = json.loads((tmp_path / "plan_ptq.json").read_text())
    assert "nothing trained" in capsys.readouterr().out and scored["target"] == "generic-pt"
    assert main(["train", "--quiet", "--weights", str(ckpt), "--plan", str(plan), "--calib-images", "64",
                 "--eval-images", "64", "--steps", "1", "--out", str(tmp_path / "t")]) == 0
    started = json.loads((tmp_path / "t" / "result.json").read_text())["ptq_top1"]
    assert scored["top1"] == pytest.approx(started)
    # a plan for "x86" is scored, and recorded, as the x86 target of this CPU
    x86 = tmp_path / "x86.json"
    x86.write_text(json.dumps({"version": 1, "target": "x86", "model": {"name": "tests.helpers:tiny_net"},
                               "layers": {"_default": {"action": "freeze"}}}))
    capsys.readouterr()
    assert main(["ptq", "--quiet", "--weights", str(ckpt), "--plan", str(x86), "--calib-images", "32",
                 "--eval-images", "32", "--json", str(tmp_path / "x86_ptq.json")]) == 0
    from autoselect.quant.targets import detect_x86

    here, why = detect_x86()
    assert json.loads((tmp_path / "x86_ptq.json").read_text())["target"] == here
    assert f"target x86 -> {here} ({why})" in capsys.readouterr().err
    assert main(["ptq", "--quiet", "--weights", str(ckpt), "--plan", str(plan), "--weight-bits", "5"]) == 2
    assert "--weight-bits does not apply with --plan" in capsys.readouterr().err
    frozen = tmp_path / "frozen.json"  # nothing to train: refused before any calibration is paid
    frozen.write_text(json.dumps({"version": 1, "target": "generic-pt", "model": {"name": "tests.helpers:tiny_net"},
                                  "layers": {"_default": {"action": "freeze", "weight_bits": 4}}}))
    import autoselect.quant.apply as apply_module

    monkeypatch.setattr(apply_module, "apply_plan", lambda *a, **kw: pytest.fail("calibrated a plan with no qat layer"))
    assert main(["train", "--quiet", "--weights", str(ckpt), "--plan", str(frozen), "--out", str(tmp_path / "f")]) == 0
    said = capsys.readouterr().out.strip()
    assert "retrains nothing" in said and "autoselect export --plan" in said and len(said.splitlines()) == 1
    assert not (tmp_path / "f").exists()
    monkeypatch.undo()
    out_dir = tmp_path / "prof"
    assert main(["profile", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--out", str(out_dir),
                 "--isolated", "--isolated-images", "32", "--rank-by", "iso_qkl", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 layers by iso_qkl" in out
    for name in ("layers.csv", "blocks.csv", "summary.json", "drift_per_block.png", "ranges_per_layer.png"):
        assert (out_dir / name).stat().st_size > 0
    assert "post-training methods" not in out
    # under what a "freeze" plan gets, with each method's seconds (8-bit per-channel: bias correction only)
    assert main(["profile", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--out", str(tmp_path / "pm"),
                 "--methods"]) == 0
    out = capsys.readouterr().out
    assert "bias-corrected" in out and re.search(r"post-training methods: bias_correction \d+\.\d s", out), out
    assert "method_bias_correction_s" in json.loads((tmp_path / "pm" / "summary.json").read_text())["timings"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ptq", "--model", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
        (["ptq", *TINY, "--weights", "/no/such.pt"], "weights file not found"),
        (["ptq", *TINY, "--data", "/no/such/dir"], "data directory not found"),
        (["profile", *TINY, "--num-classes", "4"], "has 10 classes but model tests.helpers:tiny_net outputs 4"),
        (["profile", *TINY, "--target", "gpu"], "unknown target 'gpu'"),
        (["profile", *TINY, "--rank-by", "iso_qkl"], "need isolated"),
        (["ptq", *TINY, "--calib-images", "0"], "must be a positive integer, got 0"),
        (["ptq", *TINY, "--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["train", "--plan", "seed001_depthwise_1x1", "--steps", "-3"], "--steps: must be a positive integer"),
        (["search", *TINY, "--profile-rounding-effort", "0"], "--profile-rounding-effort must be in (0, 1], got 0"),
        (["search", "--backend", "ray", "--address", "ray://127.0.0.1:1", "--out", "/nonexistent/never-written"],
         "cannot reach the Ray cluster at 127.0.0.1:1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("autoselect: error:")]) == 1
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)


def _bad_files(tmp: Path) -> dict[str, Path]:
    """The malformed inputs a new user fed to train/export/ptq that once ended in a traceback."""
    from PIL import Image

    files = {"binary_plan": tmp / "plan.json", "empty_weights": tmp / "empty.pt", "data": tmp / "data",
             "existing_file": tmp / "taken", "tiny_plan": tmp / "tiny_plan.json"}
    files["tiny_plan"].write_text(json.dumps({"version": 1, "layers": {"role:depthwise": "qat", "_default": "freeze"}}))
    files["binary_plan"].write_bytes(b"\x80\xff\x00plan")
    files["empty_weights"].write_bytes(b"")
    files["existing_file"].write_text("not a folder")
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = files["data"] / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(d / f"{i}.jpg")
    (files["data"] / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return files


@pytest.mark.parametrize("argv, message", [
    (["train", "--plan", "{binary_plan}"], "is not UTF-8 text"),
    (["export", "--plan", "{binary_plan}"], "is not UTF-8 text"),
    (["ptq", *TINY, "--weights", "{empty_weights}"], "cannot read weights file"),
    (["train", "--plan", "seed001_depthwise_1x1", "--weights", "{empty_weights}"], "cannot read weights file"),
    (["ptq", *TINY, "--data", "{data}"], "cannot decode image"),
    (["train", "--plan", "{tiny_plan}", *TINY, "--out", "{existing_file}"], "is an existing file"),
    (["export", "--plan", "{tiny_plan}", *TINY, "--out", "{existing_file}"], "is an existing file"),
    (["profile", *TINY, "--out", "{existing_file}"], "is an existing file"),
    (["search", *TINY, "--out", "{existing_file}"], "is an existing file"),
    (["baseline", *TINY, "--out", "{data}"], "is an existing folder"),
    (["ptq", *TINY, "--json", "{existing_file}/x.json"], "taken is an existing file, not a folder"),
])
def test_malformed_files_get_one_line_before_any_work(tmp_path, capsys, argv, message):
    import time

    files = _bad_files(tmp_path)
    argv = [a.format(**files) for a in argv]
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoselect: error:") and message in err[0], err
    assert time.perf_counter() - t0 < 20  # refused up front, not after training or exporting
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values())  # nothing new


def test_a_failed_export_leaves_no_half_made_folder(tmp_path, capsys, monkeypatch):
    import autoselect.export.report as report

    def broken(*args, **kwargs):
        raise AutoselectError("ONNX export failed: simulated")

    monkeypatch.setattr(report, "export", broken)
    out = tmp_path / "exp"
    plan = _bad_files(tmp_path)["tiny_plan"]
    assert main(["export", "--plan", str(plan), *TINY, "--target", "x86", "--calib-images", "32",
                 "--eval-images", "32", "--out", str(out)]) == 2
    assert "simulated" in capsys.readouterr().err
    assert not out.exists()


def test_bad_weights_shape_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, bad)
    assert main(["ptq", *TINY, "--weights", str(bad), "--num-classes", "10"]) == 2
    assert "do not fit model" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["profile", "--batch-size", "x"]) == 2


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and (target.stat().st_mode & 0o777) != 0o600


def test_plans_lists_the_seed_plans(capsys):
    assert main(["plans"]) == 0
    assert "seed001_depthwise_1x1_asym" in capsys.readouterr().out


def test_train_runs_a_plan_and_resumes(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "model": {"name": "tests.helpers:tiny_net"}, '
                    '"layers": {"role:depthwise": "qat_asym", "_default": "freeze"}}')
    out = tmp_path / "run"
    base = ["train", "--plan", str(plan), "--quiet", "--train-images", "64", "--eval-images", "32",
            "--calib-images", "32", "--batch-size", "16", "--out", str(out)]
    assert main([*base, "--model", "tests.helpers:tiny_net", "--steps", "6", "--checkpoint-every", "3"]) == 0
    text = capsys.readouterr().out
    assert "% of parameters retrained, 6 steps" in text and (out / "qat.pt").is_file()
    result = (out / "result.json").read_text()
    assert '"int8_top1_simulated"' in result and '"resumed_from": 0' in result
    # the model name comes from the plan when --model is left out
    assert main([*base, "--steps", "6", "--resume"]) == 0
    assert '"resumed_from": 6' in (out / "result.json").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--plan", "/no/plan.json"], "plan file not found"),
        (["train", "--plan", "seed001_full_qat", "--model", "resnet18"], "is for model 'mobilenet_v2', not 'resnet18'"),
        (["train", "--plan", "seed001_full_qat", "--resume", "--out", "/nonexistent/x"], "nothing to resume"),
    ],
)
def test_train_bad_input(argv, message, capsys):
    assert main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_export_for_x86(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "target": "x86", "model": {"name": "tests.helpers:tiny_net"}, '
                    '"layers": {"role:depthwise": "qat_asym", "_default": "freeze"}}')
    common = ["--plan", str(plan), "--quiet", "--calib-images", "32", "--eval-images", "32"]
    run = tmp_path / "run"
    assert main(["train", *common, "--train-images", "64", "--batch-size", "16", "--steps", "3",
                 "--out", str(run)]) == 0
    out = tmp_path / "export"
    assert main(["export", *common, "--checkpoint", str(run / "qat.pt"), "--latency-runs", "3",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "onnxruntime INT8" in captured.out and (out / "model_int8.onnx").is_file()
    assert "WARNING" not in captured.err and "pre-processing" not in captured.err  # --quiet: no onnxruntime logs
    summary = json.loads((out / "export.json").read_text())
    agree = summary["agreement"]  # per image, label-free: a top-1 gap can never exceed the disagreement
    assert set(agree) == {"int8_vs_simulated", "int8_vs_simulated_float32", "int8_vs_fp32", "simulated_vs_fp32",
                          "simulated_float32_vs_fp32"} and summary["agreement_images"] == 32
    # the simulation in the kernels' integer arithmetic predicts what the export predicts, image by image
    assert agree["int8_vs_simulated"] == 100.0 and summary["simulated_integer_top1"] == summary["int8_top1"]
    assert abs(summary["simulated_top1"] - summary["int8_top1"]) <= 100.0 - agree["int8_vs_simulated_float32"] + 1e-9
    assert "same prediction as the simulation on" in captured.out
    assert all(("warning: " + w) in captured.err for w in summary["warnings"])
    lat = summary["latency_ms_by_threads"]
    assert set(lat) == {"fp32", "int8"} and "1" in lat["fp32"] and "1" in lat["int8"]
    for name in ("fp32", "int8"):  # the reported latency is the model's fastest thread count
        assert summary[f"{name}_latency_ms"] == min(lat[name].values())
        assert lat[name][str(summary["latency_threads"][name])] == summary[f"{name}_latency_ms"]
    assert main(["export", *common, "--target", "qnnpack", "--checkpoint", str(run / "qat.pt"),
                 "--out", str(out)]) == 2
    assert re.search(r"trained for target 'x86-(vnni|avx2)', not 'qnnpack'", capsys.readouterr().err)


def test_explicit_model_that_the_plan_was_not_made_for_is_refused(tmp_path, capsys):
    # --model mobilenet_v2 given explicitly is not "left at its default": a ResNet plan must refuse it
    plan = tmp_path / "resnet_plan.json"
    plan.write_text('{"version": 1, "model": {"name": "resnet18"}, "layers": {"_default": "qat_asym"}}')
    assert main(["train", "--plan", str(plan), "--model", "mobilenet_v2", "--quiet"]) == 2
    assert "is for model 'resnet18', not 'mobilenet_v2'" in capsys.readouterr().err


def test_a_model_file_of_the_users_works_without_pythonpath(tmp_path):
    """`--model mynet.py:build` (a path) and `--model mynet:build` beside mynet.py, through the installed
    `autoselect` command (which, unlike `python -m`, does not put the current folder on sys.path)."""
    (tmp_path / "my_user_net.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, num_classes))\n")
    (tmp_path / "broken_net.py").write_text("raise RuntimeError('no GPU here')\n")
    exe = Path(sys.executable).with_name("autoselect")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from autoselect.cli import run; run()"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for model in ("my_user_net:build", "./my_user_net.py:build", str(tmp_path / "my_user_net.py") + ":build"):
        r = subprocess.run([*cmd, "graph", "--model", model], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "2 quantizable layers" in r.stdout, (model, r.stderr[-500:])
    r = subprocess.run([*cmd, "graph", "--model", "broken_net.py:build"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "autoselect: error: model 'broken_net.py:build': running broken_net.py failed: RuntimeError: no GPU here"]


def test_a_model_with_more_outputs_than_the_data_has_classes_is_warned_about(capsys):
    assert main(["ptq", *TINY, "--num-classes", "12", "--calib-images", "32", "--eval-images", "32",
                 "--plain-only"]) == 0
    err = capsys.readouterr().err
    assert "outputs 12 classes but data digits has 10" in err and err.count("warning:") == 1
