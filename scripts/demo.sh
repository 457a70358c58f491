#!/usr/bin/env bash
# Install the package in .venv and run the demo: SimCLR on a CIFAR-10 subset beside its two
# baselines (the untrained encoder, raw pixels), ~10 minutes on a 2-core CPU.
# CIFAR-10 is read from $UNVEIL_CIFAR10, else from ../shared/data/cifar10 when that folder exists,
# else downloaded by torchvision (network needed; offline, the demo stops with one line saying where
# it looked). Extra arguments go to `unveil demo` (e.g. --out runs/demo2 train.batch_size=64).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${UNVEIL_CIFAR10:-}" ] && [ -f ../shared/data/cifar10/train.parquet ]; then
  UNVEIL_CIFAR10="$(cd ../shared/data/cifar10 && pwd)"
  export UNVEIL_CIFAR10
fi
python3 -m venv .venv
.venv/bin/pip install -q -e .
.venv/bin/unveil demo "$@"
