#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/python -m pytest -q --durations=15 "$@"
