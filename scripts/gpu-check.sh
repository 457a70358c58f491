#!/usr/bin/env bash
# One prepared GPU check: the benchmark suites' `gpu` scale under one time budget.
#
#   bash scripts/gpu-check.sh --data CIFAR10_PARQUET_DIR [--out DIR] [--budget-s 480]
#   bash scripts/gpu-check.sh --tiny            # CPU, `smoke` scale: what CI runs (tests/test_gpu_check.py)
#
# The GPU machine has no ../shared: copy CIFAR-10's Parquet files (train.parquet, test.parquet) into a
# git-ignored folder of the repo (e.g. .gpu-data/cifar10, listed in .git/info/exclude) and `carry` it.
# Suites run in the order below, each under what is left of the budget (`timeout`); a suite stopped by
# the budget keeps every finished entry in its results.md (suites resume, so rerunning continues).
# Python: .venv/bin/python if the checkout has one, else python3; unveil is installed (`pip install -e .`) when
# it cannot be imported -- a machine without network needs torch/torchvision and unveil's dependencies
# installed already (or a carried wheelhouse: PIP_FIND_LINKS=DIR PIP_NO_INDEX=1).
# Everything lands under --out: env.txt (machine, torch, GPU), one folder per suite (results.md/.csv,
# per-entry times in bench_timings.json), summary.md (tables + wall times).
set -euo pipefail
cd "$(dirname "$0")/.."
data="" out="runs/gpu-check" budget=480 tiny=0 device=""
suites=(mixtures masked-siamese masked-modelling)
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --device) device="$2"; shift 2 ;;
    --suites) IFS=, read -r -a suites <<<"$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$data" ]; then
  [ -f "$data/train.parquet" ] || { echo "gpu-check: no train.parquet in --data $data (give CIFAR-10's Parquet folder)" >&2; exit 2; }
  UNVEIL_CIFAR10="$(cd "$data" && pwd)"; export UNVEIL_CIFAR10
fi
[ -n "${UNVEIL_CIFAR10:-}" ] || { echo "gpu-check: give --data CIFAR10_PARQUET_DIR (or set UNVEIL_CIFAR10)" >&2; exit 2; }
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
if ! "$py" -c "import unveil" 2>/dev/null; then
  "$py" -m pip install -q -e . || { echo "gpu-check: could not install unveil" >&2; exit 2; }
fi
scale=gpu
extra=()
if [ "$tiny" = 1 ]; then scale=smoke; device="${device:-cpu}"; fi
if [ -n "$device" ]; then extra+=("train.device=$device"); fi
mkdir -p "$out"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -n) $(uname -m); cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1); cores: $(nproc)"
  "$py" - <<'PY'
import torch
print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
start=$(date +%s)
summary="$out/summary.md"
printf '# gpu-check (%s scale)\n\n' "$scale" >"$summary"
sed 's/^/    /' "$out/env.txt" >>"$summary"
status=0
for suite in "${suites[@]}"; do
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -le 10 ]; then echo "gpu-check: budget spent before $suite" | tee -a "$summary"; status=1; continue; fi
  t0=$(date +%s)
  rc=0
  timeout --signal=INT --kill-after=20 "$left" "$py" -m unveil.cli bench "$suite" --scale "$scale" \
    --out "$out/$suite" "${extra[@]}" train.progress=false || rc=$?
  took=$(( $(date +%s) - t0 ))
  case "$rc" in
    0) note="finished" ;;
    124|130|137) note="stopped by the ${budget}s budget (finished entries are in the table)"; status=1 ;;
    *) note="failed (exit $rc)"; status=1 ;;
  esac
  printf '\n## %s: %s in %d s\n\n' "$suite" "$note" "$took" >>"$summary"
  if [ -f "$out/$suite/results.md" ]; then cat "$out/$suite/results.md" >>"$summary"; fi
done
printf '\ntotal wall: %d s of a %d s budget\n' "$(( $(date +%s) - start ))" "$budget" >>"$summary"
echo "gpu-check: wrote $summary"
exit "$status"
