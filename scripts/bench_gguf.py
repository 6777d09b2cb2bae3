"""HF transformers and TransformerLens on the same GGUF weights, for `cargo bench --bench gguf`.

The benchmark starts this as a child and interleaves its rounds with its own: each line read from
stdin names a measurement, and the fastest of REPEATS runs is written back in seconds.

    hf_forward   HF transformers' forward (f32, eager attention), logits only
    hf_cache     the same with every hidden state and attention pattern returned
    tl_forward   TransformerLens's forward (HookedTransformer, the HF model's weights converted
                 by TransformerLens's own Llama conversion)
    tl_cache     TransformerLens's run_with_cache (every hook point)

Both load the model with the threads the benchmark gives (2). Run by the benchmark with the venv of
scripts/bench_gguf.sh; by hand: .venv-tl/bin/python scripts/bench_gguf.py MODEL.gguf TOKENS.safetensors
"""
import os
import sys
import time

import torch
import transformers
from safetensors.torch import load_file

REPEATS = 3


def main():
    path, tokens_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.set_grad_enabled(False)
    tokens = load_file(tokens_path)["input_ids"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32, attn_implementation="eager").eval()

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf.config
    rope = c.rope_parameters if isinstance(c.rope_parameters, dict) else {}
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048, d_vocab=c.vocab_size, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=c.head_dim,
        rotary_base=rope.get("rope_theta", 10000.0), rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True,
        eps=c.rms_norm_eps, original_architecture="LlamaForCausalLM", dtype=torch.float32, device="cpu")
    tl = HookedTransformer(cfg)
    tl.load_state_dict(convert_llama_weights(hf, cfg), strict=False)
    tl.eval()
    check = tokens[:1, :16]
    d = (tl(check) - hf(check).logits).abs().max().item()
    print(f"ready: TransformerLens {d:.1e} from HF on the same weights", flush=True)

    runs = {
        "hf_forward": lambda: hf(tokens).logits,
        "hf_cache": lambda: hf(tokens, output_hidden_states=True, output_attentions=True),
        "tl_forward": lambda: tl(tokens),
        "tl_cache": lambda: tl.run_with_cache(tokens),
    }
    for line in sys.stdin:
        run = runs[line.strip()]
        run()
        best = float("inf")
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = run()
            best = min(best, time.perf_counter() - start)
            del out
        print(best, flush=True)


if __name__ == "__main__":
    main()
