#!/usr/bin/env bash
# Rebuilds tests/fixtures/tracr from RASP programs compiled by tracr (not part of CI). Installs
# tracr-pypi (JAX, dm-haiku) and safetensors from PyPI into the git-ignored venv $VENV (default
# .venv-tracr).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-tracr}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "tracr-pypi==1.0.0" "safetensors==0.8.0"
"$VENV/bin/python" scripts/make_tracr_fixtures.py
