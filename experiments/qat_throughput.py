"""Training throughput of selective QAT plans vs full QAT, measured in one run, interleaved step by step.

Each step of every plan runs back to back on the same batch (full QAT, then each plan, then the next batch), as the
trainer runs it (channels-last on CPU); speed-up = median over steps of (full QAT step time) / (plan step time),
so that the machine's slow drifts hit every plan alike.

    python experiments/qat_throughput.py --steps 60 --out experiments/results/qat_throughput.json
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from datetime import date

import torch
import torch.nn.functional as F

from _common import apply_threads, reference_parser, save_result

from autoselect import load_images, load_model
from autoselect.plans import builtin_plan
from autoselect.quant import dwconv
from autoselect.models.graph import build_layer_graph
from autoselect.quant.apply import apply_plan, retrained_fraction
from autoselect.quant.simulate import quant_layers
from autoselect.train.qat import uses_channels_last

PLANS = ("seed001_full_qat", "seed001_depthwise_1x1_asym", "seed001_depthwise_only", "seed001_classifier_only")
BEFORE = "seed001_full_qat (before: PyTorch's depthwise gradient, default memory format)"


def mac_ceiling(graph, qmodel: torch.nn.Module) -> dict[str, float]:
    """Multiply-accumulates per image of one training step, by the layer graph: every layer's forward; the input
    gradient of every layer after the first trainable one; the weight gradient of every trainable layer."""
    layers = quant_layers(qmodel)
    trainable = {p for p, q in layers.items() if q.layer.weight.requires_grad}
    first = min((info.order for info in graph if info.path in trainable), default=None)
    fwd = sum(info.macs for info in graph)
    inp = sum(info.macs for info in graph if first is not None and info.order > first)
    wgt = sum(info.macs for info in graph if info.path in trainable)
    return {"forward": fwd, "input_grad": inp, "weight_grad": wgt, "total": fwd + inp + wgt}


def one_step(qmodel: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(qmodel(x), y).backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = reference_parser(__doc__, "qat_throughput.json")
    ap.add_argument("--target", default="generic-pt")
    ap.add_argument("--weight-bits", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-channels-last", action="store_true", help="train in the default memory format")
    ap.add_argument("--no-before", action="store_true", help="leave out full QAT as trained before these speed-ups")
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train", limit=args.batch_size * 8).with_normalize(lm.normalize)
    batches = list(train.batches(args.batch_size, shuffle=True, augment=True))
    channels_last = not args.no_channels_last and uses_channels_last("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    names = PLANS if args.no_before else (*PLANS, BEFORE)
    models, opts = {}, {}
    for name in names:
        plan = builtin_plan("seed001_full_qat" if name == BEFORE else name)
        layers = {k: replace(a, weight_bits=args.weight_bits) for k, a in plan.layers.items()}
        models[name] = apply_plan(lm.model, replace(plan, layers=layers, target=args.target), batches[:4])
        models[name].to(memory_format=torch.contiguous_format if name == BEFORE else fmt).train()
        opts[name] = torch.optim.SGD([p for p in models[name].parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times: dict[str, list[float]] = {n: [] for n in names}
    tap_limit = dwconv.TAP_GRAD_MAX_POSITIONS
    for i in range(args.warmup + args.steps):
        x, y = batches[i % len(batches)]
        for name in names:
            dwconv.TAP_GRAD_MAX_POSITIONS = 0 if name == BEFORE else tap_limit
            xi = x.contiguous() if name == BEFORE else x.contiguous(memory_format=fmt)
            t = one_step(models[name], opts[name], xi, y)
            if i >= args.warmup:
                times[name].append(t)
        if (i + 1) % 10 == 0:
            print(f"step {i + 1}:", {n: round(1 / statistics.median(v), 2) for n, v in times.items() if v}, flush=True)
    dwconv.TAP_GRAD_MAX_POSITIONS = tap_limit
    full = times["seed001_full_qat"]
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    macs = {n: mac_ceiling(graph, models[n]) for n in names}
    summary = {
        "date": date.today().isoformat(), "batch_size": args.batch_size, "steps": args.steps,
        "target": args.target, "weight_bits": args.weight_bits, "channels_last": channels_last,
        "threads": torch.get_num_threads(),
        "plans": {n: {"retrained_pct": 100 * retrained_fraction(models[n]),
                      "median_steps_per_s": 1 / statistics.median(v),
                      "median_speedup_vs_full": statistics.median(a / b for a, b in zip(full, v)),
                      "step_macs_per_image": macs[n],
                      "mac_ceiling_vs_full": macs["seed001_full_qat"]["total"] / macs[n]["total"],
                      "speedup_quartiles": [round(q, 3) for q in statistics.quantiles(
                          [a / b for a, b in zip(full, v)], n=4)]}
                  for n, v in times.items()},
    }
    save_result(args.out, summary)
    print(json.dumps({n: {k: v if isinstance(v, (list, dict)) else round(v, 3) for k, v in d.items()} for n, d in summary["plans"].items()},
                     indent=2))


if __name__ == "__main__":
    main()
