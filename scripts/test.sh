#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, slow learning tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`. Tests run in SIMGAN_TEST_WORKERS
# pytest-xdist workers (default 2), each test file in one worker; `-n 0` runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${SIMGAN_VENV:-.venv}/bin/activate"
export RAY_USAGE_STATS_ENABLED=0
exec python -m pytest -q --timeout 900 -n "${SIMGAN_TEST_WORKERS:-2}" --dist loadfile "$@"
