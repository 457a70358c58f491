#!/usr/bin/env bash
# Every figure in docs/benchmarks.md, in one go, on a quiet machine. Outputs go to $OUT (default runs/benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/benchmarks}
mkdir -p "$OUT"
export UNVEIL_CIFAR10="${UNVEIL_CIFAR10:-$(cd .. && pwd)/shared/data/cifar10}"
PY=.venv/bin/python
date -u +"%Y-%m-%d %H:%M UTC" > "$OUT/date.txt"
$PY benchmarks/bench_train.py --steps 5 --batch-size 128 > "$OUT/train.md" 2> "$OUT/train.err"
$PY benchmarks/bench_views.py --iters 10 > "$OUT/views.md" 2> "$OUT/views.err"
$PY benchmarks/bench_corruptions.py --iters 5 --step-iters 3 > "$OUT/corruptions.md" 2> "$OUT/corruptions.err"
rm -rf "$OUT/demo"
( time .venv/bin/unveil demo --out "$OUT/demo" ) > "$OUT/demo.log" 2>&1
$PY benchmarks/knn_budget.py --minutes "${KNN_MINUTES:-20}" --out "$OUT/knn-budget" backbone.cifar_stem=false train.batch_size=256 \
  > "$OUT/knn_budget.json" 2> "$OUT/knn_budget.err"
echo done > "$OUT/done.txt"
