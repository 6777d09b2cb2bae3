#!/usr/bin/env bash
# Trains tiny models with `interp train` and checks that HF transformers loads them with our logits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --reference
cargo build --release --bin interp
.venv/bin/python scripts/check_saved_models.py
