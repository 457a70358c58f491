#!/usr/bin/env bash
# One prepared GPU check, under one time budget (default 480 s = 8 minutes on one H100/H200):
#   (a) one training step of every registered method through the engine   scripts/gpu_steps.py   -> OUT/steps/
#   (b) SimCLR ResNet-18 images/s at 32 and 224 px: unveil vs lightly vs the floor  benchmarks/bench_gpu.py -> OUT/bench/
#   (r) --resume: an interrupted + resumed run vs the uninterrupted one, with and without train.deterministic
#                                                                          scripts/resume_check.py -> OUT/resume/
#   (s) SimCLR training images/s from the disk cache (data.storage=disk) vs RAM  benchmarks/bench_storage.py -> OUT/storage/
#   (c) the benchmark suites' `gpu` scale, in what is left of the budget (each suite's untrained baselines
#       first, so a cut suite still has its lower bound)                      unveil bench       -> OUT/<suite>/
#   (d) OUT/summary.md: the environment, every table, each part's status and wall time
#   (p) --reproduce, alone (default budget 540 s): published CIFAR-10 numbers, SimCLR / MoCo v2 / BYOL at 100
#       epochs on all of CIFAR-10, kNN against wall-clock beside the anchors    scripts/reproduce.py -> OUT/reproduce/
#   (m) --compare, alone (default budget 900 s): every family on full CIFAR-10 at 60 s of pretraining each,
#       scored on the 10,000 test images (issue #19)                          unveil compare     -> OUT/compare/
#
#   bash scripts/gpu-check.sh --data CIFAR10_PARQUET_DIR [--out DIR] [--budget-s 480] [--parts a,b,r,s,c]
#   bash scripts/gpu-check.sh --tiny --data DIR --out DIR   # CPU, tiny (a)/(b)/(r)/(s) + suites at `smoke`
#                                                           # (baselines, first and last entries): CI
#   bash scripts/gpu-check.sh --reproduce --data CIFAR10_PARQUET_DIR [--out DIR]   # (p) only, <= 9 minutes
#   bash scripts/gpu-check.sh --reproduce --tiny --data DIR --out DIR              # (p) on the CPU, tiny: CI
#   bash scripts/gpu-check.sh --compare --data CIFAR10_PARQUET_DIR [--out DIR]     # (m) only, <= 15 minutes
#   bash scripts/gpu-check.sh --compare --tiny --data DIR --out DIR                # (m) on the CPU, tiny: CI
#
# The GPU machine has no ../shared and no network: copy CIFAR-10's Parquet files into a git-ignored folder
# of the repo (.gpu-data/cifar10, listed in .git/info/exclude) and carry it. unveil runs from the checkout
# (src/ on PYTHONPATH when `import unveil` fails; nothing is installed); wheels in a carried .whl/ folder
# (lightly, omegaconf, antlr4-python3-runtime: pure Python) are unpacked into a temporary folder on
# PYTHONPATH when lightly or omegaconf cannot be imported. Python: $GPU_CHECK_PYTHON, else .venv/bin/python,
# else python3. Each part runs under its own timeout (a <= 150 s, b <= 120 s, r <= 45 s, s <= 70 s, c: the rest); a part that fails
# or times out is recorded with its last lines in summary.md and the next part runs. Exit 0 only when every
# part passed. Preparing the carried folders (on a machine with network; both are git-ignored):
#   mkdir -p .gpu-data/cifar10 && cp CIFAR10_PARQUET_DIR/*.parquet .gpu-data/cifar10/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl lightly==1.6.0 omegaconf==2.3.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     # sdist only on PyPI; pure Python
set -uo pipefail
cd "$(dirname "$0")/.."
data="" out="runs/gpu-check" budget="" tiny=0 device="" parts="a,b,r,s,c" a_max=150 b_max=120 r_max=45 s_max=70
suites=(mixtures masked-siamese masked-modelling)
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --device) device="$2"; shift 2 ;;
    --suites) IFS=, read -r -a suites <<<"$2"; shift 2 ;;
    --parts) parts="$2"; shift 2 ;;
    --reproduce) parts="p"; shift ;;
    --compare) parts="m"; shift ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$data" ]; then
  [ -f "$data/train.parquet" ] || { echo "gpu-check: no train.parquet in --data $data (give CIFAR-10's Parquet folder)" >&2; exit 2; }
  UNVEIL_CIFAR10="$(cd "$data" && pwd)"; export UNVEIL_CIFAR10
