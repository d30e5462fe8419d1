#!/usr/bin/env bash
# Spread over calibration sets: the close contests of issue 13, each calibration seed in one sequential run, so
# that every (autoselect, peer) pair of a seed is timed on the same quiet machine. Results per seed under
# results_seeds/seed<S>/ (main checkpoint) and results_relu_seeds/seed<S>/ (ReLU checkpoint).
#   bash experiments/peers/spread.sh "0 1 2"
set -euo pipefail
cd "$(dirname "$0")"
seeds="${1:-0 1 2}"
relu=../../../shared/fixtures/mobilenet_v2_relu_cifar10_fp32.pt
for s in $seeds; do
  d=results_seeds/seed$s
  python run.py --calib-seed "$s" --results-dir "$d" --peers autoselect --regimes w8pt,w5pt,w4pc,w4pt --pipelines freeze
  python run.py --calib-seed "$s" --results-dir "$d" --peers brevitas --regimes w8pt,w5pt --pipelines cle_bc --merge
  python run.py --calib-seed "$s" --results-dir "$d" --peers aimet --regimes w4pc --pipelines adaround --merge
  python run.py --calib-seed "$s" --results-dir "$d" --peers aimet --regimes w4pt --pipelines cle_adaround --merge
done
for s in $seeds; do
  d=results_relu_seeds/seed$s
  python run.py --calib-seed "$s" --results-dir "$d" --checkpoint "$relu" --peers autoselect,aimet --regimes w4pc \
    --pipelines autoselect:freeze,aimet:adaround
done
