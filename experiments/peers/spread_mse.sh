#!/usr/bin/env bash
# Issue 13, session 10: the spread runs after the finer mse weight-range grid (commit 4fbb709), one sequential run
# on a quiet machine, into results_seeds_mse/seed<S>/. First the fast regimes (W8/W5 per-tensor, autoselect and
# Brevitas CLE + bias correction) for every seed, then W4 (autoselect and AIMET, AdaRound) seed by seed.
#   bash experiments/peers/spread_mse.sh "0 1 2"
set -euo pipefail
cd "$(dirname "$0")"
seeds="${1:-0 1 2}"
for s in $seeds; do
  d=results_seeds_mse/seed$s
  python run.py --calib-seed "$s" --results-dir "$d" --peers autoselect --regimes w8pt,w5pt --pipelines freeze
  python run.py --calib-seed "$s" --results-dir "$d" --peers brevitas --regimes w8pt,w5pt --pipelines cle_bc --merge
done
for s in $seeds; do
  d=results_seeds_mse/seed$s
  python run.py --calib-seed "$s" --results-dir "$d" --peers autoselect --regimes w4pt,w4pc --pipelines freeze --merge
  python run.py --calib-seed "$s" --results-dir "$d" --peers aimet --regimes w4pc --pipelines adaround --merge
  python run.py --calib-seed "$s" --results-dir "$d" --peers aimet --regimes w4pt --pipelines cle_adaround --merge
done
