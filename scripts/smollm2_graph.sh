#!/usr/bin/env bash
# A real model's attribution graphs (docs/smollm2-study.md, "Attribution graphs"):
#   1. TopK transcoders (k 32, 2,304 latents) for all 30 MLPs of SmolLM2-135M-Instruct, trained in one
#      streaming pass over 1M tokens of Shakespeare plus the Python and Perl manuals
#      (`interp sae train --every-layer`; resumes if interrupted, skipped when OUT/transcoders exists);
#   2. the graph of an IOI prompt and of a fact through them, every active feature a node, with
#      dashboards of the kept features over 64 held-out contexts, QK attributions of the three heads
#      that attend most strongly from the last token, and the 10 top features checked by
#      intervention. Each step runs under /usr/bin/time -v (peak RSS in its log).
# Out: OUT (default report/smollm2-graph): transcoders/, ioi/, fact/ and a .log per step.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-report/smollm2-graph}
source scripts/smollm2_common.sh
if [ ! -f "$out/transcoders/layer_29/cfg.json" ]; then
  /usr/bin/time -v "$interp" sae train "$model" --every-layer --d-sae 2304 --k 32 --tokens 1000000 --batch-tokens 2048 --lr 0.0008 \
    --data "$data" --eval-contexts 64 --out "$out/transcoders" 2>&1 | tee "$out/transcoders.log"
fi
graph() { # name, prompt
  /usr/bin/time -v "$interp" graph "$model" --transcoders "$out/transcoders" --prompt "$2" --data "$data" --contexts 64 \
    --check 10 --out "$out/$1" 2>&1 | tee "$out/$1.log"
}
graph ioi "When Mark and Laura went to the office, Laura gave a phone to"
graph fact "The capital of France is"
