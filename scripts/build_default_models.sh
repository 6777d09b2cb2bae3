#!/usr/bin/env bash
# Rebuilds the committed default models deterministically (fixed seeds, 2 torch threads).
# Each prints its time; the report of each run lands in models/<name>/train_report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin interp
rm -rf models/shakespeare-gpt2
time ./target/release/interp train --out models/shakespeare-gpt2 --data shakespeare --vocab 4096 \
  --style gpt2 --mlp gelu --layers 2 --d-model 128 --heads 4 --ctx 128 \
  --steps 4000 --batch 16 --lr 2e-3 --warmup 200 --eval-every 500 --checkpoint-every 500 --seed 0 --threads 2
rm -rf models/shakespeare-gpt2/checkpoints


# Attention-only induction model. Rotary positions: with learned positions the model settled on a
# partial positional solution instead of forming induction heads.
rm -rf models/induction-attn-only
time ./target/release/interp train --out models/induction-attn-only --data induction \
  --style llama --mlp none --layers 2 --d-model 64 --heads 4 --ctx 32 \
  --steps 3000 --batch 64 --lr 3e-3 --warmup 100 --eval-every 500 --checkpoint-every 500 --seed 0 --threads 2
rm -rf models/induction-attn-only/checkpoints

# Bilinear task model on the mixture of all built-in tasks (Llama-style, hidden_act "linear").
rm -rf models/tasks-bilinear
time ./target/release/interp train --out models/tasks-bilinear --data tasks \
  --style llama --mlp bilinear --layers 2 --d-model 128 --heads 4 --d-mlp 256 --ctx 32 \
  --steps 5000 --batch 160 --lr 3e-3 --warmup 100 --eval-every 1000 --checkpoint-every 1000 --seed 0 --threads 2
rm -rf models/tasks-bilinear/checkpoints

# Mixture of experts on the same mixture of tasks: 8 SwiGLU experts of 128 units, top 2 (so a token
# uses as many MLP units as the bilinear model's 256), saved as HF mixtral.
rm -rf models/tasks-moe
time ./target/release/interp train --out models/tasks-moe --data tasks \
  --mlp moe --experts 8 --top-k 2 --layers 2 --d-model 128 --heads 4 --d-mlp 128 --ctx 32 \
  --steps 5000 --batch 160 --lr 3e-3 --warmup 100 --eval-every 1000 --checkpoint-every 1000 --seed 0 --threads 2
rm -rf models/tasks-moe/checkpoints

# TopK transcoders replacing both MLPs of the Shakespeare model (for `interp graph`).
for l in 0 1; do
  out=models/shakespeare-gpt2/transcoders/layer_$l
  rm -rf "$out"
  time ./target/release/interp sae train models/shakespeare-gpt2 --hook blocks.$l.ln2.hook_normalized \
    --hook-out blocks.$l.hook_mlp_out --arch topk --k 16 --d-sae 512 --steps 2000 --out "$out" --seed $l
  rm -rf "$out"/checkpoints "$out"/sparsity.safetensors "$out"/train_log.jsonl "$out"/evaluation.* "$out"/training_curve.* "$out"/report.html
done
# A TopK SAE on the residual stream between the two blocks, for the report's SAE dashboards.
out=models/shakespeare-gpt2/saes/blocks.1.hook_resid_pre
rm -rf "$out"
time ./target/release/interp sae train models/shakespeare-gpt2 --hook blocks.1.hook_resid_pre \
  --arch topk --k 16 --d-sae 512 --steps 2000 --out "$out" --seed 2
# Kept: the SAELens folder, metrics.json and the training curve (train_log.jsonl, which the report draws).
rm -rf "$out"/checkpoints "$out"/sparsity.safetensors "$out"/evaluation.* "$out"/training_curve.* "$out"/report.html
