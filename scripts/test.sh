#!/usr/bin/env bash
# Install everything the tests need into .venv, then run the default test suite.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
# pytest-xdist workers: one per CPU this process may use (its affinity, and a cgroup v2 CPU quota
# when there is one), at most 4, since each worker builds its own session capsules; on this
# project's 2-vCPU machines the suite takes about 0.7x the time of one process.
# EDGE_TEST_WORKERS overrides it; 0 runs the suite in this process.
workers="$(nproc 2>/dev/null || echo 1)"
if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max || true
    if [ "${quota:-max}" != max ] && [ "${period:-0}" -gt 0 ]; then
        allowed=$(( (quota + period - 1) / period ))
        [ "$allowed" -lt "$workers" ] && workers="$allowed"
    fi
fi
[ "$workers" -gt 4 ] && workers=4
exec .venv/bin/python -m pytest -q -n "${EDGE_TEST_WORKERS:-$workers}" "$@"
