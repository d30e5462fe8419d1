"""Issue 18 table: architecture x input size x target — simulated top-1, exported INT8 top-1 and per-image agreement.

Each family is trained on the embedded digits set at each input size (``--epochs``; checkpoints kept under
runs/family_matrix/, not committed, and reused), then every layer is frozen with the default post-training methods
for each target, calibrated on 256 train images (``--calib-images``), and (targets with integer kernels here) exported through
onnxruntime and run on the digits test images. ``--random`` skips training: random weights with BatchNorm statistics
re-estimated on the calibration images, which is what the unit-test matrix uses. ``--train-size N`` runs every
size with the checkpoints trained at N pixels (the families are fully convolutional up to a global pool), so that a
224-pixel row needs no training at 224. ``--floor`` adds the simulation run in float64 against itself in float32:
how many predictions float rounding alone flips. Every row also has the simulation computed in the integer
kernels' arithmetic (``autoselect.quant.integer``): its top-1, its agreement with the export and the largest logit
difference (``sim_int_top1``, ``agree_int8_sim_int``, ``max_abs_int8_sim_int``).

    python experiments/family_matrix.py --sizes 32 64 --targets generic x86-avx2 x86-vnni
    python experiments/family_matrix.py --sizes 224 --train-size 64 --targets x86-vnni --floor
    python experiments/family_matrix.py --sizes 224 --train-size 64 --finetune-epochs 2 --targets x86-vnni --floor

``--finetune-epochs E`` (with ``--train-size N``) fine-tunes each N-pixel checkpoint at the row's size for E epochs
(a tenth of the training rate) before measuring: a model trained for the size it runs at, for sizes where training
from scratch does not fit the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, ROOT, float64_logits, logit_rel_err, save_result

from autoselect import load_images, load_model
from autoselect.export import export, ort_session
from autoselect.models import save_checkpoint
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan
from autoselect.quant.integer import integer_arithmetic
from autoselect.quant.targets import get_target
from autoselect.train import train_baseline
from autoselect.train.baseline import reestimate_bn

LR = {"squeezenet1_1": 0.01}  # at 0.05 SqueezeNet did not learn (10.6%, chance)
FAMILIES = ("mobilenet_v2", "mobilenet_v3_large", "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf",
            "shufflenet_v2_x1_0", "resnet18", "squeezenet1_1", "googlenet", "densenet121")


def _weights(model: str, size: int, epochs: int, ckpt_dir: Path, start: Path | None = None) -> Path:
    """The checkpoint of ``model`` trained on digits at ``size`` pixels for ``epochs`` (cached); from ``start`` (a
    checkpoint trained at another size: fine-tuned, at a tenth of the rate) when given."""
    path = ckpt_dir / (f"{model}_digits{size}_e{epochs}.pt" if start is None
                       else f"{model}_digits{size}_from_{start.stem}_ft{epochs}.pt")
    if not path.exists():
        lm = load_model(model, weights=str(start) if start else None, num_classes=10, input_size=size)
        train = load_images("digits", split="train", input_size=size)
        test = load_images("digits", split="test", input_size=size)
        t0 = time.perf_counter()
        lr = LR.get(model, 0.05) / (10 if start is not None else 1)
        res = train_baseline(lm.model, train, test, epochs=epochs, lr=lr, batch_size=64, seed=0)
        lm.model.load_state_dict(res.best_state)
        save_checkpoint(path, lm.model, model_name=model, num_classes=10, input_size=size, test_acc=res.best_acc,
                        epoch=res.best_epoch, normalize=train.normalize)
        print(f"# trained {model} at {size} px: {res.best_acc:.2f}% in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _row(model: str, size: int, targets: list[str], weights: Path | None, args: argparse.Namespace) -> list[dict]:
    lm = load_model(model, weights=str(weights) if weights else None, num_classes=10, input_size=size)
    test = load_images("digits", split="test", input_size=size, limit=args.images)
    calib = load_images("digits", split="train", limit=args.calib_images, input_size=size, seed=0)
    if lm.normalize is not None:
        test, calib = test.with_normalize(lm.normalize), calib.with_normalize(lm.normalize)
    if weights is None:
        torch.manual_seed(0)
        reestimate_bn(lm.model, calib.batches(64))
    lm.model.eval()
    with torch.no_grad():
        fp32 = torch.cat([lm.model(x) for x, _ in test.batches(64)]).numpy()
    labels = np.concatenate([y.numpy() for _, y in test.batches(64)])
    rows = []
    for target in targets:
        t0 = time.perf_counter()
        q = apply_plan(lm.model, Plan(layers={"_default": LayerAction()}, target=target), calib.batches(64),
                       input_shape=(1, 3, size, size))
        with torch.no_grad():
            sim = torch.cat([q(x) for x, _ in test.batches(64)]).numpy()
            with integer_arithmetic(q):  # what the export computes, in the kernels' arithmetic
                simi = torch.cat([q(x) for x, _ in test.batches(64)]).numpy()
            sim64 = None
            if args.floor:
                sim64 = float64_logits(q, test.batches(64)).numpy()
        row = {"model": model, "size": size, "target": get_target(target).name, "images": len(test),
               "fp32_top1": 100 * float((fp32.argmax(1) == labels).mean()),
               "sim_top1": 100 * float((sim.argmax(1) == labels).mean()),
               "sim_int_top1": 100 * float((simi.argmax(1) == labels).mean()),
               "agree_sim_fp32": 100 * float((sim.argmax(1) == fp32.argmax(1)).mean())}
        if sim64 is not None:
            row.update({"agree_sim64_sim": 100 * float((sim64.argmax(1) == sim.argmax(1)).mean()),
                        "rel_err_sim64_sim": logit_rel_err(sim64, sim)})
        if get_target(target).runs_here:
            with tempfile.TemporaryDirectory() as d:
                res = export(q, calib.batches(64), d, input_shape=(1, 3, size, size))
                sess = ort_session(res.int8_path, threads=args.threads)
                int8 = np.concatenate([sess.run(None, {"input": x.numpy()})[0] for x, _ in test.batches(64)])
            row.update({"int8_top1": 100 * float((int8.argmax(1) == labels).mean()),
                        "agree_int8_sim_int": 100 * float((int8.argmax(1) == simi.argmax(1)).mean()),
                        "max_abs_int8_sim_int": float(np.abs(int8 - simi).max()),
                        "agree_int8_sim": 100 * float((int8.argmax(1) == sim.argmax(1)).mean()),
                        "agree_int8_fp32": 100 * float((int8.argmax(1) == fp32.argmax(1)).mean()),
                        "rel_err_int8_sim": logit_rel_err(int8, sim),
                        "rel_err_sim_fp32": logit_rel_err(sim, fp32)})
            if sim64 is not None:
                row.update({"agree_int8_sim64": 100 * float((int8.argmax(1) == sim64.argmax(1)).mean()),
                            "rel_err_int8_sim64": logit_rel_err(int8, sim64)})
        row["seconds"] = time.perf_counter() - t0
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(FAMILIES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--targets", nargs="+", default=["generic", "x86-avx2", "x86-vnni"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--images", type=int, help="test images (default: all 360)")
    ap.add_argument("--random", action="store_true", help="random weights, BatchNorm re-estimated; no training")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--train-size", type=int, help="use the checkpoints trained at this size for every size")
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="with --train-size: fine-tune those checkpoints at each size for this many epochs first")
    ap.add_argument("--floor", action="store_true", help="also the float64 simulation against the float32 one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "family_matrix.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt_dir = ROOT / "runs" / "family_matrix"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for model in args.models:
        for size in args.sizes:
            weights = None if args.random else _weights(model, args.train_size or size, args.epochs, ckpt_dir)
            if weights is not None and args.finetune_epochs and args.train_size and args.train_size != size:
                weights = _weights(model, size, args.finetune_epochs, ckpt_dir, start=weights)
            rows += _row(model, size, args.targets, weights, args)
            save_result(args.out, {"date": str(date.today()), "random": args.random, "epochs": args.epochs,
                                   "train_size": args.train_size, "finetune_epochs": args.finetune_epochs,
                                   "calib_images": args.calib_images, "rows": rows})


if __name__ == "__main__":
    main()