fi
if [ -z "$budget" ]; then budget=480; [ "$parts" = p ] && budget=540; [ "$parts" = m ] && budget=900; fi
[ -n "${UNVEIL_CIFAR10:-}" ] || { echo "gpu-check: give --data CIFAR10_PARQUET_DIR (or set UNVEIL_CIFAR10)" >&2; exit 2; }
case "$budget" in ''|*[!0-9]*) echo "gpu-check: --budget-s must be a whole number of seconds, got '$budget'" >&2; exit 2 ;; esac

py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
py="${GPU_CHECK_PYTHON:-$py}"
setup_note=""
if compgen -G ".whl/*.whl" >/dev/null && ! "$py" -c "import lightly, omegaconf" 2>/dev/null; then
  site="${TMPDIR:-/tmp}/unveil-site-$$"
  rm -rf "$site"
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl 2>/dev/null; then
    rm -rf "$site"  # no pip: pure-Python wheels are zip files that unpack as installed
    "$py" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$site" .whl/*.whl \
      || { echo "gpu-check: could not unpack the wheels in .whl/" >&2; exit 2; }
  fi
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$site"
  setup_note="wheels from .whl/ unpacked into $site; "
fi
if ! "$py" -c "import unveil" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  setup_note="${setup_note}unveil from $PWD/src (PYTHONPATH, not installed)"
fi
if ! err=$("$py" -c "import unveil.cli, unveil.train.engine" 2>&1); then
  echo "gpu-check: unveil cannot be imported with $py: $(printf '%s\n' "$err" | tail -1)" >&2; exit 2
fi

scale=gpu
if [ "$tiny" = 1 ]; then scale=smoke; device="${device:-cpu}"; fi
device="${device:-cuda}"
tiny_flag=()
if [ "$tiny" = 1 ]; then tiny_flag=(--tiny); a_max=$budget b_max=$budget r_max=$budget s_max=$budget; fi
mkdir -p "$out"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -n) $(uname -m); cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1); cores: $(nproc)"
  echo "python: $py ($("$py" -c 'import sys; print(sys.version.split()[0])')); ${setup_note:-unveil installed}"
  if head=$(git rev-parse --short HEAD 2>/dev/null); then
    echo "git: $head$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  else
    echo "git: not a git checkout"
  fi
  "$py" - <<'PY'
import torch
print(f"torch {torch.__version__}; cuda {torch.version.cuda}; cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
for name in ("torchvision", "timm", "lightly", "omegaconf"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except ImportError:
        print(f"{name}: not importable")
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
start=$(date +%s)
summary="$out/summary.md"
status=0
parts_md=""   # the per-part sections, written into summary.md after each part (a cut run keeps what finished)

write_summary() {
  {
    printf '# gpu-check (%s, suites at %s scale)\n\n' "$device" "$scale"
    sed 's/^/    /' "$out/env.txt"
    printf '%s' "$parts_md"
    printf '\ntotal wall: %d s of a %d s budget\n' "$(( $(date +%s) - start ))" "$budget"
  } >"$summary.tmp" && mv "$summary.tmp" "$summary"
}

# run_part TITLE LIMIT LOG TABLE -- COMMAND...: COMMAND under `timeout LIMIT`, its output in LOG; records the
# outcome, the wall time, TABLE (a Markdown file) when it exists and, on failure, the last lines of LOG.
run_part() {
  local title="$1" limit="$2" log="$3" table="$4"; shift 5
  local left=$(( budget - ($(date +%s) - start) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 10 ]; then
    parts_md+=$(printf '\n## %s: not run (budget spent)\n' "$title")$'\n'; status=1; write_summary; return
  fi
  echo "gpu-check: $title (limit $limit s)"
  local t0 rc=0 note
  t0=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - t0 ))
  case "$rc" in
    0) note="passed" ;;
    124|130|137) note="stopped by its ${limit} s limit (finished rows are in the table)"; status=1 ;;
    *) note="failed (exit $rc)"; status=1 ;;
  esac
  echo "gpu-check: $title: $note in $took s"
  parts_md+=$(printf '\n## %s: %s in %d s\n\n' "$title" "$note" "$took")$'\n\n'
  if [ -f "$table" ]; then parts_md+="$(cat "$table")"$'\n'; fi
  if [ "$rc" != 0 ]; then
    parts_md+=$'\nlast lines of '"$log"$':\n\n'"$(tail -n 15 "$log" | sed 's/^/    /')"$'\n'
  fi
  write_summary
}

if [[ ",$parts," == *",a,"* ]]; then
  run_part "(a) one step of every method" "$a_max" "$out/steps.log" "$out/steps/steps.md" -- \
    "$py" scripts/gpu_steps.py --device "$device" --out "$out/steps" --budget-s "$a_max" ${tiny_flag[@]+"${tiny_flag[@]}"}
