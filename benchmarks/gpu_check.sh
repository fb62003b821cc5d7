#!/usr/bin/env bash
# The GPU training-throughput check on one CUDA GPU (about 6 minutes on an H200):
# bench_gpu_train.py's defaults: coco128-seg photos, R50-FPN at 800-1333 px, instseg's step
# and a hand-written loop at 32-true / 16-mixed / bf16-mixed and batch 2, 4, 8, 16, the
# channels_last and compile variants, profile tables at 16-mixed batch 8. Rows print as
# they finish; the log, the rows (json) and Chrome traces go to $OUT (default gpu_check/).
# Where ../shared does not exist (a lent machine gets only the repository), copy
# coco128-seg into an ignored folder of the repository and pass --coco128 DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
python3 benchmarks/bench_gpu_train.py --json "$out/bench_gpu_train.json" \
    --trace-dir "$out/traces" "$@" 2>&1 | tee "$out/bench_gpu_train.log"
