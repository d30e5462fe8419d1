#!/usr/bin/env bash
# Issue 13, session 11: the cells of the issue's table that the spread runs (spread_mse.sh, spread_mse2.sh) did not
# re-measure, on calibration seed 0 (the draw of the issue's table), merged into results_seeds_mse/seed0 so that one
# table holds them with the best peers and autoselect's rows measured there: plain PTQ (torchao pt2e, autoselect),
# NNCF fast bias correction (W8pt, W4pc), Brevitas CLE + GPTQ + bias correction (W5pt, W4pt), AIMET CLE + AdaRound
# at W5pt, MCT MSE + bias correction (W4pc) and MCT's mixed precision at the W5 per-tensor memory budget.
set -euo pipefail
cd "$(dirname "$0")"
d=results_seeds_mse/seed0
python run.py --calib-seed 0 --results-dir "$d" --merge --peers fp32,torchao,autoselect --regimes w8pt,w5pt,w4pt,w4pc \
  --pipelines fp32:fp32,torchao:ptq,autoselect:ptq
python run.py --calib-seed 0 --results-dir "$d" --merge --peers nncf --regimes w8pt,w4pc --pipelines fbc
python run.py --calib-seed 0 --results-dir "$d" --merge --peers brevitas --regimes w5pt,w4pt --pipelines cle_gptq_bc
python run.py --calib-seed 0 --results-dir "$d" --merge --peers mct --regimes w4pc --pipelines mse_bc
python run.py --calib-seed 0 --results-dir "$d" --merge --peers mct --regimes w5pt --pipelines mp_mse_bc
python run.py --calib-seed 0 --results-dir "$d" --merge --peers aimet --regimes w5pt --pipelines cle_adaround
