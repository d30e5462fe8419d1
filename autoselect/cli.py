"""The ``autoselect`` command: a thin layer over the public API. ``main(argv) -> int`` is testable in-process.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from typing import NoReturn
from pathlib import Path

from autoselect._io import atomic_path, check_output_dir, check_output_file, output_dir
from autoselect.errors import AutoselectError

__all__ = ["main", "run"]

DEFAULT_MODEL = "mobilenet_v2"


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (argparse prints the one-line usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {parse.__name__}, got {value}")
        return value

    parse.__name__ = "positive integer" if minimum == 1 else "non-negative integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error (argparse would print its usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autoselect: error: {message} (see `{self.prog} --help`)\n")


POS, NONNEG = _count(1), _count(0)


def _bits_list(text: str) -> int | tuple[int, ...]:
    """``4`` or ``4,5,6,8`` (each group of the search chooses one)."""
    try:
        bits = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a bit-width or a comma-separated list, got {text!r}") from None
    if any(b < 2 or b > 8 for b in bits):
        raise argparse.ArgumentTypeError(f"bit-widths are integers from 2 to 8, got {text!r}")
    return bits[0] if len(bits) == 1 else bits


_bits_list.__name__ = "bit-width list"


def _tolerance(text: str) -> float | None:
    if text == "auto":
        return None
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


_tolerance.__name__ = "tolerance (auto or points >= 0)"


def _common(p: argparse.ArgumentParser, *, data_default: str = "digits") -> None:
    p.add_argument("--model", help="torchvision name, registered name, or pkg.module:factory (default: the plan's "
                                  "model where a plan is given, else mobilenet_v2)")
    p.add_argument("--weights", help="FP32 checkpoint (.pt); without it the model has random weights")
    p.add_argument("--num-classes", type=POS, help="default: from the weights file, else from the data")
    p.add_argument("--input-size", type=POS, help="square input size; default: from the weights file, else 32")
    p.add_argument("--data", default=data_default, help="'digits' (embedded), 'cifar10', or an ImageFolder directory")
    p.add_argument("--data-mode", choices=["auto", "memory", "stream"], default="auto",
                   help="a directory's images: decoded into memory, or streamed from disk by DataLoader workers "
                        "(auto: in memory up to 1 GiB of pixels)")
    p.add_argument("--workers", type=NONNEG, help="DataLoader processes for streamed images (default: up to 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=POS, default=128)
    p.add_argument("--seed", type=NONNEG, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _quant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="generic (default), x86 (this CPU's: x86-vnni or x86-avx2), x86-vnni, "
                   "x86-avx2, qnnpack, tensorrt, acl, snpe, tvm")
    p.add_argument("--weight-bits", type=POS, help="weight bit-width (simulation; default: the target's)")
    p.add_argument("--act-bits", type=POS, help="activation bit-width, 4-8 (generic targets: simulation only)")
    p.add_argument("--weight-observer", choices=["minmax", "mse", "percentile"],
                   help="weight ranges (default: minmax for plain PTQ; under post-training methods, theirs: mse)")
    p.add_argument("--act-observer", choices=["minmax", "mse", "percentile"],
                   help="activation ranges (default: minmax at 8 bits, mse below, as in plans)")
    p.add_argument("--calib-images", type=POS, default=1024, help="calibration images from the train split")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoselect", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list model names")
    p = sub.add_parser("graph", help="print the layer graph (roles, blocks, params, MACs)")
    _common(p)
    p.add_argument("--csv", help="also write it to this CSV file")

    p = sub.add_parser("baseline", help="train or fine-tune the FP32 model and save a checkpoint")
    _common(p)
    p.add_argument("--epochs", type=POS, default=15)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--train-images", type=POS, help="use a random subset of the train split")
    p.add_argument("--out", required=True, help="checkpoint file to write")

    p = sub.add_parser("ptq", help="FP32 vs per-tensor and per-channel PTQ top-1, or a plan's with nothing trained")
    _common(p)
    _quant_options(p)
    p.add_argument("--plan", help="score this plan file (or built-in plan) with nothing trained, instead of the "
                                  "per-tensor and per-channel schemes")
    p.add_argument("--calib-seeds", type=POS, default=1,
                   help="calibrate each scheme on this many draws of the calibration images (seeds --seed, "
                        "--seed+1, ...) and report the spread of its top-1")
    p.add_argument("--eval-images", type=POS, help="evaluate on a random subset of the test split")
    p.add_argument("--plain-only", action="store_true",
                   help="only plain PTQ (round to nearest, no bias correction or equalization): the fast rows")
    p.add_argument("--json", help="also write the results to this JSON file")

    p = sub.add_parser("profile", help="rank layers and blocks by quantization sensitivity")
    _common(p)
    _quant_options(p)
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: the target's)")
    p.add_argument("--methods", action="store_true",
                   help="under the post-training methods a 'freeze' plan gets (equalization, AdaRound or block "
                        "reconstruction below 5 bits, bias correction), with their seconds; default: plain PTQ")
    p.add_argument("--isolated", action="store_true", help="also quantize one layer at a time (one pass per layer)")
    p.add_argument("--isolated-images", type=POS, help="images for the isolated passes (default: all calibration)")
    p.add_argument("--rank-by", default="local_drift", help="column to rank layers by (local_drift, drift, qmse, iso_qkl)")
    p.add_argument("--top", type=POS, default=10)
    p.add_argument("--cache-mb", type=NONNEG, default=2048, help="memory for FP32 reference outputs (else 3 passes)")
    p.add_argument("--out", help="output directory (default: runs/profile-MODEL)")

    p = sub.add_parser("train", help="selective QAT: train the plan's qat layers, report INT8 top-1")
    _common(p)
    p.add_argument("--plan", required=True, help="plan file (.json/.yaml) or a built-in plan name (`autoselect plans`)")
    p.add_argument("--target", help="override the plan's target (train for the target you will export to)")
    p.add_argument("--steps", type=POS, default=300, help="optimizer steps")
    p.add_argument("--lr", type=float, default=0.001,
                   help="peak SGD learning rate of the weights (after warm-up; 0.01 before learned steps)")
    p.add_argument("--step-lr", type=float, default=1e-3,
                   help="peak Adam rate of the learned quantizer steps and zero-points (LSQ; plans' learn_scales)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of distillation from the FP32 model, 0-1 (1: its outputs only, labels unused)")
    p.add_argument("--dampen", type=float, default=0.0,
                   help="oscillation dampening: final weight of the pull of retrained weights to their grid points "
                        "(Nagel et al. 2022; rises from 0 on a cosine)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="SGD weight decay of the retrained weights (default none: 5e-4 cost accuracy from the "
                        "post-training state)")
    p.add_argument("--no-recorrect", action="store_true",
                   help="keep the frozen layers' bias corrections as calibrated (default: re-match their "
                        "sequential correction after the last step, the retrained layers in place)")
    p.add_argument("--warmup-steps", type=NONNEG, default=20)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    p.add_argument("--calib-images", type=POS, default=1024, help="calibration images from the train split")
    p.add_argument("--train-images", type=POS, help="train on a random subset of the train split")
    p.add_argument("--eval-images", type=POS, help="evaluate on a random subset of the test split")
    p.add_argument("--checkpoint-every", type=POS, default=100)
    p.add_argument("--out", help="output directory (default: runs/train-PLAN)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/qat.pt")

    p = sub.add_parser("export", help="real INT8 model: ONNX QDQ run by onnxruntime; size, accuracy, latency")
    _common(p)
    p.add_argument("--plan", required=True, help="plan file or built-in plan name")
    p.add_argument("--checkpoint", help="QAT checkpoint from `autoselect train` (default: the plan as PTQ)")
    p.add_argument("--target", help="deployment target (default: the plan's; x86 or qnnpack run here)")
    p.add_argument("--calib-images", type=POS, default=1024)
    p.add_argument("--eval-images", type=POS, help="evaluate on a random subset of the test split")
    p.add_argument("--latency-runs", type=POS, default=200)
    p.add_argument("--out", help="output directory (default: runs/export-PLAN)")

    sub.add_parser("plans", help="list built-in plans")

    p = sub.add_parser("search", help="search per-layer actions: Pareto front of top-1, retrained, latency")
    _common(p)
    p.add_argument("--target", help="deployment target (default: the space's; x86/qnnpack latency is measured)")
    p.add_argument("--weight-bits", type=_bits_list,
                   help="weight bit-width for every quantized layer (simulation), or a list such as 4,5,6,8 that "
                        "each group chooses from (with --max-model-mb/--max-model-bits: mixed precision)")
    p.add_argument("--act-bits", type=POS,
                   help="activation bit-width for every quantized layer, 4-8 (generic targets: simulation only)")
    p.add_argument("--space", help="search space file or built-in name (default: the model family's)")
    p.add_argument("--trials", type=POS, help="finished trials the study should hold")
    p.add_argument("--proxy-steps", type=POS, help="QAT steps per trial")
    p.add_argument("--proxy-batch", type=POS, help="batch size of the proxy")
    p.add_argument("--proxy-lr", type=float,
                   help="peak learning rate of the proxy (default 0.001, the full run's; never above it)")
    p.add_argument("--eval-every", type=POS, help="steps between intermediate evaluations")
    p.add_argument("--calib-images", type=POS, help="calibration images per trial")
    p.add_argument("--proxy-rounding-effort", type=float,
                   help="fraction of AdaRound's / block reconstruction's steps a trial runs where it learns a "
                        "rounding (default 0.2; the chosen plan is calibrated at full length)")
    p.add_argument("--val-images", type=POS, help="held out from the train split for validation "
                                                  "(default: 1000, at most a quarter of the split)")
    p.add_argument("--train-images", type=POS, help="train the proxy on a subset of the remaining images")
    p.add_argument("--profile-images", type=POS)
    p.add_argument("--profile-rounding-effort", type=float,
                   help="fraction of AdaRound's / block reconstruction's steps the profile runs where it learns a "
                        "rounding (default 1)")
    p.add_argument("--max-accuracy-drop", type=float, help="points of validation top-1 below FP32")
    p.add_argument("--max-retrained", type=float, help="fraction of parameters retrained, e.g. 0.25")
    p.add_argument("--max-latency-ms", type=float, help="latency limit (for cost-model targets: FP32 = 1)")
    p.add_argument("--max-model-mb", type=float,
                   help="limit on the deployed weights in MB (each layer at its bit-width; see trials.csv size_mb)")
    p.add_argument("--max-model-bits", type=POS,
                   help="limit the deployed weights to the model's size with every weight at this bit-width")
    p.add_argument("--tolerance", type=_tolerance, default=None,
                   help="auto (default): prefer the plan retraining least among those a paired test on the "
                        "validation images cannot tell from the best; a number: among those this many points "
                        "from the best top-1")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "nsga2"])
    p.add_argument("--no-prior", action="store_true", help="no warm start from the profile (blind search)")
    p.add_argument("--prune-margin", type=float, help="points behind a cheaper trial to prune at")
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("--no-train", action="store_true",
                   help="search post-training choices only (freeze / fp32, bit-widths): for users who cannot retrain")
    p.add_argument("--latency", default="auto", choices=["auto", "measure", "cost"])
    p.add_argument("--latency-runs", type=POS)
    p.add_argument("--backend", default="optuna", choices=["optuna", "ray"],
                   help="optuna: trials one after another here; ray: trials in parallel through Ray Tune")
    p.add_argument("--address", help="ray: cluster to join (auto, HOST:PORT, or ray://HOST:PORT through Ray "
                   "Client from outside the cluster); default: a local Ray instance")
    p.add_argument("--max-concurrent", type=POS, help="ray: trials at once (default: as many as the CPUs fit)")
    p.add_argument("--cpus-per-trial", type=float, help="ray: CPUs (and torch threads) per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, help="ray: GPUs per trial (default 0)")
    p.add_argument("--max-failures", type=NONNEG, help="ray: retries of a trial whose worker died (default 1)")
    p.add_argument("--baseline-epochs", type=POS, help="without --weights: FP32 epochs to train first")
    p.add_argument("--out", help="output directory (default: runs/search-MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the study in OUT/study.db")
    p.add_argument("--confirm", type=NONNEG, default=0,
                   help="then retrain K plans (the chosen one, then the front's), all frozen and full QAT at the full "
                        "budget at 2 training seeds, and report the proxy's rank correlation next to the full "
                        "budget's own (see `autoselect confirm`)")

    p = sub.add_parser("confirm", help="retrain a finished search's best plans at the full budget: proxy vs full")
    p.add_argument("run", help="the search's output folder")
    p.add_argument("--top", type=POS, default=5,
                   help="plans to retrain: the search's choice, then the front's, then the other trials, best proxy "
                        "top-1 first (default 5)")
    p.add_argument("--steps", type=POS, default=300, help="full-budget QAT steps (default 300, batch 128)")
    p.add_argument("--seeds", type=POS, default=2,
                   help="training seeds per plan (default 2: the second measures how far the full budget's own "
                        "ranking repeats, the most any proxy can reach)")
    p.add_argument("--device", help="default: the search's")
    p.add_argument("--quiet", action="store_true")
    return parser


def _target_name(args: argparse.Namespace) -> str:
    """``--target`` (default generic) with an alias (x86) resolved for this CPU; says so once, on stderr."""
    from autoselect.quant.targets import get_target, resolve_target

    name, why = resolve_target(args.target or "generic")
    if why is not None and args.target != name:
        print(f"target {args.target} -> {name} ({why})", file=sys.stderr)
    args.target = get_target(name).name  # an unknown name fails here, before any work
    return name


def _spec(args: argparse.Namespace, *, per_channel: bool | None = None):
    from autoselect.quant.targets import get_target

    return get_target(_target_name(args)).spec(weight_bits=args.weight_bits,
                                                     weight_observer=args.weight_observer or "minmax",
                                                     act_observer=args.act_observer, per_channel=per_channel,
                                                     act_bits=args.act_bits)


def _with_methods(args: argparse.Namespace, spec):
    """What a plan's "freeze" gets: the default post-training methods; the weight observer too unless named."""
    from autoselect.quant.methods import with_defaults

    return with_defaults(spec, observer_named=args.weight_observer is not None)


