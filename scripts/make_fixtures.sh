#!/usr/bin/env bash
# Rebuilds tests/fixtures from HF transformers (installed from PyPI into .venv by setup.sh --reference).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --reference
.venv/bin/python scripts/make_fixtures.py
