#!/usr/bin/env bash
# Rebuilds tests/fixtures/transformer_lens (tiny random TransformerLens models, hook by hook) and
# tests/fixtures/interpbench (the planted induction model as an InterpBench case folder) from
# TransformerLens (not part of CI). Installs torch and transformer-lens from PyPI into the
# git-ignored venv $VENV (default .venv-tl; .venv-saelens from scripts/check_saelens.sh pins the
# same versions and can be reused: VENV=.venv-saelens).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-tl}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" "transformer-lens==3.2.1"
"$VENV/bin/python" scripts/make_tl_fixtures.py
src=$(mktemp -d)
cargo run -q --release --example planted_case -- "$src"
"$VENV/bin/python" scripts/make_interpbench_fixtures.py "$src"
rm -rf "$src"