def _prepare(args: argparse.Namespace, *, seed_override: int | None = None, **kw):
    from autoselect.prepare import prepare

    return prepare(args.model, weights=args.weights, data=args.data, num_classes=args.num_classes,
                   input_size=args.input_size, seed=args.seed if seed_override is None else seed_override,
                   data_mode=args.data_mode, workers=args.workers, **kw)


def _device(args: argparse.Namespace):
    from autoselect.evaluate import resolve_device

    return resolve_device(args.device)


def _cmd_models(args: argparse.Namespace) -> int:
    from autoselect.models import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from autoselect.models import build_layer_graph, load_model

    if args.csv:
        check_output_file(args.csv, "--csv")
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size)
    graph = build_layer_graph(loaded.model, (1, 3, loaded.input_size, loaded.input_size))
    df = graph.to_frame()
    print(df.to_string(index=False))
    print(f"\n{len(graph)} quantizable layers in {len(graph.blocks)} blocks; {graph.total_params:,} parameters")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            df.to_csv(tmp, index=False)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from autoselect.models import save_checkpoint
    from autoselect.train import train_baseline
    from autoselect.train.baseline import BN_IMAGES

    check_output_file(args.out, "--out")
    prep = _prepare(args, train_images=args.train_images, warn_untrained=False)
    assert prep.train is not None and prep.test is not None
    lm = prep.loaded
    res = train_baseline(lm.model, prep.train, prep.test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         device=_device(args), seed=args.seed, progress=not args.quiet)
    lm.model.load_state_dict(res.best_state)
    save_checkpoint(args.out, lm.model, model_name=lm.name, num_classes=lm.num_classes, input_size=lm.input_size,
                    normalize=prep.train.normalize, test_acc=res.best_acc, epoch=res.best_epoch,
                    data=args.data, history=res.history)
    if res.warning:
        print(f"warning: {res.warning}", file=sys.stderr)
    print(f"FP32 top-1 {res.best_acc:.2f}% (epoch {res.best_epoch}/{args.epochs}; BatchNorm statistics "
          f"re-estimated on {min(BN_IMAGES, len(prep.train))} train images) -> {args.out}")
    return 0


