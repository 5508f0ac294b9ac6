#!/usr/bin/env bash
# Install everything the tests need into .venv, then run the default test suite.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
# One pytest-xdist worker per logical CPU (EDGE_TEST_WORKERS overrides; 0 runs in this process):
# on this project's 2-vCPU machines the suite takes about 0.7x the time of one process.
exec .venv/bin/python -m pytest -q -n "${EDGE_TEST_WORKERS:-logical}" "$@"
