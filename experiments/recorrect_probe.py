"""Probe (issue 14, session 18): after selective QAT of the W4 per-tensor search's plan, recompute the frozen layers'
sequential bias correction with the trained layers in place, and score the model again. Reads the checkpoints of
``experiments/search_then_train.sh search_w4pt_s18 ...`` (git-ignored ``qat.pt``; rerun that chain first).

    python experiments/recorrect_probe.py 0 1 2
"""
import sys
import torch
from _common import RESULTS, SHARED
from autoselect.prepare import prepare
from autoselect.plan import load_plan
from autoselect.models.graph import build_layer_graph
from autoselect.quant.apply import apply_plan, plan_specs
from autoselect.quant.simulate import quant_layers, quantize_model, set_mode
from autoselect.quant.methods import MethodContext, run_transforms
from autoselect.quant.methods import bias_correction as bc
from autoselect.train.qat import load_qat_checkpoint
from autoselect.evaluate import accuracy
torch.set_num_threads(2)
R = RESULTS / "search_w4pt_s18"
plan = load_plan(f"{R}/plan.json")
for seed in map(int, sys.argv[1:]):
    prep = prepare("mobilenet_v2", weights=str(SHARED / "fixtures" / "mobilenet_v2_cifar10_fp32.pt"),
                   data=str(SHARED / "datasets" / "cifar10"), seed=seed, train_images=None, test_images=None)
    lm = prep.loaded
    calib = prep.train.subset(1024, seed=seed)
    graph = build_layer_graph(lm.model, (1, 3, 32, 32))
    q = apply_plan(lm.model, plan, calib.batches(128), graph=graph)
    ptq = accuracy(q, prep.test.batches(500))
    load_qat_checkpoint(f"{R}/train_seed{seed}/qat.pt", q, target=plan.target)
    trained = accuracy(q, prep.test.batches(500))
    frozen = [p for p, l in quant_layers(q).items() if l.spec is not None and l.spec.bias_correction
              and not any(x.requires_grad for x in l.parameters())]
    # the float reference: the same BN-folded, equalized float model (equalization is data-free)
    specs, _ = plan_specs(plan, graph)
    ref = quantize_model(lm.model, specs, graph=graph, integer_graph=False)
    run_transforms(ref, calib.batches(128))
    set_mode(ref, "fp32")
    set_mode(q, "quant")
    with torch.no_grad():
        bc._sequential(MethodContext(model=q, reference=ref, paths=frozen, data=calib.batches(128),
                                     device=torch.device("cpu"), graph=graph), frozen)
    after = accuracy(q, prep.test.batches(500))
    print(f"seed {seed}: PTQ {ptq:.2f}  trained {trained:.2f}  frozen layers re-corrected ({len(frozen)}) {after:.2f}", flush=True)
