#!/usr/bin/env bash
# Issue 13, session 10, second part (after spread_mse.sh ran seed 0 in full and seeds 1-2 for W8/W5): autoselect's
# W4 rows for calibration seeds 1 and 2 (AIMET's for those seeds are session 9's, same code and seeds), then the
# ReLU fixture at W4 per-channel, autoselect and AIMET AdaRound, seeds 0-2, each seed in one sequential run.
set -euo pipefail
cd "$(dirname "$0")"
relu=../../../shared/fixtures/mobilenet_v2_relu_cifar10_fp32.pt
for s in 1 2; do
  python run.py --calib-seed "$s" --results-dir "results_seeds_mse/seed$s" --peers autoselect --regimes w4pt,w4pc \
    --pipelines freeze --merge
done
for s in 0 1 2; do
  python run.py --calib-seed "$s" --results-dir "results_relu_seeds_mse/seed$s" --checkpoint "$relu" \
    --peers autoselect,aimet --regimes w4pc --pipelines autoselect:freeze,aimet:adaround
done
