"""autoselect rows for the peer benchmark: PLACEHOLDER, to be written by the autoselect engineers.

Contract (what run.py expects, same as every peer_*.py):
  * run with the system python (the one autoselect is installed in), from any directory;
  * accept the shared options of common.peer_parser (--checkpoint, --data, --regimes, --pipelines, --calib-images,
    --test-images, --calib-batch-size, --eval-batch-size, --threads, --out-dir, ...);
  * use common.Context for the data (same calibration rule, same test subset) and common.evaluate for top-1;
  * write one JSON per (pipeline, regime) with common.write_result (common.main does this for you).

run.py marks the rows 'not run' while this file raises NotImplementedError.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ["autoselect"]


def run(ctx: common.Context, pipeline: str, regime: common.Regime) -> dict:
    raise NotImplementedError("written by the autoselect engineers")


if __name__ == "__main__":
    args = common.peer_parser("autoselect", PIPELINES).parse_args()
    if args.list:
        print(" ".join(PIPELINES))
        raise SystemExit(0)
    raise NotImplementedError("written by the autoselect engineers")
