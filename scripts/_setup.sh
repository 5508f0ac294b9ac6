# Shared by demo.sh and test.sh: a virtual environment in .venv. No system packages, no root:
# every library the runtime and builder load ships in a wheel (zxing-cpp reads the QR codes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[tools,litert,serve,cluster,test]"