def _cmd_ptq(args: argparse.Namespace) -> int:
    from autoselect.ptq import ptq_table
    from autoselect.quant.targets import get_target

    if args.plan:
        return _ptq_of_plan(args)
    device = _device(args)
    plain = {"per_tensor": _spec(args, per_channel=False), "per_channel": _spec(args, per_channel=True)}
    schemes = dict(plain)
    if not args.plain_only:  # what a plan's "freeze" gets: the default post-training methods (observers as asked)
        schemes.update({f"{name}+methods": _with_methods(args, spec) for name, spec in plain.items()})
    if args.json:
        check_output_file(args.json, "--json")
    prep = _prepare(args, train_images=args.calib_images, test_images=args.eval_images)
    assert prep.train is not None and prep.test is not None
    integer_graph = get_target(_target_name(args)).runs_here
    rows = ptq_table(prep.loaded.model, prep.train.batches(args.batch_size, device=device),
                     prep.test.batches(args.batch_size, device=device), schemes, device=device,
                     progress=not args.quiet, integer_graph=integer_graph)
    by_seed = {r.name: [r.top1] for r in rows[1:]}
    for extra_seed in range(args.seed + 1, args.seed + args.calib_seeds):  # more calibration draws, same test images
        other = _prepare(args, train_images=args.calib_images, splits=("train",), seed_override=extra_seed)
        assert other.train is not None
        again = ptq_table(prep.loaded.model, other.train.batches(args.batch_size, device=device),
                          prep.test.batches(args.batch_size, device=device), schemes, device=device,
                          progress=not args.quiet, integer_graph=integer_graph)
        for r in again[1:]:
            by_seed[r.name].append(r.top1)
    print(f"{args.model} on {len(prep.test)} {args.data} test images; calibration: {len(prep.train)} train images")
    for row in rows:
        spec = schemes.get(row.name)
        label = "FP32" if spec is None else f"{row.name.replace('_', '-')}: {spec.describe()}"
        cost = "" if spec is None else f"  [{row.seconds:.1f} s" + "".join(
            f", {m} {s:.1f} s" for m, s in row.method_seconds.items()) + "]"
        same = "" if spec is None else f"  same as FP32 {row.agreement:6.2f}%"
        print(f"  top-1 {row.top1:6.2f}%{same}  {label}{cost}")
    if args.calib_seeds > 1:
        print(f"over {args.calib_seeds} calibration draws (seeds {args.seed}-{args.seed + args.calib_seeds - 1}), "
              "the same test images:")
        for name, values in by_seed.items():
            sd = statistics.stdev(values)
            print(f"  {name.replace('_', '-'):22s} {statistics.mean(values):6.2f} ± {sd:.2f}%  "
                  f"(min {min(values):.2f}, max {max(values):.2f})")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"model": args.model, "target": args.target or "generic",
                                       "top1": {r.name: r.top1 for r in rows},
                                       "agreement_with_fp32": {r.name: r.agreement for r in rows[1:]},
                                       "seconds": {r.name: r.seconds for r in rows[1:]},
                                       "method_seconds": {r.name: r.method_seconds for r in rows[1:]},
                                       "top1_by_calibration_seed": by_seed,
                                       "calibration_seeds": list(range(args.seed, args.seed + args.calib_seeds))},
                                      indent=2) + "\n")
    return 0


