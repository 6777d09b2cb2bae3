#!/usr/bin/env bash
# SAELens interop check (not part of CI: it installs sae-lens and its dependencies, ~5 GB).
#   1. installs torch 2.13.0 + sae-lens 6.54.12 + circuit-tracer 0.5.0 into the git-ignored .venv-saelens;
#   2. rewrites the committed fixtures tests/fixtures/saelens/* (dictionaries SAELens saved, with
#      its own encode/decode of an input), which `cargo test --test suite dictionaries::` loads;
#   3. exports dictionaries of every architecture, two transcoder sets and two cross-layer
#      transcoders from Rust (examples/export_dictionaries.rs) and checks that SAELens and
#      circuit-tracer load them and encode/decode like we do (1e-5);
#   4. checks the viewer files of `interp graph` with circuit-tracer's models, and that
#      circuit-tracer's `attribute` gives our attribution graphs, its `compute_graph_scores` our
#      replacement and completeness scores, and its `prune_graph` our pruning (examples/graph_reference.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-saelens/bin/python ] || python3 -m venv .venv-saelens
.venv-saelens/bin/pip install -q --disable-pip-version-check "torch==2.13.0" "sae-lens==6.54.12" "circuit-tracer==0.5.0"
rm -rf tests/fixtures/saelens
.venv-saelens/bin/python scripts/check_saelens.py make-fixtures tests/fixtures/saelens
out=$(mktemp -d)
cargo run -q --release --example export_dictionaries -- "$out"
.venv-saelens/bin/python scripts/check_saelens.py check "$out"
# The files circuit-tracer's viewer reads, as `interp graph` writes them.
cargo run -q --release --bin interp -- graph --out "$out/graph" > /dev/null
.venv-saelens/bin/python scripts/check_saelens.py viewer "$out/graph"
# circuit-tracer's own attribution graphs through a random JumpReLU set and CLT equal ours.
cargo run -q --release --example graph_reference -- "$out/reference"
.venv-saelens/bin/python scripts/check_saelens.py graph "$out/reference"
rm -rf "$out"
