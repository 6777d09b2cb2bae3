"""Builds the GGUF reference fixtures that tests/suite/loading.rs checks the GGUF reader against.

- tests/fixtures/gguf/quants.gguf: for each ggml type the reader dequantises, a [2, 512] tensor and,
  beside it as F32, the values `gguf.quants.dequantize` (the `gguf` package, llama.cpp's own Python
  reader) returns for it. Types `gguf` can quantise are quantised from known f32 values; the K-quants
  (which it only dequantises) are random blocks with sane f16 scales.
- tests/fixtures/gguf/<arch>.gguf + <arch>.safetensors: a tiny random HF model of each architecture
  written as llama.cpp's converter writes it (its tensor names from `gguf.get_tensor_name_map`, q/k
  rows permuted for `llama`, Gemma norms stored as 1 + w, GPT-2's Conv1D weights transposed), then
  loaded back by HF transformers' own GGUF loader, whose logits, hidden states and attention
  patterns are the reference.
- tests/fixtures/gguf/<model>.safetensors + tokens.json for the real models of
  scripts/fetch_models.sh (SmolLM2-135M-Instruct, Gemma 3 270M): HF's GGUF loader's logits (at a
  fixed subset of the vocabulary), every hidden state and attention pattern on natural-text prompts,
  and HF's token ids for a paragraph.

Run: bash scripts/make_gguf_fixtures.sh
"""
import json
import os
import sys
import tempfile

import gguf
import numpy as np
import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
REAL = os.path.join(ROOT, "models", "real")
SEQ = 20
torch.manual_seed(0)
rng = np.random.default_rng(0)

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The Eiffel Tower is located in the city of Paris, which is the capital of France.",
]
PARAGRAPH = (
    "Hello world! When Mary and John went to the store, John gave a drink to Mary.  Numbers: 12345, 3.14; "
    "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \u2014 \u201cquotes\u201d\n\tTabs and   spaces. It's 2026-12-06, isn't it?"
)


