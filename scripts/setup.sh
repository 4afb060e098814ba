#!/usr/bin/env bash
# Set up .venv with attn_zoo and its test tools (idempotent: a second run only checks).
# Used by scripts/quick.sh and scripts/test.sh; needs Python >= 3.10 and the PyPI index. The exact versions
# come from constraints.txt (pyproject.toml declares ranges).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${ATTN_ZOO_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
fi
stamp="$VENV/.attn_zoo-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "setup: installing attn_zoo with its test extras and Ray (torch is large: a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,dev,ray]"  # ray: tests/test_scale_ray.py runs a local cluster
    # natten: pure Python without a GPU build; runs its forward on CPU for the parity tests. Without build
    # isolation it reuses the torch above instead of downloading a second one.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation -c constraints.txt natten
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e examples/attn-zoo-axial
    touch "$stamp"
fi
