"""Builds the reference fixtures that tests/suite/reference.rs checks the runtime against.

For each architecture: a tiny random HF model with a deliberately non-trivial init (large
initializer range, noise on every norm gain and bias, small soft caps, a sliding window shorter than
the sequence), saved with `save_pretrained`, plus `reference.safetensors` holding the input ids, the
logits, every hidden state and every attention pattern that HF transformers computes (eager attention,
float32). Also a small byte-level BPE tokenizer (trained here with HF `tokenizers`) next to the GPT-2
model, with the ids HF gives for a few strings.

Run: bash scripts/make_fixtures.sh   (creates/uses the venv .venv with torch and transformers)
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
BATCH, SEQ = 2, 20

ARCHS = {
    "gpt2": transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2,
        activation_function="gelu_new", bos_token_id=0, eos_token_id=0,
    ),
    "gpt_neox": transformers.GPTNeoXConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, initializer_range=0.2, use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.25},
    ),
    "gpt_neox_sequential": transformers.GPTNeoXConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, initializer_range=0.2, use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    ),
    "llama": transformers.LlamaConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        tie_word_embeddings=False,
    ),
    "mistral": transformers.MistralConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, sliding_window=7,
        head_dim=16,
    ),
    "qwen2": transformers.Qwen2Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "gemma": transformers.GemmaConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=24, intermediate_size=96, max_position_embeddings=64, initializer_range=0.2,
    ),
    "gemma2": transformers.Gemma2Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, max_position_embeddings=64, initializer_range=0.2,
        query_pre_attn_scalar=20, sliding_window=6, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    ),
    # Per-head q/k RMSNorms, an explicit head_dim, q/k/v biases on, sliding windows from layer 1.
    "qwen3": transformers.Qwen3Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=24, intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, attention_bias=True,
        use_sliding_window=True, sliding_window=7, max_window_layers=1, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # Fused qkv_proj and gate_up_proj, a partial rotary and a sliding window shorter than the sequence.
    "phi3": transformers.Phi3Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, original_max_position_embeddings=64, initializer_range=0.2,
        sliding_window=9, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    ),
    # Norms after attention and MLP instead of before, q/k RMSNorms over all heads together.
    "olmo2": transformers.Olmo2Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # Local and global layers (a window shorter than the sequence) with their own rotary bases,
    # per-head q/k norms stored as gain - 1, four norms per block, query_pre_attn_scalar.
    "gemma3_text": transformers.Gemma3TextConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, max_position_embeddings=64, initializer_range=0.2,
        query_pre_attn_scalar=20, sliding_window=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}},
    ),
    # Mixtures of experts: 4 experts, top 2, a router scaled up (below) so that the choices are
    # clear-cut and vary from token to token.
    "mixtral": transformers.MixtralConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64, initializer_range=0.2, sliding_window=9,
        num_local_experts=4, num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # A shared expert scaled by a sigmoid gate, top-k weights not renormalised, layer 1 dense.
    "qwen2_moe": transformers.Qwen2MoeConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=80, moe_intermediate_size=32, shared_expert_intermediate_size=40, num_experts=5,
        num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1], max_position_embeddings=64,
        initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # OLMo 2's q/k norms over the whole projection, but norms before the sublayers; 8 experts, top 3.
    "olmoe": transformers.OlmoeConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=32, num_experts=8, num_experts_per_tok=3, max_position_embeddings=64,
        initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # Qwen3's per-head q/k norms, top-k weights renormalised.
    "qwen3_moe": transformers.Qwen3MoeConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, moe_intermediate_size=24, num_experts=6, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=64, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}


def perturb_norms(model, gen):
    """Noise on every norm gain and bias: a dropped bias or a wrong gain offset must not pass."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("ln_f") or ".ln_f" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def gpt2_tokenizer(vocab_size):
    corpus = [
        "When in the course of human events it becomes necessary for one people to dissolve the bands",
        "The quick brown fox jumps over the lazy dog. Then, Mary and John went to the store.",
        "John gave a drink to Mary. The war lasted from the year 1732 to the year 1789.",
        "Résumé: naïve café, 東京 and emoji 🙂 are bytes too.",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    for arch, cfg in ARCHS.items():
        cfg._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        perturb_norms(model, gen)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):
                    p.mul_(4.0)
        out_dir = os.path.join(OUT, arch)
        shutil.rmtree(out_dir, ignore_errors=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
        # Each router's (logits, top-k weights, top-k experts), by layer.
        routing = {}
        for l, layer in enumerate(getattr(getattr(model, "model", None), "layers", [])):
            gate = getattr(getattr(layer, "mlp", None), "gate", None) or getattr(getattr(layer, "block_sparse_moe", None), "gate", None)
            if gate is not None and hasattr(gate, "top_k"):
                gate.register_forward_hook(lambda m, i, o, l=l: routing.__setitem__(l, o))
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, output_attentions=True)
        tensors = {"input_ids": ids.contiguous(), "logits": out.logits.contiguous()}
        for l, (logits, weights, experts) in routing.items():
            tensors[f"router_logits.{l}"] = logits.reshape(BATCH, SEQ, -1).contiguous()
            tensors[f"expert_weights.{l}"] = weights.reshape(BATCH, SEQ, -1).float().contiguous()
            tensors[f"expert_indices.{l}"] = experts.reshape(BATCH, SEQ, -1).contiguous()
        for i, h in enumerate(out.hidden_states):
            tensors[f"hidden_states.{i}"] = h.contiguous()
        for i, a in enumerate(out.attentions):
            tensors[f"attentions.{i}"] = a.contiguous()
        save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
        if arch == "gpt2":
            tok = gpt2_tokenizer(cfg.vocab_size)
            tok.save(os.path.join(out_dir, "tokenizer.json"))
            texts = ["Then, Mary and John went to the store.", " naïve café 東京 🙂", "hello  world\n\nend"]
            cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
            with open(os.path.join(out_dir, "tokenizer_cases.json"), "w") as f:
                json.dump(cases, f, ensure_ascii=False, indent=1)
        print(f"{arch}: logits {tuple(out.logits.shape)}, |logits| max {out.logits.abs().max():.3f}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)


class Evil:
    """Runs a shell command when unpickled by Python: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran a command",))


def torch_files():
    """The gpt2 fixture as PyTorch files (tests/fixtures/torch): f32, f16, bf16 and sharded
    `pytorch_model.bin` (torch.save of the state dict, as HF writes it; lm_head shares wte's
    storage) and a checkpoint whose pickle calls os.system."""
    from safetensors.torch import load_file

    src = os.path.join(OUT, "gpt2")
    state = load_file(os.path.join(src, "model.safetensors"))
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, one storage in the archive
    root = os.path.join(OUT, "torch")
    shutil.rmtree(root, ignore_errors=True)

    def folder(name):
        d = os.path.join(root, name)
        os.makedirs(d)
        shutil.copy(os.path.join(src, "config.json"), d)
        return d

    for name, dtype in [("gpt2-f32", torch.float32), ("gpt2-f16", torch.float16), ("gpt2-bf16", torch.bfloat16)]:
        torch.save({k: v.to(dtype) for k, v in state.items()}, os.path.join(folder(name), "pytorch_model.bin"))
    d = folder("gpt2-sharded")
    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        # A transposed view, so that strides other than contiguous ones are read too.
        torch.save({k: state[k].t().contiguous().t() if state[k].dim() == 2 else state[k] for k in part}, os.path.join(d, file))
        weight_map.update({k: file for k in part})
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    torch.save({"transformer.wte.weight": state["transformer.wte.weight"], "payload": Evil()}, os.path.join(folder("evil"), "pytorch_model.bin"))
    print(f"torch files: {sorted(os.listdir(root))}")


if __name__ == "__main__":
    if sys.argv[1:] == ["torch"]:
        torch_files()
    else:
        main()
        torch_files()
