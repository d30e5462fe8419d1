"""What every peer benchmark script shares: options, data, model, evaluation, timing and result files.

Standalone on purpose: numpy, PIL, torch and torchvision only, never ``autoselect``, because each peer runs in its
own virtual environment (which sees the system torch but need not see the project).

A peer script defines ``PIPELINES`` and a ``run(ctx, pipeline, regime) -> dict`` function and ends with
``common.main("<peer>", PIPELINES, run)``; :func:`main` parses the shared options, loads the data and the checkpoint
once, and writes one JSON result per (peer, pipeline, regime) under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_CHECKPOINT = SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"
DEFAULT_DATA = SHARED / "datasets" / "cifar10"
RAW_DIR = HERE / "results" / "raw"

CALIB_SEED = 0  # calibration: numpy RandomState(--calib-seed, 0 by default) permutation of the sorted train paths,
# first --calib-images
TEST_SEED = 1  # test subset (--test-images < all): RandomState(1) permutation of the sorted test paths, first N


# --------------------------------------------------------------------------------------------------- regimes
@dataclass(frozen=True)
class Regime:
    name: str
    weight_bits: int
    per_channel: bool
    weight_symmetric: bool = True
    act_bits: int = 8
    act_symmetric: bool = False  # asymmetric per-tensor activations

    def describe(self) -> str:
        w = f"W{self.weight_bits} {'per-channel' if self.per_channel else 'per-tensor'} " \
            f"{'sym' if self.weight_symmetric else 'asym'}"
        a = f"A{self.act_bits} per-tensor {'sym' if self.act_symmetric else 'asym'}"
        return f"{w}, {a}"


REGIMES: dict[str, Regime] = {
    "w8pt": Regime("w8pt", 8, False),
    "w5pt": Regime("w5pt", 5, False),
    "w4pt": Regime("w4pt", 4, False),
    "w4pc": Regime("w4pc", 4, True),
    "w4pca4": Regime("w4pca4", 4, True, act_bits=4),  # W4/A4: where post-training methods are not enough
}

# Every setting a peer is asked for; each peer's JSON lists in "differences" what it could not match.
REQUESTED_SETTINGS = ("BN folded into the conv before weight quantization; weights symmetric at the regime's bits "
                      "and granularity; activations asymmetric per-tensor at the regime's bits (8 unless the regime "
                      "says A4), ranges by each tool's best documented method below 8 bits; first and last layer "
                      "quantized; "
                      "model input quantized")


class Skip(Exception):
    """Raised by a peer's run() when a (pipeline, regime) cannot be run with that tool; the message says why."""


# --------------------------------------------------------------------------------------------------- options
def add_common_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="FP32 checkpoint (.pt dict)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma list of " + ",".join(REGIMES))
    ap.add_argument("--calib-images", type=int, default=1024)
    ap.add_argument("--calib-seed", type=int, default=CALIB_SEED,
                    help="which calibration images: RandomState(seed) permutation of the train paths (spread runs)")
    ap.add_argument("--test-images", type=int, default=10000,
                    help="evaluate on the first N of a fixed permutation of the test set (all 10,000 by default)")
    ap.add_argument("--calib-batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=500)
    ap.add_argument("--adaround-iters", type=int, default=500, help="AIMET AdaRound iterations per layer")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (OMP_NUM_THREADS too)")
    return ap


def peer_parser(peer: str, pipelines: list[str]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"{peer}: post-training quantization benchmark rows")
    add_common_args(ap)
    ap.add_argument("--pipelines", default=",".join(pipelines), help="comma list of " + ",".join(pipelines))
    ap.add_argument("--out-dir", default=str(RAW_DIR), help="one JSON per (peer, pipeline, regime) goes here")
    ap.add_argument("--list", action="store_true", help="print the pipelines and exit")
    return ap


def split_list(s: str, allowed: list[str] | tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(allowed)})")
    return items


def set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process


