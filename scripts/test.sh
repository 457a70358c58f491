#!/usr/bin/env bash
# Install everything (venv, package with test extras, Fashion-MNIST) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped"
  else
    echo "note: run 'sudo apt-get install dataset-fashion-mnist' to enable the Fashion-MNIST tests"
  fi
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e ".[test]"
export UNVEIL_CIFAR10="${UNVEIL_CIFAR10:-$(cd .. && pwd)/shared/data/cifar10}"
.venv/bin/ruff check src tests benchmarks
# one pytest worker per core (at most 4); worksteal hands queued tests to whichever worker runs dry
workers="${UNVEIL_TEST_WORKERS:-$(python3 -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')}"
.venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist worksteal --durations=25 "$@"
