"""Exported INT8 MobileNetV2 vs onnxruntime FP32: batch-1 latency, size, and simulated vs real top-1.

Also answers why a QDQ model can run barely faster than FP32: the same QDQ model with the Q/DQ pairs on conv
*outputs* removed (what an exporter that only quantizes conv inputs and weights produces) leaves onnxruntime no
DQ -> Conv -> Q pattern to fuse into QLinearConv, so it runs float convs on dequantized tensors.

    python experiments/export_bench.py --out experiments/results/export_bench.json
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import onnx
from _common import apply_threads, reference_parser, save_result

from autoselect import accuracy, load_images, load_model
from autoselect.export import export, ort_accuracy, ort_latency_ms
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan


def strip_output_qdq(src: Path, dst: Path) -> int:
    """Bypass every QuantizeLinear -> DequantizeLinear pair that directly follows a Conv."""
    m = onnx.load(str(src))
    prod = {o: n for n in m.graph.node for o in n.output}
    cons: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    rename, drop = {}, set()
    for q in m.graph.node:
        if q.op_type != "QuantizeLinear" or prod.get(q.input[0]) is None or prod[q.input[0]].op_type != "Conv":
            continue
        dqs = cons.get(q.output[0], [])
        if len(dqs) == 1 and dqs[0].op_type == "DequantizeLinear":
            rename[dqs[0].output[0]] = q.input[0]
            drop.update({id(q), id(dqs[0])})
    nodes = [n for n in m.graph.node if id(n) not in drop]
    for n in nodes:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))
    return len(rename)


def main() -> None:
    ap = reference_parser(__doc__, "export_bench.json")
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads for latency")
    ap.add_argument("--work", default="/tmp/autoselect-export-bench")
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    calib = load_images(args.data, split="train", limit=1024).with_normalize(lm.normalize)
    test = load_images(args.data, split="test", limit=args.eval_images).with_normalize(lm.normalize)
    shape = (1, 3, 32, 32)
    variants = {
        "x86": Plan(layers={"_default": LayerAction()}, target="x86"),
        "x86_smooth_dw": Plan(layers={"role:depthwise": LayerAction(smooth=True), "_default": LayerAction()},
                              target="x86"),
        "qnnpack_8bit_act": Plan(layers={"_default": LayerAction()}, target="qnnpack"),
    }
    rows = {}
    fp32_path = None
    for name, plan in variants.items():
        q = apply_plan(lm.model, plan, calib.batches(128))
        res = export(q, calib.batches(128), Path(args.work) / name)
        fp32_path = res.fp32_path
        rows[name] = {"sim_top1": accuracy(q, test.batches(500)), "int8_top1": ort_accuracy(res.int8_path, test.batches(500)),
                      "int8_bytes": res.int8_bytes, "fp32_bytes": res.fp32_bytes, "path": str(res.int8_path)}
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "path"}), flush=True)
    assert fp32_path is not None
    stripped = Path(args.work) / "x86" / "model_int8_no_output_qdq.onnx"
    n_stripped = strip_output_qdq(Path(rows["x86"]["path"]), stripped)
    # latency: interleave the models, three rounds, median of medians
    paths = {"fp32": fp32_path, **{k: Path(v["path"]) for k, v in rows.items()}, "x86_no_output_qdq": stripped}
    lat: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(3):
        for k, p in paths.items():
            lat[k].append(ort_latency_ms(p, shape, runs=args.runs, threads=args.ort_threads))
    med = {k: sorted(v)[1] for k, v in lat.items()}
    print("latency ms (batch 1):", {k: round(v, 3) for k, v in med.items()}, flush=True)
    summary = {
        "date": date.today().isoformat(), "ort_threads": args.ort_threads, "runs": args.runs, "test_images": len(test),
        "fp32_torch_top1": accuracy(lm.model, test.batches(500)),
        "fp32_onnx_top1": ort_accuracy(fp32_path, test.batches(500)),
        "variants": rows, "latency_ms": med, "latency_rounds_ms": lat,
        "int8_over_fp32": med["x86"] / med["fp32"],
        "smoothing_overhead": med["x86_smooth_dw"] / med["x86"] - 1.0,
        "no_output_qdq_over_fp32": med["x86_no_output_qdq"] / med["fp32"],
        "output_qdq_pairs_removed": n_stripped,
    }
    save_result(args.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("variants", "latency_rounds_ms")}, indent=2))


if __name__ == "__main__":
    main()
