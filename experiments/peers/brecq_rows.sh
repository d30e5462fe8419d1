#!/usr/bin/env bash
# Issue 14, session 12: autoselect's block reconstruction (freeze_brecq) beside its AdaRound default (freeze) and the
# peers, at W4/A4 and W4 per-tensor, calibration draw 0, merged into results_seeds_mse/seed0; then MCT's GPTQ at the
# two W4/A8 regimes (a4_gptq.sh's second line, run after these).
set -euo pipefail
cd "$(dirname "$0")"
d=results_seeds_mse/seed0
while pgrep -f "run.py --calib-seed 0 --results-dir $d" > /dev/null; do sleep 5; done  # a4_gptq.sh's first run
python run.py --calib-seed 0 --results-dir "$d" --merge --peers autoselect --regimes w4pca4,w4pt --pipelines freeze_brecq
python run.py --calib-seed 0 --results-dir "$d" --merge --peers mct --regimes w4pt,w4pc --pipelines gptq
