from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoselect._io import atomic_path
from autoselect.cli import main

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


def test_baseline_then_ptq_then_profile(tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    assert main(["baseline", *TINY, "--data", "digits", "--epochs", "1", "--train-images", "128",
                 "--out", str(ckpt)]) == 0
    saved = torch.load(ckpt, weights_only=True)
    assert saved["model"] == "tests.helpers:tiny_net" and saved["num_classes"] == 10 and "test_acc" in saved
    assert main(["ptq", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--eval-images", "64",
                 "--json", str(tmp_path / "ptq.json")]) == 0
    out = capsys.readouterr().out
    assert "per-tensor" in out and "per-channel" in out and "FP32" in out
    out_dir = tmp_path / "prof"
    assert main(["profile", *TINY, "--weights", str(ckpt), "--calib-images", "64", "--out", str(out_dir),
                 "--isolated", "--isolated-images", "32", "--rank-by", "iso_qkl", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 layers by iso_qkl" in out
    for name in ("layers.csv", "blocks.csv", "summary.json", "drift_per_block.png", "ranges_per_layer.png"):
        assert (out_dir / name).stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ptq", "--model", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
        (["ptq", *TINY, "--weights", "/no/such.pt"], "weights file not found"),
        (["ptq", *TINY, "--data", "/no/such/dir"], "data directory not found"),
        (["profile", *TINY, "--num-classes", "4"], "has 10 classes but model tests.helpers:tiny_net outputs 4"),
        (["profile", *TINY, "--target", "gpu"], "unknown target 'gpu'"),
        (["profile", *TINY, "--rank-by", "iso_qkl"], "need isolated"),
        (["ptq", *TINY, "--calib-images", "0"], "must be positive"),
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
    text = capsys.readouterr().out
    assert "onnxruntime INT8" in text and (out / "model_int8.onnx").is_file()
    summary = json.loads((out / "export.json").read_text())
    assert abs(summary["simulated_top1"] - summary["int8_top1"]) <= 10.0  # 32 images: at most 3 disagree
    lat = summary["latency_ms_by_threads"]
    assert set(lat) == {"fp32", "int8"} and "1" in lat["fp32"] and "1" in lat["int8"]
    for name in ("fp32", "int8"):  # the reported latency is the model's fastest thread count
        assert summary[f"{name}_latency_ms"] == min(lat[name].values())
        assert lat[name][str(summary["latency_threads"][name])] == summary[f"{name}_latency_ms"]
    assert main(["export", *common, "--target", "qnnpack", "--checkpoint", str(run / "qat.pt"),
                 "--out", str(out)]) == 2
    assert "trained for target 'x86', not 'qnnpack'" in capsys.readouterr().err


def test_explicit_model_that_the_plan_was_not_made_for_is_refused(tmp_path, capsys):
    # --model mobilenet_v2 given explicitly is not "left at its default": a ResNet plan must refuse it
    plan = tmp_path / "resnet_plan.json"
    plan.write_text('{"version": 1, "model": {"name": "resnet18"}, "layers": {"_default": "qat_asym"}}')
    assert main(["train", "--plan", str(plan), "--model", "mobilenet_v2", "--quiet"]) == 2
    assert "is for model 'resnet18', not 'mobilenet_v2'" in capsys.readouterr().err