def _ptq_of_plan(args: argparse.Namespace) -> int:
    """``autoselect ptq --plan``: the plan's quantization with nothing trained (its qat layers at their start)."""
    import time

    from autoselect.evaluate import accuracy
    from autoselect.quant.apply import apply_plan, quantized_size_bytes

    given = [opt for opt, value in (("--weight-bits", args.weight_bits), ("--act-bits", args.act_bits),
                                    ("--weight-observer", args.weight_observer),
                                    ("--act-observer", args.act_observer), ("--plain-only", args.plain_only or None),
                                    ("--calib-seeds", args.calib_seeds if args.calib_seeds > 1 else None))
             if value is not None]
    if given:
        raise AutoselectError(f"{given[0]} does not apply with --plan: the plan sets each layer's quantization")
    plan, plan_name = _resolve_plan(args)
    if args.json:
        check_output_file(args.json, "--json")
    device = _device(args)
    prep = _prepare(args, train_images=args.calib_images, test_images=args.eval_images)
    assert prep.train is not None and prep.test is not None
    size = prep.loaded.input_size
    t0 = time.perf_counter()
    qmodel = apply_plan(prep.loaded.model, plan, prep.train.batches(args.batch_size, device=device),
                        input_shape=(1, 3, size, size), device=device, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    top1 = accuracy(qmodel, prep.test.batches(512, device=device), device=device)
    size_mb = quantized_size_bytes(qmodel) / 1e6
    print(f"{plan_name}: top-1 {top1:.2f}% on {len(prep.test)} test images, nothing trained ({plan.target}; "
          f"{size_mb:.4f} MB of weights; calibration with the post-training methods {seconds:.1f} s on "
          f"{len(prep.train)} train images)")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"plan": args.plan, "model": args.model, "target": plan.target, "top1": top1,
                                       "size_mb": size_mb, "calib_seconds": seconds, "seed": args.seed,
                                       "calib_images": len(prep.train), "test_images": len(prep.test)},
                                      indent=2) + "\n")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from autoselect.profiling import check_rank_by, profile

    device = _device(args)
    spec = _spec(args, per_channel=False if args.per_tensor else None)
    spec = _with_methods(args, spec) if args.methods else spec
    check_rank_by(args.rank_by, isolated=args.isolated)
    out = check_output_dir(args.out or f"runs/profile-{args.model.replace(':', '_')}")
    prep = _prepare(args, train_images=args.calib_images, splits=("train",))
    assert prep.train is not None
    report = profile(prep.loaded.model, prep.train.batches(args.batch_size, device=device), spec=spec,
                     isolated=args.isolated, isolated_images=args.isolated_images, rank_by=args.rank_by,
                     device=device, cache_mb=args.cache_mb, progress=not args.quiet, model_name=args.model)
    written = report.save(out)
    o = report.output
    print(f"{args.model}: {len(prep.train)} calibration images, {spec.describe()}")
    methods = {k[len("method_"):-2]: v for k, v in report.timings.items() if k.startswith("method_")}
    if methods:
        print("post-training methods: " + ", ".join(f"{m} {secs:.1f} s" for m, secs in methods.items()))
    line = f"logits: QMSE {o['qmse']:.4g}  QCE {o['qce']:.4g}  QKL {o['qkl']:.4g}  agreement {o['agreement']:.2f}%"
    if "top1_fp32" in o:
        line += f"  top-1 FP32 {o['top1_fp32']:.2f}% / quantized {o['top1_quant']:.2f}%"
    print(line)
    print(f"\ntop {args.top} layers by {args.rank_by}:\n{report.format_top(args.top)}\n")
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return 0


