"""The FP32 reference row: the checkpoint's own top-1 on the same test images (regime 'fp32'); also records the
top-1 with BN folded (common.fold_batchnorm), which must match. Runs with the system python."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    ap = common.peer_parser("fp32", ["fp32"])
    args = ap.parse_args()
    if args.list:
        print("fp32")
        return
    common.set_threads(args.threads)
    ctx = common.Context(args)
    top1, eval_s = common.timed_eval(ctx, ctx.fp32_model())
    folded, _ = common.timed_eval(ctx, common.fold_batchnorm(ctx.fp32_model()))
    common.write_result(args, "fp32", "fp32", "fp32", status="ok", top1=top1, calib_seconds=0.0,
                        eval_seconds=eval_s, settings=f"FP32 {ctx.model_kind}, no quantization",
                        tool="torch", extra={"top1_bn_folded": round(folded, 4),
                                             "checkpoint_test_acc": ctx.ckpt.get("test_acc")})
    print(f"[fp32] top1 {top1:.2f}% (BN folded {folded:.2f}%)", flush=True)


if __name__ == "__main__":
    main()
