#!/usr/bin/env bash
# auto-circuit side by side (not part of CI: it installs torch, TransformerLens 2 and auto-circuit).
#   1. installs torch 2.13.0 + transformer-lens 2.18.0 + auto-circuit 1.0.1 into the git-ignored
#      .venv-autocircuit (auto-circuit imports `transformer_lens.past_key_value_caching`, which
#      TransformerLens 3 no longer has, so it cannot share .venv-saelens);
#   2. writes 64 IOI pairs of the task model with `interp prompts`;
#   3. rewrites tests/fixtures/autocircuit: auto-circuit's EAP scores and ACDC circuits (three taus,
#      our edge order) on models/tasks-bilinear, which `cargo test --test suite circuits::` compares with ours.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-autocircuit/bin/python ] || python3 -m venv .venv-autocircuit
.venv-autocircuit/bin/pip install -q --disable-pip-version-check "torch==2.13.0" "transformer-lens==2.18.0" \
  "transformers==4.57.6" "auto-circuit==1.0.1" "pyarrow==19.0.1"
out=$(mktemp -d)
cargo run -q --release --bin interp -- prompts --task ioi --n 64 --out "$out/ioi.jsonl"
.venv-autocircuit/bin/python scripts/check_autocircuit.py make-fixtures models/tasks-bilinear "$out/ioi.jsonl" tests/fixtures/autocircuit
rm -rf "$out"
