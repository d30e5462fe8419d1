"""Where the batch-1 time of the exported INT8 MobileNetV2 goes in onnxruntime, next to the FP32 model's.

Everything is measured in one process, interleaved, one intra-op thread unless stated:

1. per-node cost in context: the session-optimized graph cut after node k, for every k; the cost of node k is the
   difference between consecutive cuts, each cut timed by its fastest round (the profiler's own per-node overhead
   is larger than most kernels here; single nodes should be read in sums, not alone);
   summed by kind (stem / depthwise / pointwise conv, residual add, the rest);
2. INT8 / FP32 latency by batch size, and at batch 1 with two threads;
3. our export against onnxruntime's own static quantization (QDQ and QOperator) of the same FP32 model.

    python experiments/latency_breakdown.py --out experiments/results/latency_breakdown.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import onnx
from _common import apply_threads, reference_parser, save_result
from onnx import helper

from autoselect import load_images, load_model
from autoselect.export import export
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan


def session(model: str | bytes, *, threads: int = 1, optimize: bool = True, save_to: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save_to:
        opts.optimized_model_filepath = save_to
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def timed(runs: dict, rounds: int, iters: int) -> dict[str, list[float]]:
    """runs: name -> zero-argument callable. Interleaved rounds; per round the mean time of ``iters`` calls (µs)."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            for _ in range(max(5, iters // 10)):
                fn()
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            out[k].append((time.perf_counter() - t) / iters * 1e6)
    return out


def kind_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str:
    op = node.op_type
    if op in ("QLinearConv", "Conv"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[3] if op == "QLinearConv" else node.input[1])
        if attrs.get("group", 1) > 1:
            return "conv depthwise"
        kernel = attrs.get("kernel_shape") or (list(w.dims[2:]) if w is not None else [])
        if list(kernel) == [3, 3]:  # MobileNetV2's only ungrouped 3x3 conv
            return "conv stem (3x3, 3 input channels)"
        return "conv pointwise (1x1)"
    if op in ("QLinearAdd", "Add"):
        return "residual add"
    return "other (input/output, pooling, classifier, layout)"


def per_node(path: Path, x: np.ndarray, rounds: int, iters: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = str(Path(tmp) / "opt.onnx")
        session(str(path), save_to=opt_path)
        m = onnx.load(opt_path)
    inits = {i.name: i for i in m.graph.initializer}
    cuts = {}
    for k, node in enumerate(m.graph.node):
        cut = onnx.ModelProto()
        cut.CopyFrom(m)
        del cut.graph.node[k + 1:]
        del cut.graph.output[:]
        cut.graph.output.extend([helper.make_empty_tensor_value_info(node.output[0])])
        s = session(cut.SerializeToString(), optimize=False)
        cuts[k] = (lambda s=s: s.run(None, {"input": x}))
    t = timed(cuts, rounds, iters)
    med = [min(t[k]) for k in range(len(m.graph.node))]  # the least-disturbed round of each cut
    rows, prev = [], 0.0
    for k, node in enumerate(m.graph.node):
        rows.append({"op": node.op_type, "kind": kind_of(node, inits), "us": med[k] - prev})
        prev = med[k]
    return rows


def main() -> None:
    ap = reference_parser(__doc__, "latency_breakdown.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--work", default="/tmp/autoselect-latency-breakdown")
    args = ap.parse_args()
    apply_threads(args)
    lm = load_model("mobilenet_v2", weights=args.weights)
    calib = load_images(args.data, split="train", limit=1024).with_normalize(lm.normalize)
    q = apply_plan(lm.model, Plan(layers={"_default": LayerAction()}, target="x86"), calib.batches(128))
    res = export(q, calib.batches(128), Path(args.work) / "x86")
    x1 = next(iter(calib.batches(1)))[0].numpy().astype(np.float32)

    # 1. per-node cost in context
    nodes = {"fp32": per_node(res.fp32_path, x1, args.rounds + 2, args.iters),
             "int8": per_node(res.int8_path, x1, args.rounds + 2, args.iters)}
    by_kind = {}
    for name, rows in nodes.items():
        agg: dict[str, dict[str, float]] = defaultdict(lambda: {"nodes": 0, "us": 0.0})
        for r in rows:
            agg[r["kind"]]["nodes"] += 1
            agg[r["kind"]]["us"] += r["us"]
        by_kind[name] = dict(agg)
        print(name, {k: (v["nodes"], round(v["us"], 1)) for k, v in agg.items()}, flush=True)

    # 2. by batch size, and two threads at batch 1
    runs = {}
    for batch in (1, 2, 4, 8):
        xb = np.repeat(x1, batch, axis=0)
        for name, path in (("fp32", res.fp32_path), ("int8", res.int8_path)):
            s = session(str(path))
            runs[f"{name} b{batch}"] = (lambda s=s, xb=xb: s.run(None, {"input": xb}))
    for name, path in (("fp32", res.fp32_path), ("int8", res.int8_path)):
        s = session(str(path), threads=2)
        runs[f"{name} b1 2 threads"] = (lambda s=s: s.run(None, {"input": x1}))

    # 3. onnxruntime's own static quantization of the same FP32 model
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": b[0].numpy().astype(np.float32)} for b in calib.batches(64)][:8])

        def get_next(self):
            return next(self.it, None)

    work = Path(args.work)
    quant_pre_process(str(res.fp32_path), str(work / "pre.onnx"))
    for fmt in ("QDQ", "QOperator"):
        out = work / f"ort_static_{fmt}.onnx"
        quantize_static(str(work / "pre.onnx"), str(out), Reader(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        s = session(str(out))
        runs[f"onnxruntime quantize_static {fmt} b1"] = (lambda s=s: s.run(None, {"input": x1}))
        runs[f"onnxruntime quantize_static {fmt} b8"] = (lambda s=s, x8=np.repeat(x1, 8, axis=0):
                                                         s.run(None, {"input": x8}))
    lat = timed(runs, args.rounds, args.iters)
    med = {k: statistics.median(v) for k, v in lat.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(lat[a], lat[b]))

    ratios = {f"int8/fp32 batch {b}": ratio(f"int8 b{b}", f"fp32 b{b}") for b in (1, 2, 4, 8)}
    ratios["int8/fp32 batch 1, 2 threads"] = ratio("int8 b1 2 threads", "fp32 b1 2 threads")
    ratios["int8 / fp32 batch 1, each at its faster thread count"] = (
        min(med["int8 b1"], med["int8 b1 2 threads"]) / min(med["fp32 b1"], med["fp32 b1 2 threads"]))
    for fmt in ("QDQ", "QOperator"):
        for b in (1, 8):
            ratios[f"onnxruntime quantize_static {fmt} / fp32 batch {b}"] = ratio(
                f"onnxruntime quantize_static {fmt} b{b}", f"fp32 b{b}")
    conv_int8 = sum(v["us"] for k, v in by_kind["int8"].items() if k.startswith("conv"))
    fp32_total = sum(v["us"] for v in by_kind["fp32"].values())
    summary = {
        "date": date.today().isoformat(), "rounds": args.rounds, "iters": args.iters,
        "per_node_by_kind_us": by_kind, "int8_conv_nodes_alone_over_fp32_total": conv_int8 / fp32_total,
        "latency_us": med, "ratios": ratios, "nodes": nodes,
    }
    save_result(args.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "nodes"}, indent=2))


if __name__ == "__main__":
    main()
