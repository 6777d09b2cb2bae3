#!/usr/bin/env bash
# Rebuilds tests/fixtures/interpbench from the planted induction model (not part of CI). Installs
# torch, transformers and transformer-lens from PyPI into the git-ignored venv $VENV (default
# .venv-tl, shared with scripts/make_tl_fixtures.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-tl}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" "transformer-lens==3.2.1"
src=$(mktemp -d)
cargo run -q --release --example planted_case -- "$src"
"$VENV/bin/python" scripts/make_interpbench_fixtures.py "$src"
rm -rf "$src"
