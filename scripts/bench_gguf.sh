#!/usr/bin/env bash
# The GGUF benchmark with HF transformers and TransformerLens beside ours (not part of CI): installs
# torch 2.13.0, transformer-lens 3.2.1 and transformers 5.23.0 (with gguf and accelerate, for its
# GGUF loader) into the git-ignored .venv-tl (the venv scripts/make_tl_fixtures.sh uses), fetches
# the models, and runs `cargo bench --bench gguf`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-tl/bin/python ] || python3 -m venv .venv-tl
.venv-tl/bin/pip install -q --disable-pip-version-check "torch==2.13.0" "transformer-lens==3.2.1" \
  "transformers==5.23.0" "gguf==0.19.0" "accelerate==1.16.0"
bash scripts/fetch_models.sh
OMP_WAIT_POLICY=PASSIVE cargo bench --bench gguf
