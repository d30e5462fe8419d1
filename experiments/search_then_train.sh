#!/usr/bin/env bash
# Issue 14: the search at one regime, then its chosen plan retrained at the full budget with three training seeds
# (`autoselect train --seed S`: calibration draw and training order both follow S), then one full-QAT run of the
# same budget for the compute ratio (FULL_PLAN "-": none). Usage (from the repository root):
#   experiments/search_then_train.sh NAME FULL_PLAN -- SEARCH_ARGS...
# e.g. experiments/search_then_train.sh search_w4pca4 experiments/plans/full_qat_w4pca4.json -- --target generic \
#        --weight-bits 4 --act-bits 4
set -euo pipefail
name=$1; full=$2; shift 3
W=../shared/fixtures/mobilenet_v2_cifar10_fp32.pt
D=../shared/datasets/cifar10
out=experiments/results/$name
mkdir -p "$out"
/usr/bin/time -v -o "$out/search.time" autoselect search --model mobilenet_v2 --weights $W --data $D \
  --trials 16 --proxy-lr 0.001 --val-images 2000 --max-retrained 0.1 --latency cost --out "$out" --quiet "$@"
for s in 0 1 2; do
  /usr/bin/time -v -o "$out/train_seed$s.time" autoselect train --plan "$out/plan.json" --weights $W --data $D \
    --seed $s --quiet --out "$out/train_seed$s"
done
if [ "$full" != "-" ]; then
  /usr/bin/time -v -o "$out/full_qat.time" autoselect train --plan "$full" --weights $W --data $D --seed 0 --quiet \
    --out "$out/full_qat_seed0"
fi
