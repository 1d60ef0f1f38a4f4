#!/usr/bin/env bash
# The tests that need a CUDA GPU, on a machine that has one: every test file that marks a test as needing a GPU (the
# CPU suite, scripts/test.sh, skips those tests with that reason) or runs the kernels on the GPU when there is one,
# run whole, its CPU tests included. Arguments go to pytest (e.g. -x, -k delta_rule). Uses .venv/bin/python when
# there is one, else python3 (e.g. a GPU machine's own torch, with the repository on PYTHONPATH).
#
#   bash scripts/gpu_tests.sh
#   PYTEST_WORKERS=4 bash scripts/gpu_tests.sh -x     # four pytest processes sharing the GPU (needs pytest-xdist)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python3
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_tests.sh: $PYTHON sees no CUDA GPU; on a CPU machine run bash scripts/test.sh" >&2
    exit 2
fi
mapfile -t FILES < <(grep -rlE --include='test_*.py' 'needs_cuda|needs a CUDA GPU|cuda\.is_available\(\)' tests | sort)
WORKERS=()
if [ "${PYTEST_WORKERS:-0}" != 0 ]; then WORKERS=(-n "$PYTEST_WORKERS" --dist loadfile); fi
exec "$PYTHON" -m pytest -q -rs "${WORKERS[@]}" "${FILES[@]}" "$@"