def quants():
    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    w.add_string("interp.note", "each tensor T beside T.expected, gguf.quants.dequantize(T) as F32")
    # One key of every metadata value type.
    w.add_uint8("interp.u8", 200)
    w.add_int8("interp.i8", -100)
    w.add_uint16("interp.u16", 60000)
    w.add_int16("interp.i16", -30000)
    w.add_uint32("interp.u32", 4000000000)
    w.add_int32("interp.i32", -2000000000)
    w.add_float32("interp.f32", 0.5)
    w.add_uint64("interp.u64", 2**63 + 1)
    w.add_int64("interp.i64", -(2**62))
    w.add_float64("interp.f64", 1e300)
    w.add_bool("interp.bool", True)
    w.add_string("interp.str", "caf\u00e9 \u65e5\u672c")
    w.add_array("interp.array", [1, 2, 3])
    w.add_array("interp.nested", [["a", "b"], ["c"]])
    values = rng.normal(0, 1, size=(2, 512)).astype(np.float32)
    for ty in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        block, size = gguf.GGML_QUANT_SIZES[ty]
        if ty in (T.F32,):
            data = values
        elif ty == T.F16:
            data = values.astype(np.float16)
        elif ty in (T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
            data = gguf.quants.quantize(values, ty)
        else:
            n_blocks = values.size // block
            data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
            # f16 scale fields (d, dmin) as small finite values: where each type keeps them.
            scale = lambda: np.array([rng.uniform(-0.1, 0.1)], dtype=np.float16).view(np.uint8)
            for b in range(n_blocks):
                if ty in (T.Q2_K,):
                    data[b, size - 4:size - 2], data[b, size - 2:] = scale(), scale()
                elif ty in (T.Q3_K, T.Q6_K):
                    data[b, size - 2:] = scale()
                else:  # Q4_K, Q5_K: d, dmin first
                    data[b, 0:2], data[b, 2:4] = scale(), scale()
            data = data.reshape(2, -1)
        if ty in (T.F32, T.F16):
            expected = data.astype(np.float32)
            w.add_tensor(ty.name, data)
        else:
            data = np.ascontiguousarray(data).view(np.uint8).reshape(2, -1)
            expected = gguf.quants.dequantize(data, ty).reshape(2, 512)
            w.add_tensor(ty.name, data, raw_dtype=ty)
        w.add_tensor(ty.name + ".expected", expected.astype(np.float32))
        print(f"quants: {ty.name} ({block} per block, {size} bytes)")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def noisy(model):
    """A non-trivial init: every norm gain and bias off its default."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


TINY = {
    "llama": (gguf.MODEL_ARCH.LLAMA, transformers.LlamaConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, transformers.Qwen2Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, transformers.Qwen3Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "phi3": (gguf.MODEL_ARCH.PHI3, transformers.Phi3Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=96, max_position_embeddings=64, original_max_position_embeddings=64, initializer_range=0.2,
        pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gemma2": (gguf.MODEL_ARCH.GEMMA2, transformers.Gemma2Config(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, sliding_window=5,
        query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    "gemma3": (gguf.MODEL_ARCH.GEMMA3, transformers.Gemma3TextConfig(
        vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        intermediate_size=96, max_position_embeddings=64, initializer_range=0.2, sliding_window=5,
        query_pre_attn_scalar=256)),
    "gpt2": (gguf.MODEL_ARCH.GPT2, transformers.GPT2Config(
        vocab_size=211, n_positions=1024, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)),
}


def permute(w, n_head, n_head_kv):
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny(arch, model_arch, cfg):
    model = noisy(transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval())
    path = os.path.join(OUT, f"{arch}.gguf")
    name = gguf.MODEL_ARCH_NAMES[model_arch]
    w = gguf.GGUFWriter(path, name)
    n = cfg.num_hidden_layers
    w.add_block_count(n)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    # Special ids inside the tiny vocabulary (HF's config defaults lie outside it).
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    if arch == "gpt2":
        # HF reads GPT-2's vocabulary size from the token list, and its positions default to 1024.
        w.add_tokenizer_model("gpt2")
        tokens = [f"t{i}" for i in range(cfg.vocab_size)]
        tokens[1], tokens[2] = "t", "0"
        w.add_token_list(tokens)
        w.add_token_merges(["t 0"])
        w.add_feed_forward_length(4 * cfg.hidden_size)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        rope = cfg.rope_parameters
        theta = rope.get("full_attention", rope).get("rope_theta") if isinstance(rope, dict) else 10000.0
        w.add_rope_freq_base(theta)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_rope_dimension_count(head_dim)
        if arch in ("qwen3", "gemma2", "gemma3"):
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if arch in ("gemma2", "gemma3"):
            w.add_sliding_window(cfg.sliding_window)
        if arch == "gemma2":
            w.add_float32("gemma2.attn_logit_softcapping", cfg.attn_logit_softcapping)
            w.add_float32("gemma2.final_logit_softcapping", cfg.final_logit_softcapping)
    names = gguf.get_tensor_name_map(model_arch, n)
    sd = model.state_dict()
    written = set()
    for hf, t in sd.items():
        base, suffix = hf.rsplit(".", 1)
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        g = names.get_name(base)
        if g is None:
            raise SystemExit(f"{arch}: no GGUF name for {hf}")
        data = t.detach().float().numpy().copy()
        if arch == "llama" and base.endswith("q_proj"):
            data = permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        if arch == "llama" and base.endswith("k_proj"):
            data = permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        if arch.startswith("gemma") and hf.endswith("norm.weight"):
            data = data + 1
        if arch == "gpt2" and base.endswith(("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")) and suffix == "weight":
            data = data.T.copy()
        key = f"{g}.{suffix}"
        if key in written:
            continue
        written.add(key)
        w.add_tensor(key, data)
    if arch == "gpt2" and "output.weight" not in written:
        w.add_tensor("output.weight", sd["transformer.wte.weight"].numpy().copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ids = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ref = reference(path, ids)
    with torch.no_grad():
        direct = model(ids).logits
    d = (direct - ref["logits"]).abs().max().item()
    print(f"{arch}: HF's GGUF loader vs the model written: logits differ by {d:.1e}")
    assert d < 1e-4, arch
    save_file(ref, os.path.join(OUT, f"{arch}.safetensors"))


def hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32, attn_implementation="eager").eval()


def reference(path, ids, model=None, vocab_subset=None):
    model = model or hf_from_gguf(path)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    logits = out.logits if vocab_subset is None else out.logits[..., vocab_subset]
    r = {"input_ids": ids.contiguous(), "logits": logits.contiguous()}
    for i, h in enumerate(out.hidden_states):
        r[f"hidden_states.{i}"] = h.contiguous()
    for i, a in enumerate(out.attentions):
        r[f"attentions.{i}"] = a.contiguous()
    if vocab_subset is not None:
        r["vocab_subset"] = vocab_subset.clone()
    return r


def real(name, file):
    path = os.path.join(REAL, file)
    if not os.path.exists(path):
        print(f"{name}: {path} not found (run scripts/fetch_models.sh); skipped")
        return
    tok = transformers.AutoTokenizer.from_pretrained(REAL, gguf_file=file)
    model = hf_from_gguf(path)
    config = model.config.to_dict()
    vocab = model.config.vocab_size
    subset = torch.arange(0, vocab, vocab // 4096)
    r = {}
    for p, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        for k, v in reference(path, ids, model, subset).items():
            r[f"{p}.{k}"] = v
        top = model(ids).logits[0, -1].topk(3)
        print(f"{name}: {prompt!r} -> {[tok.decode(int(i)) for i in top.indices]}")
    mary, john = tok(" Mary")["input_ids"][-1], tok(" John")["input_ids"][-1]
    with torch.no_grad():
        last = model(r["0.input_ids"]).logits[0, -1]
    ioi = float(last[mary] - last[john])
    print(f"{name}: IOI logit difference Mary - John = {ioi:.3f}")
    save_file(r, os.path.join(OUT, f"{name}.safetensors"))
    tokens = {"text": PARAGRAPH, "ids": tok(PARAGRAPH, add_special_tokens=False)["input_ids"],
              "prompts": {p: tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS},
              "bos_token_id": tok.bos_token_id, "ioi_logit_diff": ioi, "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
              "hf_config": {k: v for k, v in config.items() if k in (
                  "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "intermediate_size", "vocab_size", "rms_norm_eps", "rope_parameters", "layer_types", "sliding_window",
                  "query_pre_attn_scalar", "tie_word_embeddings", "bos_token_id", "eos_token_id")}}
    with open(os.path.join(OUT, f"{name}.tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    print(f"transformers {transformers.__version__}, gguf {gguf.__version__ if hasattr(gguf, '__version__') else '?'}")
    if "--real-only" not in sys.argv:
        quants()
        for arch, (model_arch, cfg) in TINY.items():
            write_tiny(arch, model_arch, cfg)
    real("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
    real("gemma3-270m", "gemma-3-270m-q4_k_m.gguf")
