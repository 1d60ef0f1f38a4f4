#!/usr/bin/env bash
# The README's main command: set up (idempotent), then train and evaluate a small model of every family on
# Fashion-MNIST (about 10 minutes on a 2-core CPU) and write results/fashion_mnist.csv. Extra arguments go to
# scripts/fashion_mnist_zoo.py (e.g. --families softmax inline, or key=value config overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/fashion_mnist_zoo.py "$@"
