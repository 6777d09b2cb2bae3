"""The IOI task model (models/tasks-bilinear: Llama layout, bilinear MLP) as a TransformerLens
HookedTransformer, for the scripts that run Python references on it (check_autocircuit.py,
check_mib.py)."""
from pathlib import Path

import torch as t
from transformers import LlamaForCausalLM
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_llama_weights


def hooked_model(model_dir: Path) -> HookedTransformer:
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=t.float32).eval()
    c = hf.config
    assert c.hidden_act == "linear" and c.num_key_value_heads == c.num_attention_heads
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_ctx=c.max_position_embeddings, d_vocab=c.vocab_size, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=c.head_dim,
        rotary_base=getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"], gated_mlp=True, final_rms=True, eps=c.rms_norm_eps,
        original_architecture="LlamaForCausalLM", default_prepend_bos=False, device="cpu",
    )
    model = HookedTransformer(cfg)
    missing, unexpected = model.load_state_dict(convert_llama_weights(hf, cfg), strict=False)
    assert not unexpected and all(k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos")) for k in missing), (missing, unexpected)
    for block in model.blocks:
        block.mlp.act_fn = lambda x: x  # "linear": gate * up, a bilinear MLP
    model.eval()
    probe = t.arange(12).unsqueeze(0) % c.vocab_size
    with t.no_grad():
        diff = (model(probe) - hf(probe).logits).abs().max().item()
    assert diff < 1e-4, f"TransformerLens and HF logits differ by {diff}"
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_split_qkv_input(True)
    return model
