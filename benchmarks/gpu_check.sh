#!/usr/bin/env bash
# The GPU check of the training-at-scale issue, on one CUDA GPU, in about 5 minutes:
# R50-FPN at 800 px (generated 640 px images resized by the model), 16-mixed, 40 steps at
# batch 2, 4 and 8 (images/s over the last 20, peak memory), then evaluate.py's path over
# 200 images (images/s end to end). Results table on stdout; also --json FILE if given.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 benchmarks/bench_gpu_train.py --model r50_fpn --precisions 16-mixed \
    --batch-sizes 2 4 8 --steps 40 --eval-images 200 "$@"
