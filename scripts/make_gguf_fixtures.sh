#!/usr/bin/env bash
# Rebuilds tests/fixtures/gguf from the `gguf` package and HF transformers' GGUF loader (installed
# from PyPI into .venv by setup.sh --reference, which also fetches the real models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --reference
.venv/bin/python scripts/make_gguf_fixtures.py
