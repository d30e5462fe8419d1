"""Full QAT from the post-training state: learned steps (LSQ) against the old fixed steps, at several learning rates.

Each regime's calibrated model (every post-training method its defaults give a bare plan: equalization, MSE
ranges, AdaRound below 5 bits, bias correction) is made once; every variant then starts from a copy of it, so the
PTQ start is the same for all of them and is reported beside each. Variants are
``KIND:LR[:STEP_LR[:DISTILL[:WEIGHT_DECAY[:DAMPEN]]]]`` with KIND ``lsq`` (learned steps, the plan default), ``fixed``
(``learn_scales: false``) or ``steps`` (learned steps and biases only: the weights keep their post-training values,
an experiment, not a plan action), and DISTILL the weight of distillation from the FP32 model (0: labels only; 1:
the FP32 model's outputs only) and DAMPEN the final weight of oscillation dampening (``QATConfig.dampen``).

    python experiments/lsq_qat.py --regimes w5pt --variants fixed:0.01 lsq:0.01 lsq:0.001 --seeds 0 \
        --out experiments/results/lsq_qat_w5pt.json
"""

from __future__ import annotations

import copy
import json
import time
from datetime import date

from _common import apply_threads, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.models.graph import build_layer_graph
from autoselect.plan import LayerAction, Plan
from autoselect.quant import quant_layers
from autoselect.quant.apply import calibrated_model, finish_plan, plan_specs, retrained_fraction
from autoselect.train import QATConfig, train_qat

REGIMES = {"w8pt": ("generic-pt", 8), "w5pt": ("generic-pt", 5), "w4pt": ("generic-pt", 4),
           "w4pc": ("generic", 4)}


def _variant(text: str) -> tuple[str, str, float, float, float, float, float]:
    parts = text.split(":")
    kind, lr = parts[0], float(parts[1])
    if kind not in ("lsq", "fixed", "steps"):
        raise SystemExit(f"variant kind must be lsq, fixed or steps, got {kind!r}")
    step_lr = float(parts[2]) if len(parts) > 2 else 1e-3
    distill = float(parts[3]) if len(parts) > 3 else 0.0
    wd = float(parts[4]) if len(parts) > 4 else 5e-4
    dampen = float(parts[5]) if len(parts) > 5 else 0.0
    return text, kind, lr, step_lr, distill, wd, dampen


def _plan(name: str, bits: int, act_bits: int | None, learn: bool, target: str) -> Plan:
    """``full`` (every layer retrained) or ``roles:R1+R2`` (the layers of those roles retrained, the rest frozen),
    every layer at the regime's bits and the target's activations."""
    qat = LayerAction(kind="qat", weight_bits=bits, act_bits=act_bits, learn_scales=learn)
    if name == "full":
        return Plan(layers={"_default": qat}, target=target)
    if not name.startswith("roles:"):
        raise SystemExit(f"--plans takes 'full' or 'roles:R1+R2', got {name!r}")
    layers = {f"role:{r}": qat for r in name[len("roles:"):].split("+")}
    return Plan(layers={**layers, "_default": LayerAction(weight_bits=bits, act_bits=act_bits)}, target=target)


def main() -> None:
    ap = reference_parser(__doc__, "lsq_qat.json")
    ap.add_argument("--regimes", nargs="+", default=["w5pt"], choices=list(REGIMES))
    ap.add_argument("--variants", nargs="+", default=["fixed:0.01", "lsq:0.01", "lsq:0.001"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--plans", nargs="+", default=["full"],
                    help="'full' (every layer retrained) or 'roles:R1+R2' (those roles retrained, the rest frozen)")
    ap.add_argument("--act-bits", type=int, default=None, help="activation bits of every layer (default: 8)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    args = ap.parse_args()
    apply_threads(args)

    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.test_images).with_normalize(lm.normalize)
    calib = train.subset(1024)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    fp32 = accuracy(lm.model, test.batches(500))
    print(f"FP32 {fp32:.2f}% on {len(test)} test images; {args.steps} steps x {args.batch_size}", flush=True)
    rows = []
    bases: dict[str, tuple] = {}  # one calibrated model per quantization configuration (AdaRound takes minutes)
    for regime in args.regimes:
        target, bits = REGIMES[regime]
        runs = [(v, n, s) for v in map(_variant, args.variants) for n in args.plans for s in args.seeds]
        for (text, kind, lr, step_lr, distill, wd, dampen), name, seed in runs:
            plan = _plan(name, bits, args.act_bits, kind != "fixed", target)
            specs, actions = plan_specs(plan, graph)
            key = repr(sorted(specs.items()))
            if key not in bases:
                t0 = time.perf_counter()
                base = calibrated_model(lm.model, specs, graph, calib.batches(128), target=target)
                calib_s = time.perf_counter() - t0
                frozen = accuracy(base, test.batches(500))  # the frozen PTQ (bias correction kept as a correction)
                print(f"{regime} {name}: PTQ (all frozen) {frozen:.2f}% after {calib_s:.0f} s of calibration",
                      flush=True)
                bases[key] = (base, calib_s, frozen)
            base, calib_s, frozen = bases[key]
            q = finish_plan(copy.deepcopy(base), plan, actions, graph)
            if kind == "steps":
                for layer in quant_layers(q).values():
                    layer.layer.weight.requires_grad_(False)
            start = accuracy(q, test.batches(500))
            cfg = QATConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, step_lr=step_lr, seed=seed,
                            distill=distill, weight_decay=wd, dampen=dampen)
            t = time.perf_counter()
            res = train_qat(q, train, test, cfg, teacher=lm.model if distill else None)
            row = {"regime": regime, "plan": name, "act_bits": args.act_bits or 8, "variant": text,
                   "kind": kind, "weight_decay": wd, "dampen": dampen, "lr": lr, "step_lr": step_lr, "distill": distill, "seed": seed,
                   "ptq_frozen_top1": frozen, "qat_start_top1": start, "qat_top1": res.top1,
                   "gain_over_start": (res.top1 or 0) - start, "train_s": time.perf_counter() - t,
                   "retrained_pct": 100 * retrained_fraction(q), "calib_s": calib_s,
                   "first_loss": res.history[0]["loss"], "last_loss": res.history[-1]["loss"]}
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            save_result(args.out, {"date": date.today().isoformat(), "fp32_top1": fp32, "steps": args.steps,
                                   "batch_size": args.batch_size, "calib_images": 1024,
                                   "test_images": len(test), "rows": rows})


if __name__ == "__main__":
    main()
