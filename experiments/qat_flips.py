"""Does QAT move a 4-bit weight off its post-training grid point? Count, per variant, the share of retrained weights
whose integer value changed during training, beside top-1.

After AdaRound (below 5 bits, the methods' default) a layer's latent weight *is* its grid point
(``QuantLayer.fix_weight``): a weight only changes its integer value once training has moved it half a step. This
probe measures how many do at the default recipe (SGD, lr 1e-3, 300 steps) and with the weight optimizer changed.
The calibrated model is cached (``--cache``), so variants after the first start in seconds.

    python experiments/qat_flips.py --regime w4pt --variants sgd:0.001 adam:0.00001 adam:0.0001 --seeds 0 \
        --out experiments/results/qat_flips.json

Variants: ``sgd:LR`` (the trainer's default optimizer for weights), ``adam:LR`` (Adam for the weights and biases
at LR, on the same schedule) or ``adamgrid:LR`` (Adam with each layer's rate LR x its weight step: LR counts in
grid steps per update).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import date
from pathlib import Path

import torch
from _common import apply_threads, reference_parser, save_result

import autoselect.train.qat as qat_mod
from autoselect import accuracy, load_images, load_model
from autoselect.models.graph import build_layer_graph
from autoselect.plan import LayerAction, Plan
from autoselect.quant import quant_layers
from autoselect.quant.apply import calibrated_model, finish_plan, plan_specs
from autoselect.train import QATConfig, train_qat

REGIMES = {"w4pt": ("generic-pt", 4), "w4pc": ("generic", 4), "w5pt": ("generic-pt", 5)}


def _int_weights(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, ql in quant_layers(q).items():
        if ql.spec is None or ql.spec.weight is None or not ql.layer.weight.requires_grad:
            continue
        with torch.no_grad():
            scale, zp = ql.weight_qparams()
            w = ql.effective_weight()
            shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
            v = torch.round(w / scale.view(shape)) + zp.view(shape).float()
            out[name] = v.clamp(ql.spec.weight.qmin, ql.spec.weight.qmax)
    return out


class _AdamWeights(qat_mod._Optimizers):
    """Adam, not SGD, for the weights and biases (the learned steps keep their own Adam)."""

    def __init__(self, qmodel, cfg):  # type: ignore[no-untyped-def]
        super().__init__(qmodel, cfg)
        params = [p for g in self.sgd.param_groups for p in g["params"]]
        self.sgd = torch.optim.Adam(params, lr=cfg.lr)  # type: ignore[assignment]


class _AdamGrid(qat_mod._Optimizers):
    """Adam for the weights with each layer's rate ``lr`` times its weight grid's step (the mean step for
    per-channel grids): the rate counts in grid steps per update, alike for every layer; biases at ``lr`` times the
    bias's int32 step is meaningless, so they keep Adam at ``lr`` x 1e-3."""

    def __init__(self, qmodel, cfg):  # type: ignore[no-untyped-def]
        super().__init__(qmodel, cfg)
        groups, seen = [], set()
        for ql in quant_layers(qmodel).values():
            w = ql.layer.weight
            if not w.requires_grad or ql.spec is None or ql.spec.weight is None:
                continue
            step = float(ql.weight_qparams()[0].float().mean())
            groups.append({"params": [w], "lr": cfg.lr * step, "base": cfg.lr * step})
            seen.add(id(w))
        rest = [p for g in self.sgd.param_groups for p in g["params"] if id(p) not in seen]
        groups.append({"params": rest, "lr": cfg.lr * 1e-3, "base": cfg.lr * 1e-3})
        self.sgd = torch.optim.Adam(groups)  # type: ignore[assignment]

    def schedule(self, step):  # type: ignore[no-untyped-def]
        factor = self.cfg.lr_factor(step)
        for group in self.sgd.param_groups:
            group["lr"] = group["base"] * factor
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] = self.cfg.step_lr * factor
        return self.cfg.lr * factor


def main() -> None:
    ap = reference_parser(__doc__, "qat_flips.json")
    ap.add_argument("--regime", default="w4pt", choices=list(REGIMES))
    ap.add_argument("--variants", nargs="+", default=["sgd:0.001"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", default="experiments/results/.cache", help="folder for the calibrated model")
    ap.add_argument("--test-images", type=int, default=None)
    args = ap.parse_args()
    apply_threads(args)

    lm = load_model("mobilenet_v2", weights=args.weights)
    train = load_images(args.data, split="train").with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.test_images).with_normalize(lm.normalize)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    target, bits = REGIMES[args.regime]
    plan = Plan(layers={"_default": LayerAction(kind="qat", weight_bits=bits)}, target=target)
    specs, actions = plan_specs(plan, graph)
    cache = Path(args.cache) / f"calibrated_{args.regime}.pt"
    if cache.is_file():
        base = torch.load(cache, weights_only=False)
    else:
        t0 = time.perf_counter()
        base = calibrated_model(lm.model, specs, graph, train.subset(1024).batches(128), target=target)
        print(f"calibrated in {time.perf_counter() - t0:.0f} s", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(base, cache)
    rows = []
    for text in args.variants:
        parts = text.split(":")
        opt, lr = parts[0], float(parts[1])
        for seed in args.seeds:
            q = finish_plan(copy.deepcopy(base), plan, actions, graph)
            start = accuracy(q, test.batches(500))
            before = _int_weights(q)
            qat_mod._Optimizers = {"adam": _AdamWeights, "adamgrid": _AdamGrid, "sgd": _SGD}[opt]  # type: ignore
            t = time.perf_counter()
            res = train_qat(q, train, test, QATConfig(steps=args.steps, lr=lr, seed=seed))
            after = _int_weights(q)
            changed = sum(int((after[n] != before[n]).sum()) for n in before)
            total = sum(before[n].numel() for n in before)
            moved = sum(float((after[n] - before[n]).abs().sum()) for n in before)
            row = {"regime": args.regime, "variant": text, "seed": seed, "start": start, "top1": res.top1,
                   "changed_pct": 100 * changed / total, "mean_abs_int_change": moved / total,
                   "train_s": time.perf_counter() - t}
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            save_result(args.out, {"date": date.today().isoformat(), "steps": args.steps, "rows": rows})


_SGD = qat_mod._Optimizers

if __name__ == "__main__":
    main()
