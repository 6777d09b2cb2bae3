"""Writes tests/fixtures/interpbench/planted-induction: a case folder exactly as InterpBench
publishes them (ll_model.pth, ll_model_cfg.pkl, edges.pkl, meta.json), plus prompts.jsonl
(InterpBench ships none; `interp benchmark` reads this one), and next to it the same config
pickled as the HookedTransformerConfig object (ll_model_cfg_object.pkl), as some cases ship it.

The model is the planted induction model of tests/suite/common/planted.rs (written as an HF GPT-2
checkpoint by `cargo run --example planted_case`), whose circuit is known exactly, converted
with TransformerLens's own GPT-2 conversion and checked to give HF's logits. The config is
pickled as InterpBench does (`cfg.to_dict()`: numpy floats, a torch dtype), the state dict saved
with torch.save, and edges.pkl lists the circuit at InterpBench's (ACDC's) granularity:
resid writers into `blocks.L.hook_{q,k,v}_input[h]`, the edges inside each head
(`hook_q_input -> attn.hook_q -> attn.hook_result`) and `blocks.L.hook_resid_post` at the end.

Run: bash scripts/make_tl_fixtures.sh   (which also rebuilds tests/fixtures/transformer_lens)
"""
import json
import os
import pickle
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

SRC = sys.argv[1]
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "interpbench", "planted-induction")


def node(name, n_layers):
    """Our node names as InterpBench writes them (the sender side)."""
    if name == "embed":
        return "hook_embed"
    if name == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    layer, head = name[1:].split("H")
    return f"blocks.{layer}.attn.hook_result[{head}]"


def main():
    # The planted checkpoint names its blocks without `transformer.` (as GPT2Model saves them).
    c = transformers.GPT2Config.from_pretrained(SRC)
    hf = transformers.GPT2LMHeadModel(c).eval()
    state = load_file(os.path.join(SRC, "model.safetensors"))
    missing, unexpected = hf.load_state_dict({k if k.startswith("lm_head") else f"transformer.{k}": v for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function, normalization_type="LN",
        eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel", default_prepend_bos=False,
    )
    model = HookedTransformer(cfg).eval()
    missing, _ = model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    # GPT-2 has no unembedding bias: TransformerLens's b_U stays zero.
    assert all(k.endswith((".IGNORE", ".mask")) or k == "unembed.b_U" for k in missing), missing
    prompts = [json.loads(line) for line in open(os.path.join(SRC, "prompts.jsonl"))]
    ids = torch.tensor([p["clean_ids"] for p in prompts])
    with torch.no_grad():
        d = (model(ids) - hf(ids).logits).abs().max().item()
    assert d < 1e-4, d
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    torch.save(model.state_dict(), os.path.join(OUT, "ll_model.pth"))
    with open(os.path.join(OUT, "ll_model_cfg.pkl"), "wb") as f:
        pickle.dump(cfg.to_dict(), f)
    # Some InterpBench cases pickle the HookedTransformerConfig object itself instead of its dict.
    with open(os.path.join(OUT, "..", "ll_model_cfg_object.pkl"), "wb") as f:
        pickle.dump(cfg, f)
    edges = []
    for sender, receiver in json.load(open(os.path.join(SRC, "circuit.json"))):
        if receiver == "logits":
            edges.append((node(sender, cfg.n_layers), node(receiver, cfg.n_layers)))
            continue
        layer, head = receiver[1:].split("H")
        for letter in "qkv":
            # Into the head's input, then inside the head.
            edges.append((node(sender, cfg.n_layers), f"blocks.{layer}.hook_{letter}_input[{head}]"))
            edges.append((f"blocks.{layer}.hook_{letter}_input[{head}]", f"blocks.{layer}.attn.hook_{letter}[{head}]"))
            edges.append((f"blocks.{layer}.attn.hook_{letter}[{head}]", f"blocks.{layer}.attn.hook_result[{head}]"))
    edges = sorted(set(edges))
    with open(os.path.join(OUT, "edges.pkl"), "wb") as f:
        pickle.dump(edges, f)
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump({"source": "tests/suite/common/planted.rs (hand-built, not trained)", "task": "induction", "ablation_truth": "head level"}, f, indent=1)
    shutil.copy(os.path.join(SRC, "prompts.jsonl"), OUT)
    print(f"wrote {OUT}: {len(edges)} edges in edges.pkl, TransformerLens logits = HF logits within {d:.1e}")


if __name__ == "__main__":
    main()
