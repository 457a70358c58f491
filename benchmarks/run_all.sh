#!/usr/bin/env bash
# Every figure in docs/benchmarks.md, in one go, on a quiet machine. Outputs go to $OUT (default runs/benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/benchmarks}
mkdir -p "$OUT"
export UNVEIL_CIFAR10="${UNVEIL_CIFAR10:-$(cd .. && pwd)/shared/data/cifar10}"
PY=.venv/bin/python
date -u +"%Y-%m-%d %H:%M UTC" > "$OUT/date.txt"
# contenders interleaved in rotating rounds; on a shared box add --threads 1 (see docs/benchmarks.md)
$PY benchmarks/bench_train.py --rounds 5 --steps 2 --batch-size 128 --cifar-batch-size 32 ${BENCH_THREADS:+--threads $BENCH_THREADS} \
  --json "$OUT/train.json" > "$OUT/train.md" 2> "$OUT/train.err"
$PY benchmarks/bench_views.py --iters 10 > "$OUT/views.md" 2> "$OUT/views.err"
$PY benchmarks/bench_corruptions.py --iters 5 --step-iters 3 > "$OUT/corruptions.md" 2> "$OUT/corruptions.err"
# defaults vs defaults on a 64 px ImageFolder built from the CIFAR-10 Parquet (git-ignored devdata/ by default)
FOLDER64=${FOLDER64:-devdata/cifar64}
[ -d "$FOLDER64" ] || $PY benchmarks/make_folder64.py --out "$FOLDER64" > "$OUT/folder64.json"
rm -rf "$OUT/folder-runs"
$PY benchmarks/bench_folder.py --folder "$FOLDER64" --rounds 2 --steps 8 --log-every 4 ${BENCH_THREADS:+--threads $BENCH_THREADS} \
  --work "$OUT/folder-runs" --json "$OUT/folder.json" > "$OUT/folder.md" 2> "$OUT/folder.err"
rm -rf "$OUT/demo"
( time .venv/bin/unveil demo --out "$OUT/demo" ) > "$OUT/demo.log" 2>&1
$PY benchmarks/knn_budget.py --minutes "${KNN_MINUTES:-20}" --out "$OUT/knn-budget" backbone.cifar_stem=false train.batch_size=256 \
  > "$OUT/knn_budget.json" 2> "$OUT/knn_budget.err"
# MoCo v2 / BYOL / MSCN / mixture steps, unveil vs lightly (pre-made views)
$PY benchmarks/bench_siamese.py ${BENCH_THREADS:+--threads $BENCH_THREADS} > "$OUT/siamese.md" 2> "$OUT/siamese.err"
# MAE's step, unveil vs lightly on the same timm ViT (ViT-Tiny 32 px, ViT-Small 224 px; fp32 and bf16)
$PY benchmarks/bench_mae.py --configs tiny32 small224 ${BENCH_THREADS:+--threads $BENCH_THREADS} > "$OUT/mae.md" 2> "$OUT/mae.err"
echo done > "$OUT/done.txt"
