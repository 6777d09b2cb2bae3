#!/usr/bin/env bash
# Trains the two dictionaries of docs/smollm2-study.md on SmolLM2-135M-Instruct, each on 5M tokens
# of Shakespeare plus the Python and Perl manuals (scripts/fetch_docs_corpus.sh), then writes
# dashboards of 8 latents of each drawn at random (seed 0) from those that fire:
#   - a TopK SAE (k=32, 4,608 latents) on the residual stream before block 15 of 30;
#   - a TopK transcoder (k=32, 4,608 latents) from block 8's MLP input to its output.
# Each run prints its metrics and writes report.html; a run that is interrupted resumes from its
# checkpoints when started again. Out: OUT (default report/smollm2-features).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-report/smollm2-features}
source scripts/smollm2_common.sh
train() { # name, flags...
  local name=$1
  shift
  /usr/bin/time -v "$interp" sae train "$model" "$@" --tokens 5000000 --data "$data" --eval-contexts 256 --out "$out/$name" 2>&1 | tee "$out/$name.log"
}
# Dashboards search held-out contexts for top activations (and evaluate the dictionary on them to
# know which latents fire): 1,024 contexts took 12 min here beside a training run, so the
# transcoder's search 256.
dashboards() { # name, contexts
  "$interp" sae dashboard "$model" "$out/$1" --random 0 --top 8 --data "$data" --contexts "$2" --out "$out/$1/random-dashboards"
}
train sae-resid15 --hook blocks.15.hook_resid_pre
dashboards sae-resid15 1024
train transcoder-mlp8 --hook blocks.8.ln2.hook_normalized --hook-out blocks.8.hook_mlp_out
dashboards transcoder-mlp8 256
