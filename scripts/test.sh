#!/usr/bin/env bash
# Install everything the tests need into .venv, then run the default test suite.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
exec .venv/bin/python -m pytest -q "$@"
