"""What every benchmark shares: where the reference checkpoint and data live, and their command-line options."""

from __future__ import annotations

import argparse
import json
import copy
from dataclasses import replace
from pathlib import Path

import torch

from autoselect._io import atomic_path
from autoselect.evaluate import predict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "experiments" / "results"


def reference_parser(doc: str | None, out_name: str) -> argparse.ArgumentParser:
    """--weights/--data default to the shared reference MobileNetV2 and CIFAR-10 copy; --out to results/."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--weights", default=str(SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "cifar10"))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", default=str(RESULTS / out_name))
    return ap


def apply_threads(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)


def float64_logits(model, data) -> torch.Tensor:
    """``model``'s logits computed in float64 (on a copy of it, on CPU), returned as float32: for a quantized model,
    the same simulation with less float rounding (issue 18's float-rounding floor, before the integer arithmetic of
    ``autoselect.quant.integer`` replaced it in the export report)."""
    return predict(copy.deepcopy(model).cpu().double(), data, dtype=torch.float64)[0]


def logit_rel_err(a, b) -> float:
    """||a - b|| / ||b|| over logits (numpy, images x classes), each image's logits centred first."""
    import numpy as np

    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def save_result(path: str | Path, obj: object) -> Path:
    """Write a result as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)


def plan_in_regime(plan, *, weight_bits: int | None, target: str, act: str | None = None):
    """A plan moved into a benchmark's regime: every quantized layer at ``weight_bits`` (and ``act`` if given),
    FP32 layers left alone, the plan's target set to ``target``."""
    layers = {k: replace(a, weight_bits=weight_bits, act=act or a.act) if a.kind != "fp32" else a
              for k, a in plan.layers.items()}
    return replace(plan, layers=layers, target=target)