def _cmd_plans(args: argparse.Namespace) -> int:
    from autoselect.plans import builtin_plan, builtin_plans

    for name in builtin_plans():
        print(f"{name:30s} {builtin_plan(name).provenance.get('description', '')}")
    return 0


def _resolve_plan(args: argparse.Namespace):
    """The plan of ``--plan`` (a file or a built-in name), with ``--target`` applied; sets ``args.model`` from
    the plan when not given and refuses a ``--model`` the plan was not made for."""
    from dataclasses import replace

    from autoselect.plan import load_plan
    from autoselect.plans import builtin_plan_path, builtin_plans

    if args.plan in builtin_plans():
        plan, name = load_plan(builtin_plan_path(args.plan)), args.plan
    else:
        plan, name = load_plan(args.plan), Path(args.plan).stem
    plan = replace(plan, target=_target_name(argparse.Namespace(target=args.target or plan.target)))
    planned = plan.model.name if plan.model is not None else None
    args.model = args.model or planned or DEFAULT_MODEL
    if planned is not None and planned != args.model:
        raise AutoselectError(f"plan {args.plan} is for model {planned!r}, not {args.model!r}")
    return plan, name


def _cmd_train(args: argparse.Namespace) -> int:
    from autoselect.evaluate import accuracy
    from autoselect.models import build_layer_graph
    from autoselect.quant.apply import apply_plan, plan_specs, retrained_fraction
    from autoselect.train import QATConfig, train_qat

    plan, plan_name = _resolve_plan(args)
    device = _device(args)
    out = check_output_dir(args.out or f"runs/train-{plan_name}")
    cfg = QATConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, step_lr=args.step_lr,
                    warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                    schedule=args.schedule, checkpoint=str(out / "qat.pt"), checkpoint_every=args.checkpoint_every,
                    seed=args.seed, distill=args.distill, dampen=args.dampen,
                    recorrect=not args.no_recorrect)
    if args.resume and not (out / "qat.pt").is_file():
        raise AutoselectError(f"nothing to resume: {out / 'qat.pt'} does not exist")
    prep = _prepare(args, train_images=args.train_images, test_images=args.eval_images)
    assert prep.train is not None and prep.test is not None
    lm = prep.loaded
    if plan.model is not None and plan.model.weights_sha256 and lm.weights_sha256 != plan.model.weights_sha256:
        print(f"note: plan {args.plan} was made for other weights (sha256 {plan.model.weights_sha256[:12]}...)",
              file=sys.stderr)
    calib = prep.train.subset(args.calib_images, seed=args.seed)
    size = lm.input_size
    graph = build_layer_graph(lm.model, (1, 3, size, size))
    _, actions = plan_specs(plan, graph)
    if not any(a is not None and a.trainable for a in actions.values()):  # before minutes of calibration
        print(f"the plan retrains nothing (no qat layer): it is a post-training plan, nothing to train; score it "
              f"with `autoselect ptq --plan {args.plan}`, export it with `autoselect export --plan {args.plan}`")
        return 0
    calib_batches = calib.batches(args.batch_size, device=device)  # calibrates, then re-matches after training
    qmodel = apply_plan(lm.model, plan, calib_batches, graph=graph, device=device)
    frac = retrained_fraction(qmodel)
    ptq = None if args.resume else accuracy(qmodel, prep.test.batches(512, device=device), device=device)
    res = train_qat(qmodel, prep.train, prep.test, cfg, resume=args.resume, device=device, progress=not args.quiet,
                    teacher=lm.model if args.distill > 0 else None,
                    calibration=calib_batches)
    summary = {"plan": args.plan, "model": args.model, "target": plan.target, "retrained_fraction": frac,
               "steps": res.steps, "resumed_from": res.resumed_from, "ptq_top1": ptq, "int8_top1_simulated": res.top1,
               "recorrected_layers": len(res.recorrected), "top1_before_recorrect": res.top1_before_recorrect,
               "test_images": len(prep.test)}
    with atomic_path(out / "result.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    before = f"PTQ {ptq:.2f}% -> " if ptq is not None else ""
    if res.top1_before_recorrect is not None:
        before += (f"{res.top1_before_recorrect:.2f}% trained -> {len(res.recorrected)} frozen layers' bias "
                   f"correction re-matched -> ")
    print(f"{plan_name}: {100 * frac:.1f}% of parameters retrained, {res.steps} steps; simulated INT8 top-1 "
          f"{before}{res.top1:.2f}% on {len(prep.test)} test images -> {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from autoselect.export import export_and_measure
    from autoselect.quant.apply import apply_plan
    from autoselect.train.qat import load_qat_checkpoint

    plan, plan_name = _resolve_plan(args)
    device = _device(args)
    out = check_output_dir(args.out or f"runs/export-{plan_name}")
    prep = _prepare(args, train_images=args.calib_images, test_images=args.eval_images)
    assert prep.train is not None and prep.test is not None
    size = prep.loaded.input_size
    qmodel = apply_plan(prep.loaded.model, plan, prep.train.batches(args.batch_size, device=device),
                        input_shape=(1, 3, size, size), device=device)
    if args.checkpoint:
        load_qat_checkpoint(args.checkpoint, qmodel, target=plan.target)
    qmodel.cpu()
    with output_dir(out):  # a failed export leaves no half-written folder
        s = export_and_measure(qmodel, prep.train.batches(args.batch_size), prep.test.batches(256), out,
                               input_shape=(1, 3, size, size), latency_runs=args.latency_runs,
                               extra={"plan": args.plan, "target": plan.target, "checkpoint": args.checkpoint,
                                      "test_images": len(prep.test)}, fp32_model=prep.loaded.model)
    best, lat = s["latency_threads"], s["latency_ms_by_threads"]
    print(f"{s['int8_onnx']}: {s['int8_bytes'] / 1e6:.2f} MB (FP32 {s['fp32_bytes'] / 1e6:.2f} MB)")
    a = s["agreement"]
    print(f"top-1 on {len(prep.test)} test images: simulated {s['simulated_integer_top1']:.2f}% (float32 "
          f"{s['simulated_top1']:.2f}%), onnxruntime INT8 {s['int8_top1']:.2f}%; same prediction as the simulation on "
          f"{a['int8_vs_simulated']:.2f}% of the images (float32 simulation {a['int8_vs_simulated_float32']:.2f}%; "
          f"INT8 vs FP32 {a['int8_vs_fp32']:.2f}%)")
    print(f"batch-1 latency (onnxruntime, each at its fastest thread count): INT8 {s['int8_latency_ms']:.3f} ms "
          f"({best['int8']} thread{'s' if best['int8'] > 1 else ''}), FP32 {s['fp32_latency_ms']:.3f} ms "
          f"({best['fp32']} thread{'s' if best['fp32'] > 1 else ''}): {s['int8_over_fp32']:.2f}x; one thread each: "
          f"{s['int8_over_fp32_one_thread']:.2f}x")
    cpu = s["measured_on"]
    flags = ", ".join(cpu["int8_flags"]) if cpu["int8_flags"] is not None else "flags unreadable"
    print(f"measured on {cpu['cpu']} ({flags}; its x86 target: {cpu['x86_target']})")
    for line in s["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from autoselect.search import Constraints, ProxyBudget, RayOptions, SearchConfig, search

    if args.max_retrained is not None and not 0.0 <= args.max_retrained <= 1.0:
        raise AutoselectError(f"--max-retrained is a fraction from 0 to 1, got {args.max_retrained}")
    if args.trials is not None and args.trials < 1:
        raise AutoselectError("--trials must be at least 1")

    def given(**kw: object) -> dict:  # options left out take the defaults of SearchConfig / ProxyBudget
        return {k: v for k, v in kw.items() if v is not None}

    no_prune = {"prune_margin": None} if args.no_prune else given(prune_margin=args.prune_margin)
    cfg = SearchConfig(
        model=args.model, weights=args.weights, data=args.data, data_mode=args.data_mode, workers=args.workers,
        num_classes=args.num_classes, input_size=args.input_size, target=args.target, weight_bits=args.weight_bits,
        act_bits=args.act_bits,
        max_model_bits=args.max_model_bits, no_train=args.no_train, space=args.space,
        proxy=ProxyBudget(**given(steps=args.proxy_steps, batch_size=args.proxy_batch, lr=args.proxy_lr,
                                  eval_every=args.eval_every, calib_images=args.calib_images,
                                  rounding_effort=args.proxy_rounding_effort)),
        train_images=args.train_images, val_images=args.val_images,
        constraints=Constraints(max_accuracy_drop=args.max_accuracy_drop, max_retrained=args.max_retrained,
                                max_latency=args.max_latency_ms, max_model_mb=args.max_model_mb,
                                tolerance=args.tolerance),
        sampler=args.sampler, prior=not args.no_prior, latency=args.latency, backend=args.backend,
        ray=RayOptions(address=args.address, max_concurrent=args.max_concurrent,
                       **given(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                               max_failures=args.max_failures)),
        out=args.out or f"runs/search-{args.model.replace(':', '_')}",
        resume=args.resume, seed=args.seed, device=args.device, progress=not args.quiet, confirm=args.confirm,
        **given(trials=args.trials, profile_images=args.profile_images, latency_runs=args.latency_runs,
                profile_rounding_effort=args.profile_rounding_effort,
                baseline_epochs=args.baseline_epochs), **no_prune)
    res = search(cfg)
    s = res.summary
    c = res.chosen
    print(f"{s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed); "
          f"Pareto front: {len(res.front)} plans -> {res.out / 'pareto.csv'}, {res.out / 'pareto.png'}")
    print(f"validation top-1: FP32 {res.fp32_top1:.2f}%, all frozen (PTQ) {res.ptq_top1:.2f}%")
    print(f"chosen: trial {int(c['trial'])}: top-1 {c['top1']:.2f}% with {100 * c['retrained']:.1f}% of parameters "
          f"retrained, latency {c['latency']:.4g} {res.latency_unit} -> {res.plan_path}")
    if s["tied_with_best"] > 1:
        print(f"  {s['tied_with_best']} plans tie with the best top-1 ({s['tolerance']}); the one retraining least "
              "(then the fastest) was chosen")
    weights = args.weights or res.out / "fp32.pt"
    print(s["verdict"])
    if "confirm" in s:
        _print_confirm(s["confirm"])
    elif c["retrained"] == 0 and s["verdict"].startswith("no trained plan"):
        # measured (RESULTS, issue 15): here the proxy's small gains can hide a plan 1-1.5 points better at full budget
        print(f"before settling for all frozen: autoselect confirm {res.out} --top 3 retrains the best trained plans "
              "at the full budget")
    if c["retrained"] > 0:
        print(f"next: autoselect train --plan {res.plan_path} --weights {weights} --data {args.data}")
    elif s["latency_measured"]:
        print(f"next: autoselect export --plan {res.plan_path} --weights {weights} --data {args.data}")
    else:
        print(f"next: autoselect ptq --plan {res.plan_path} --weights {weights} --data {args.data} (target "
              f"{s['target']} has no integer kernels here: nothing to export)")
    return 0


def _print_confirm(c: dict) -> None:
    rho = "n/a (fewer than 3 ranked plans)" if c["spearman_proxy_vs_full"] is None else \
        f"{c['spearman_proxy_vs_full']:.2f}"
    print(f"confirmed at the full budget ({c['budget']['steps']} steps x {c['budget']['batch_size']}), "
          f"{c['plans']} plans, {c['seconds']:.0f} s; proxy vs full Spearman {rho}")
    if c.get("seeds", 1) > 1:
        retest = c.get("spearman_full_retest")
        one = c.get("spearman_proxy_vs_one_run")
        like = "" if one is None else f"; the proxy against one full run: {one:.2f} (mean over the seeds)"
        rank = "n/a (a seed ranked every plan alike, or fewer than 3 plans)" if retest is None else f"{retest:.2f}"
        print(f"  the full budget against itself ({c['seeds']} training seeds): Spearman {rank}{like}; it tells "
              f"apart {c['separated_pairs']} of {c['pairs']} plan pairs (paired test, same order at every seed)")
    for r in c["ranking"]:
        print(f"  {r['label']:12s} {r['full_top1']:6.2f}%  retrained {100 * r['retrained']:5.1f}%")
    same = "the same as the proxy's" if c["same_choice"] else f"the proxy chose {c['chosen_by_proxy']}"
    print(f"chosen now: {c['chosen_now']} ({c['tolerance']}; {same})")


def _cmd_confirm(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autoselect.search.confirm import FULL_BUDGET, confirm

    res = confirm(args.run, top=args.top, budget=replace(FULL_BUDGET, steps=args.steps, eval_every=args.steps),
                  device=args.device, progress=not args.quiet, seeds=args.seeds)
    _print_confirm(res.summary)
    print(f"-> {res.path}, {res.path.parent / 'confirm.png'}")
    return 0


_COMMANDS = {
    "models": _cmd_models, "graph": _cmd_graph, "baseline": _cmd_baseline, "ptq": _cmd_ptq,
    "profile": _cmd_profile, "train": _cmd_train, "export": _cmd_export, "plans": _cmd_plans, "search": _cmd_search,
    "confirm": _cmd_confirm,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    if getattr(args, "model", "") is None and args.command not in ("train", "export") \
            and not getattr(args, "plan", None):
        args.model = DEFAULT_MODEL  # train/export (and ptq --plan) take it from the plan
    try:
        return _COMMANDS[args.command](args)
    except AutoselectError as exc:
        print(f"autoselect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoselect: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    sys.exit(main())
