#!/usr/bin/env bash
# Issue 14, session 12: the W4/A4 regime (w4pca4) for every peer that runs it, and MCT's gradient-based PTQ (GPTQ,
# its EPTQ default) at the W4 regimes too, on calibration seed 0, merged into results_seeds_mse/seed0 beside the
# rows of issue 13 so that one table holds every best peer of the issue-14 goals.
set -euo pipefail
cd "$(dirname "$0")"
d=results_seeds_mse/seed0
python run.py --calib-seed 0 --results-dir "$d" --merge --peers aimet,brevitas,nncf,mct,torchao,autoselect \
  --regimes w4pca4 --pipelines aimet:adaround,aimet:cle_adaround,brevitas:cle_bc,brevitas:cle_gptq_bc,nncf:fbc,mct:mse_bc,mct:gptq,torchao:ptq,autoselect:freeze
python run.py --calib-seed 0 --results-dir "$d" --merge --peers mct --regimes w4pt,w4pc --pipelines gptq
