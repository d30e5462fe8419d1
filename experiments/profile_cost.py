"""Profiler cost on the reference MobileNetV2: full profile vs one FP32 pass vs one-layer-at-a-time profiling.

All three are measured in the same run, alternating, ``--rounds`` times; ratios are taken per round and the median
is reported (the machine is shared and noisy, so absolute times mean little).

    python experiments/profile_cost.py --rounds 5 --out experiments/results/profile_cost.json
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import date

from _common import apply_threads, reference_parser, save_result

from autoselect import load_images, load_model, profile, w8a8
from autoselect.evaluate import predict


def main() -> None:
    ap = reference_parser(__doc__, "profile_cost.json")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    apply_threads(args)

    lm = load_model("mobilenet_v2", weights=args.weights)
    calib = load_images(args.data, split="train", limit=args.images).with_normalize(lm.normalize)
    batches = list(calib.batches(args.batch_size))  # decoded once; every method sees the same tensors
    spec = w8a8(per_channel=True)
    predict(lm.model, batches)  # warm-up

    rows = []
    for r in range(args.rounds):
        t = time.perf_counter()
        predict(lm.model, batches)
        fp32 = time.perf_counter() - t
        t = time.perf_counter()
        rep = profile(lm.model, batches, spec=spec)
        full = time.perf_counter() - t
        t = time.perf_counter()
        iso = profile(lm.model, batches, spec=spec, isolated=True)
        with_iso = time.perf_counter() - t
        rows.append({
            "fp32_s": fp32, "profile_s": full, "profile_isolated_s": with_iso,
            "isolated_part_s": iso.timings["isolated_s"],
            "ratio_profile": full / fp32, "ratio_isolated_part": iso.timings["isolated_s"] / fp32,
            "ratio_profile_with_isolated": with_iso / fp32,
            "reference_cached": rep.timings["reference_cached"],
        })
        print(f"round {r + 1}: fp32 {fp32:.2f}s  profile {full:.2f}s ({full / fp32:.2f}x)  "
              f"isolated part {iso.timings['isolated_s']:.2f}s ({iso.timings['isolated_s'] / fp32:.1f}x)", flush=True)
    layers = len(rep.layers)
    summary = {
        "date": date.today().isoformat(),
        "images": args.images, "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "layers": layers, "spec": spec.describe(),
        "median_ratio_profile": statistics.median(r["ratio_profile"] for r in rows),
        "median_ratio_isolated_part": statistics.median(r["ratio_isolated_part"] for r in rows),
        "median_ratio_profile_with_isolated": statistics.median(r["ratio_profile_with_isolated"] for r in rows),
        "rounds_detail": rows,
    }
    save_result(args.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds_detail"}, indent=2))


if __name__ == "__main__":
    main()
