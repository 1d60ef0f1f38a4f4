#!/usr/bin/env bash
# Creates .venv and installs vitzoo with its test extras; installs the Fashion-MNIST Debian package when possible.
# Idempotent: a second run only re-checks. Used by both README commands.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first, pinned to the release this project is tested with (a CUDA build; it also runs on CPU).
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"

# Fashion-MNIST: the Debian package where apt is available (no download needed); torchvision downloads it elsewhere.
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision" >&2
fi
