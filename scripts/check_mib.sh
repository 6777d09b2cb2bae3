#!/usr/bin/env bash
# MIB side by side (not part of CI): MIB's own code scores and evaluates the IOI task model.
#   Usage: bash scripts/check_mib.sh MIB_DIR
#   MIB_DIR: a checkout of MIB's circuit track (github.com/hannamw/MIB-circuit-track, b759df3) with
#   its EAP-IG submodule (github.com/hannamw/EAP-IG, 7af394a) in MIB_DIR/EAP-IG.
#   1. installs torch 2.13.0, transformer-lens 3.2.1 and transformers 5.23.0 (and MIB's own
#      dependencies, matplotlib and tabulate) into the git-ignored .venv-tl;
#   2. rewrites tests/fixtures/mib: MIB's EAP and EAP-IG-inputs(5) scores, faithfulness curves,
#      CPR and CMD on models/tasks-bilinear and the 64 IOI pairs of tests/fixtures/autocircuit,
#      which `cargo test --test suite circuits::` compares with ours.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:?usage: bash scripts/check_mib.sh MIB_DIR}
[ -d "$mib/EAP-IG/src/eap" ] || { echo "check_mib: $mib/EAP-IG/src/eap not found (the EAP-IG submodule)" >&2; exit 1; }
[ -x .venv-tl/bin/python ] || python3 -m venv .venv-tl
.venv-tl/bin/pip install -q --disable-pip-version-check "torch==2.13.0" "transformer-lens==3.2.1" \
  "transformers==5.23.0" "matplotlib" "tabulate"
.venv-tl/bin/python scripts/check_mib.py "$mib" models/tasks-bilinear tests/fixtures/autocircuit/ioi.jsonl tests/fixtures/mib
