#!/usr/bin/env bash
# Install everything (venv, package, Fashion-MNIST) and run the demo (~10 minutes on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || true
fi
python3 -m venv .venv
.venv/bin/pip install -q -e .
.venv/bin/unveil demo "$@"