# --------------------------------------------------------------------------------------------------- data
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_split(root: str | Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """Sorted relative paths ``class/file`` of one split, their labels (sorted class order, as ImageFolder) and
    the class names."""
    base = Path(root) / split
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    paths, labels = [], []
    for rel in sorted(str(p.relative_to(base)) for c in classes for p in (base / c).iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS):
        paths.append(rel)
        labels.append(classes.index(rel.split(os.sep)[0]))
    return paths, labels, classes


def calibration_indices(n_train: int, n: int, seed: int = CALIB_SEED) -> np.ndarray:
    """The shared calibration rule: RandomState(seed) permutation of the sorted train paths, first ``n``."""
    return np.random.RandomState(seed).permutation(n_train)[:n]


def test_indices(n_test: int, n: int) -> np.ndarray:
    """All test images in sorted order, or the first ``n`` of a RandomState(1) permutation when ``n`` < all."""
    if n >= n_test:
        return np.arange(n_test)
    return np.random.RandomState(TEST_SEED).permutation(n_test)[:n]


def load_images(root: str | Path, split: str, indices: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``indices`` of ``split`` as a float tensor N x 3 x H x W (RGB in [0, 1], then normalized) and labels."""
    from PIL import Image

    paths, labels, _ = list_split(root, split)
    base = Path(root) / split
    arr = []
    for i in indices:
        with Image.open(base / paths[i]) as im:
            arr.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    x = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - m) / s
    y = torch.tensor([labels[i] for i in indices], dtype=torch.long)
    return x.contiguous(), y


# --------------------------------------------------------------------------------------------------- model
def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_kind(ckpt: dict) -> str:
    """'mobilenet_v2' (torchvision, ReLU6) or 'mobilenet_v2_relu' (torchvision.models.quantization, ReLU)."""
    name = str(ckpt.get("model", "")).lower()
    if "relu" in name and "relu6" not in name or "quantization" in name:
        return "mobilenet_v2_relu"
    if name.startswith("mobilenet_v2"):
        return "mobilenet_v2"
    raise ValueError(f"unsupported checkpoint model {ckpt.get('model')!r}")


def build_model(ckpt: dict) -> nn.Module:
    """The FP32 model of a checkpoint, in eval mode."""
    kind = model_kind(ckpt)
    n = int(ckpt.get("num_classes", 10))
    if kind == "mobilenet_v2_relu":
        from torchvision.models.quantization import mobilenet_v2
        model = mobilenet_v2(weights=None, num_classes=n, quantize=False)
    else:
        from torchvision.models import mobilenet_v2
        model = mobilenet_v2(weights=None, num_classes=n)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into that conv (in place) and
    put ``nn.Identity`` in its slot. Covers every conv+BN pair of torchvision's MobileNetV2 (both variants)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = mod._modules[a], mod._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                mod._modules[a] = fuse_conv_bn_eval(conv, bn)
                mod._modules[b] = nn.Identity()
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise RuntimeError(f"BatchNorm left unfolded: {left}")
    return model


def relu6_to_relu(model: nn.Module) -> nn.Module:
    """Swap every ReLU6 module for ReLU (in place)."""
    for mod in model.modules():
        for name, child in mod.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(mod, name, nn.ReLU(inplace=False))
    return model


def count_weights(model: nn.Module) -> int:
    """Number of conv and linear weight elements (what weight bit-widths apply to)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# --------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, set_eval: bool = True) -> float:
    """Top-1 accuracy in percent of ``model`` on ``x``/``y``."""
    if set_eval and isinstance(model, nn.Module):
        model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        if isinstance(out, (tuple, list)):
            out = out[0]
        correct += int((out.argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(x)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall time); reusable, accumulates across uses."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._t0


# --------------------------------------------------------------------------------------------------- context
class Context:
    """Everything a peer's ``run(ctx, pipeline, regime)`` needs, loaded once per process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ckpt = load_checkpoint(args.checkpoint)
        self.model_kind = model_kind(self.ckpt)
        norm = self.ckpt["normalize"]
        self.mean, self.std = norm["mean"], norm["std"]
        n_train = len(list_split(args.data, "train")[0])
        n_test = len(list_split(args.data, "test")[0])
        t0 = time.perf_counter()
        calib = calibration_indices(n_train, args.calib_images, args.calib_seed)
        self.calib_x, self.calib_y = load_images(args.data, "train", calib,
                                                 self.mean, self.std)
        self.test_x, self.test_y = load_images(args.data, "test", test_indices(n_test, args.test_images),
                                               self.mean, self.std)
        self.data_seconds = time.perf_counter() - t0
        self.input_shape = (1, 3, int(self.ckpt.get("input_size", 32)), int(self.ckpt.get("input_size", 32)))
        self._fp32 = build_model(self.ckpt)

    # model
    def fp32_model(self) -> nn.Module:
        """A fresh FP32 copy of the checkpoint's model (eval mode)."""
        return copy.deepcopy(self._fp32).eval()

    def dummy_input(self) -> torch.Tensor:
        return self.calib_x[:1].clone()

    # data
    def calib_batches(self, batch_size: int | None = None) -> list[torch.Tensor]:
        bs = batch_size or self.args.calib_batch_size
        return [self.calib_x[i:i + bs] for i in range(0, len(self.calib_x), bs)]

    def calib_loader(self, batch_size: int | None = None, with_labels: bool = True):
        """A torch DataLoader over the calibration images (no shuffling), yielding (x, y) or x."""
        from torch.utils.data import DataLoader, TensorDataset
        bs = batch_size or self.args.calib_batch_size
        ds = TensorDataset(self.calib_x, self.calib_y) if with_labels else _XOnly(self.calib_x)
        return DataLoader(ds, batch_size=bs, shuffle=False)

    def evaluate(self, model: Callable, set_eval: bool = True) -> float:
        return evaluate(model, self.test_x, self.test_y, self.args.eval_batch_size, set_eval=set_eval)


class _XOnly(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


# --------------------------------------------------------------------------------------------------- results
def result_path(out_dir: str | Path, peer: str, pipeline: str, regime: str) -> Path:
    return Path(out_dir) / f"{peer}__{pipeline}__{regime}.json"


def write_json_atomic(path: str | Path, obj: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def package_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_result(args: argparse.Namespace, peer: str, pipeline: str, regime: str, *, status: str,
                 top1: float | None = None, calib_seconds: float | None = None, eval_seconds: float | None = None,
                 settings: str = "", differences: list[str] | None = None, reason: str = "",
                 tool: str | None = None, extra: dict | None = None) -> Path:
    """One JSON result per (peer, pipeline, regime)."""
    obj = {
        "peer": peer, "pipeline": pipeline, "regime": regime, "status": status,
        "top1": None if top1 is None else round(float(top1), 4),
        "calib_seconds": None if calib_seconds is None else round(float(calib_seconds), 3),
        "eval_seconds": None if eval_seconds is None else round(float(eval_seconds), 3),
        "test_images": args.test_images if args.test_images < 10000 else 10000,
        "calib_images": args.calib_images, "calib_seed": args.calib_seed,
        "settings": settings, "differences": list(differences or []), "reason": reason,
        "requested": REQUESTED_SETTINGS,
        "tool": tool, "tool_version": package_version(tool) if tool else None,
        "torch_version": torch.__version__, "python": platform.python_version(),
        "checkpoint": str(args.checkpoint), "threads": args.threads,
        "calib_batch_size": args.calib_batch_size,
        "extra": extra or {},
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return write_json_atomic(result_path(args.out_dir, peer, pipeline, regime), obj)


def main(peer: str, pipelines: list[str], run: Callable, tool: str | None = None,
         argv: list[str] | None = None, skip: Callable[[str, Regime], str | None] | None = None) -> None:
    """Parse the shared options and run ``run(ctx, pipeline, regime)`` for every requested pair.

    ``run`` returns a dict with ``top1`` and ``calib_seconds`` (and optionally ``settings``, ``differences``,
    ``extra``, ``eval_seconds``) or raises :class:`Skip`. Any other exception is recorded as a failed row and
    re-raised, so the process exits non-zero with the traceback on stderr. ``skip(pipeline, regime)``, when given,
    returns the reason a pair cannot run (or None); it is asked before any data is loaded."""
    args = peer_parser(peer, pipelines).parse_args(argv)
    if args.list:
        print(" ".join(pipelines))
        return
    set_threads(args.threads)
    pipes = split_list(args.pipelines, pipelines, "pipelines")
    regimes = split_list(args.regimes, list(REGIMES), "regimes")
    ctx: Context | None = None
    failed = None
    for pipeline in pipes:
        for regime in regimes:
            torch.manual_seed(0)
            np.random.seed(0)
            try:
                why = skip(pipeline, REGIMES[regime]) if skip is not None else None
                if why:
                    raise Skip(why)
                if ctx is None:
                    ctx = Context(args)
                    print(f"[{peer}] data: {len(ctx.calib_x)} calibration, {len(ctx.test_x)} test images "
                          f"({ctx.data_seconds:.1f}s); model {ctx.model_kind}; threads {torch.get_num_threads()}",
                          flush=True)
                res = run(ctx, pipeline, REGIMES[regime])
            except Skip as e:
                write_result(args, peer, pipeline, regime, status="skipped", reason=str(e), tool=tool)
                print(f"[{peer}] {pipeline} {regime}: skipped ({e})", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - recorded, then re-raised after the other rows
                traceback.print_exc()
                write_result(args, peer, pipeline, regime, status="failed", tool=tool,
                             reason=f"{type(e).__name__}: {e}".splitlines()[0][:300])
                failed = e
                continue
            write_result(args, peer, pipeline, regime, status="ok", tool=tool, **res)
            print(f"[{peer}] {pipeline} {regime}: top1 {res['top1']:.2f}%  calib {res['calib_seconds']:.1f}s  "
                  f"eval {res['eval_seconds']:.1f}s", flush=True)
    if failed is not None:
        raise SystemExit(1)


def timed_eval(ctx: Context, model: Callable, set_eval: bool = True) -> tuple[float, float]:
    """(top-1 %, seconds) of one evaluation on the test images."""
    t = Timer()
    with t:
        top1 = ctx.evaluate(model, set_eval=set_eval)
    return top1, t.seconds


def first_last(model: nn.Module) -> tuple[str, str]:
    """Names of the first conv and the last linear layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names[0], names[-1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
