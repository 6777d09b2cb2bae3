"""Builds the TransformerLens-native fixtures that tests/suite/loading.rs checks the runtime
against (tests/fixtures/transformer_lens/<case>/).

Each case is a tiny random `HookedTransformer` with a non-trivial init (every weight, bias and norm
gain perturbed with N(0, 0.2) noise) saved the way TransformerLens-native models ship: `config.json`
(`cfg.to_dict()`, made JSON-safe) and its state dict as `model.pth` (torch.save) or
`model.safetensors`. `reference.safetensors` holds the input ids, the logits and every activation
`run_with_cache` returns (with `use_attn_result` and `use_hook_mlp_in` on), in float32.

Run: bash scripts/make_tl_fixtures.sh   (creates/uses a venv with transformer-lens from PyPI)
"""
import importlib.metadata
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "transformer_lens")
BATCH, SEQ = 2, 10
BASE = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=48, d_vocab=23, n_ctx=16, seed=0)

CASES = {
    # LayerNorm, ReLU, learned positions, an output vocabulary smaller than the input's; model.pth.
    "ln-relu": dict(normalization_type="LN", act_fn="relu", d_vocab_out=13),
    # Gain-free LayerNorm, SoLU with its LayerNorm, shortformer positions; model.safetensors.
    "lnpre-solu_ln-shortformer": dict(normalization_type="LNPre", act_fn="solu_ln", positional_embedding_type="shortformer"),
    # RMSNorm, a gated GELU MLP, partial rotary, grouped-query attention, no attention scaling;
    # model.safetensors.
    "rms-gated-rotary-gqa": dict(normalization_type="RMS", act_fn="gelu", gated_mlp=True, positional_embedding_type="rotary",
                                 rotary_dim=4, rotary_base=500, n_key_value_heads=2, use_attn_scale=False),
    # No normalization at all, gelu_new; model.pth.
    "none-gelu_new": dict(normalization_type=None, act_fn="gelu_new"),
    # Attention only, gain-free RMSNorm, an unembedding tied to the embedding (no W_U in the file).
    "attn_only-rmspre-tied": dict(normalization_type="RMSPre", attn_only=True, d_mlp=None, act_fn=None, tie_word_embeddings=True),
    # Bidirectional attention (as tracr compiles most programs), LayerNorm, GELU; model.pth.
    "ln-gelu-bidirectional": dict(normalization_type="LN", act_fn="gelu", attention_dir="bidirectional"),
}
SAFETENSORS = {"lnpre-solu_ln-shortformer", "rms-gated-rotary-gqa", "attn_only-rmspre-tied"}


def json_safe(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, (str, int, float, bool, type(None))):
        return v
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return str(v)


def main():
    gen = torch.Generator().manual_seed(1234)
    shutil.rmtree(OUT, ignore_errors=True)
    for name, extra in CASES.items():
        cfg = HookedTransformerConfig(**{**BASE, **extra})
        model = HookedTransformer(cfg).eval()
        state = model.state_dict()
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
            if cfg.gated_mlp:
                # TransformerLens adds a gated MLP's b_in after the gate product; the runtime
                # supports that form only with b_in = 0 (as in every model converted from HF).
                for block in model.blocks:
                    block.mlp.b_in.zero_()
            if cfg.tie_word_embeddings:
                # TransformerLens's HookedTransformer does not tie; the file omits W_U, so the
                # reference uses W_E^T as a tied model would.
                model.unembed.W_U.copy_(model.embed.W_E.T)
        model.cfg.use_attn_result = True
        model.cfg.use_hook_mlp_in = True
        model.setup()
        ids = torch.randint(0, cfg.d_vocab, (BATCH, SEQ), generator=gen)
        with torch.no_grad():
            logits, cache = model.run_with_cache(ids)
        out_dir = os.path.join(OUT, name)
        os.makedirs(out_dir)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump({k: json_safe(v) for k, v in cfg.to_dict().items()}, f, indent=1)
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            del state["unembed.W_U"]
        if name in SAFETENSORS:
            # Weights only: TransformerLens's buffers (IGNORE, mask, rotary tables) are left out.
            weights = {k: v for k, v in state.items() if k in dict(model.named_parameters())}
            save_file(weights, os.path.join(out_dir, "model.safetensors"))
        else:
            torch.save(state, os.path.join(out_dir, "model.pth"))
        tensors = {"input_ids": ids, "logits": logits.float().clone()}
        tensors.update({k: v.float().clone().contiguous() for k, v in cache.items()})
        save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
        print(f"{name}: {len(cache)} hooks, |logits| max {logits.abs().max():.3f}")
    print(f"transformer-lens {importlib.metadata.version('transformer-lens')}, torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