fi
if [[ ",$parts," == *",b,"* ]]; then
  run_part "(b) SimCLR ResNet-18 images/s: unveil, lightly, floor" "$b_max" "$out/bench.log" "$out/bench/bench_gpu.md" -- \
    "$py" benchmarks/bench_gpu.py --device "$device" --out "$out/bench" ${tiny_flag[@]+"${tiny_flag[@]}"}
fi
if [[ ",$parts," == *",r,"* ]]; then
  # --tiny: the standard stem (the CIFAR stem costs ~8x at 32 px; what is checked, bit-identical resume and
  # disk vs RAM, does not depend on it): (r) 58 -> 20 s, (s) 73 -> 18 s, one CPU thread beside another job
  rargs=(); [ "$tiny" = 1 ] && rargs=(--subset 256 --batch 32 --override backbone.cifar_stem=false)
  run_part "(r) --resume: interrupted + resumed vs uninterrupted" "$r_max" "$out/resume.log" "$out/resume/resume.md" -- \
    "$py" scripts/resume_check.py --device "$device" --data "$UNVEIL_CIFAR10" --out "$out/resume" ${rargs[@]+"${rargs[@]}"}
fi
if [[ ",$parts," == *",s,"* ]]; then
  sargs=(--epochs 4); [ "$tiny" = 1 ] && sargs=(--epochs 2 --subset 256 --batch 32 --override backbone.cifar_stem=false)
  run_part "(s) training from the disk cache vs RAM" "$s_max" "$out/storage.log" "$out/storage/storage.md" -- \
    "$py" benchmarks/bench_storage.py --device "$device" --data "$UNVEIL_CIFAR10" --out "$out/storage" "${sargs[@]}"
fi
if [[ ",$parts," == *",p,"* ]]; then
  # the script stops its own runs 20 s before the part's limit, so its table is written either way
  run_part "(p) published CIFAR-10 numbers: SimCLR, MoCo v2, BYOL at 100 epochs" "$budget" "$out/reproduce.log" \
    "$out/reproduce/reproduce.md" -- "$py" scripts/reproduce.py --device "$device" --data "$UNVEIL_CIFAR10" \
    --out "$out/reproduce" --budget-s "$(( budget > 40 ? budget - 20 : budget ))" ${tiny_flag[@]+"${tiny_flag[@]}"}
fi
if [[ ",$parts," == *",m,"* ]]; then
  margs=(--budget 60s); [ "$tiny" = 1 ] && margs=(--epochs 1 --methods simclr,mae --linear-epochs 1 data.subset=256 data.test_subset=128)
  run_part "(m) every family on one budget: unveil compare" "$budget" "$out/compare.log" "$out/compare/report.md" -- \
    "$py" -m unveil.cli compare --data "$UNVEIL_CIFAR10" --out "$out/compare" "${margs[@]}" "train.device=$device"
fi
if [[ ",$parts," == *",c,"* ]]; then
  for suite in "${suites[@]}"; do
    # the untrained baselines first, so whatever the budget cuts, each trained row has its lower bound
    mapfile -t base < <("$py" -c "import sys; from unveil.bench.spec import load_suite
print(*[n for n in load_suite(sys.argv[1]).entry_names() if n.startswith('untrained')], sep='\n')" "$suite")
    if [ "${#base[@]}" -gt 0 ]; then
      run_part "(c) suite $suite at $scale scale: untrained baselines" "$budget" "$out/$suite-untrained.log" "" -- \
        "$py" -m unveil.cli bench "$suite" --scale "$scale" --out "$out/$suite" --only "${base[@]}" \
        "train.device=$device" train.progress=false
    fi
    # --tiny checks the plumbing with each suite's first and last trained entries (every entry's method is
    # built in tests/bench/test_bench.py, every recipe takes a step in the contract test): the three suites'
    # 41 entries took 182 s of the CI run's longest test, one CPU thread
    only=()
    if [ "$tiny" = 1 ]; then
      mapfile -t only < <("$py" -c "import sys; from unveil.bench.spec import load_suite
names = [n for n in load_suite(sys.argv[1]).entry_names() if not n.startswith('untrained')]
print(*dict.fromkeys(names[:1] + names[-1:]), sep='\n')" "$suite")
      only=(--only "${only[@]}")
    fi
    run_part "(c) suite $suite at $scale scale" "$budget" "$out/$suite.log" "$out/$suite/results.md" -- \
      "$py" -m unveil.cli bench "$suite" --scale "$scale" --out "$out/$suite" ${only[@]+"${only[@]}"} \
      "train.device=$device" train.progress=false
  done
fi
write_summary
echo "gpu-check: wrote $summary ($( [ "$status" = 0 ] && echo 'every part passed' || echo 'some part did not pass'))"
exit "$status"
