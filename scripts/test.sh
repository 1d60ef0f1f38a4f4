#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# Two pytest workers, one thread each (pytest-xdist; a test file stays on one worker, so its module fixtures are built
# once): the suite in about 12 minutes on 2 cores instead of about 22. PYTEST_WORKERS=0 runs it in one process (for
# -x, --pdb and the like).
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q --durations=15 -n "${PYTEST_WORKERS:-2}" \
    --dist loadfile "$@"
