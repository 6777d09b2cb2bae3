//! A GGUF file as an HF checkpoint: the `config.json` HF's GGUF loader would build from the
//! metadata (transformers 5.23, `modeling_gguf_pytorch_utils.py`), and the tensors under HF names.
//!
//! Per architecture (`general.architecture`): `llama` (SmolLM2, Llama, Mistral-style), `qwen2`,
//! `qwen3`, `phi3`, `gemma2`, `gemma3` and `gpt2`. llama.cpp's converter changes three things on
//! the way in, undone here as HF undoes them: it permutes the rows of a `llama` model's q and k
//! projections for its interleaved rotary (`LlamaModel.permute`), it stores Gemma's norm gains as
//! `1 + w`, and it stores GPT-2's Conv1D weights as [out, in].

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};
use tch::{Device, Kind, Tensor};

use super::{GgufFile, Value};
use crate::checkpoint::TensorSource;
use crate::error::{Error, Result};

/// The architectures read, as `general.architecture` names them.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt2"];

/// What a GGUF tensor needs to become its HF counterpart.
#[derive(Clone, Copy, Debug)]
enum Fix {
    None,
    /// Undo llama.cpp's rotary row permutation over this many heads.
    Unpermute(i64),
    /// Gemma's norm gains: stored `1 + w`, HF's `w`.
    MinusOne,
    /// GPT-2's Conv1D: stored [out, in], HF's [in, out].
    Transpose,
}

/// A GGUF file seen as HF-named tensors.
pub(crate) struct GgufCheckpoint {
    file: GgufFile,
    /// HF name -> (GGUF name, fix).
    names: HashMap<String, (String, Fix)>,
}

impl GgufCheckpoint {
    /// Maps every tensor of `file` (a model of `h` query and `kv` key/value heads) to its HF name;
    /// a tensor this runtime would not use (rotary frequency factors, an unknown name) is refused,
    /// never skipped.
    pub(crate) fn new(file: GgufFile, h: i64, kv: i64) -> Result<Self> {
        let arch = file.architecture()?.to_string();
        let mut names = HashMap::new();
        for t in &file.tensors {
            let (hf, fix) = hf_name(&arch, &t.name, h, kv).ok_or_else(|| Error::Checkpoint {
                path: file.path().to_path_buf(),
                message: format!("tensor `{}` has no place in a {arch} model as HF transformers defines it", t.name),
            })?;
            names.insert(hf, (t.name.clone(), fix));
        }
        Ok(GgufCheckpoint { file, names })
    }
}

impl TensorSource for GgufCheckpoint {
    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn names(&self) -> Option<Vec<String>> {
        Some(self.names.keys().cloned().collect())
    }

    fn tensor(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let (gguf, fix) = self.names.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string(), expected: shape.to_vec() })?;
        let info = self.file.info(gguf).ok_or_else(|| Error::MissingTensor { name: name.to_string(), expected: shape.to_vec() })?;
        let mut stored = info.shape.clone();
        if matches!(fix, Fix::Transpose) {
            stored.reverse();
        }
        if stored != shape {
            return Err(Error::Checkpoint {
                path: self.file.path().to_path_buf(),
                message: format!(
                    "tensor `{gguf}` (HF `{name}`) has shape {stored:?}, but the metadata's sizes (`{}.*`, the vocabulary) imply {shape:?}",
                    self.file.architecture().unwrap_or("?")
                ),
            });
        }
        let t = self.file.tensor(gguf)?;
        let t = match *fix {
            Fix::None => t,
            Fix::MinusOne => t.f_sub_scalar(1.0)?,
            Fix::Transpose => t.f_tr()?.f_contiguous()?,
            Fix::Unpermute(heads) => {
                let rows = shape[0];
                if rows % (2 * heads) != 0 {
                    return Err(Error::Checkpoint {
                        path: self.file.path().to_path_buf(),
                        message: format!("tensor `{gguf}`: {rows} rows are not {heads} heads of an even size"),
                    });
                }
                let mut view = vec![heads, rows / heads / 2, 2];
                view.extend_from_slice(&shape[1..]);
                t.f_reshape(view.as_slice())?.f_transpose(1, 2)?.f_reshape(shape)?
            }
        };
        Ok(t.f_to_kind(kind)?.f_to_device(device)?)
    }
}

/// The HF name of GGUF tensor `gguf` of architecture `arch`, and what it needs.
fn hf_name(arch: &str, gguf: &str, h: i64, kv: i64) -> Option<(String, Fix)> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let gemma = arch.starts_with("gemma");
    let norm_fix = if gemma && suffix == "weight" { Fix::MinusOne } else { Fix::None };
    if arch == "gpt2" {
        let conv = if suffix == "weight" { Fix::Transpose } else { Fix::None };
        let name = match stem {
            "token_embd" => "transformer.wte".to_string(),
            "position_embd" => "transformer.wpe".to_string(),
            "output_norm" => "transformer.ln_f".to_string(),
            "output" => "lm_head".to_string(),
            _ => {
                let (l, part) = block(stem)?;
                let (hf, fix) = match part {
                    "attn_norm" => ("ln_1", Fix::None),
                    "attn_qkv" => ("attn.c_attn", conv),
                    "attn_output" => ("attn.c_proj", conv),
                    "ffn_norm" => ("ln_2", Fix::None),
                    "ffn_up" => ("mlp.c_fc", conv),
                    "ffn_down" => ("mlp.c_proj", conv),
                    _ => return None,
                };
                return Some((format!("transformer.h.{l}.{hf}.{suffix}"), fix));
            }
        };
        return Some((format!("{name}.{suffix}"), Fix::None));
    }
    let (name, fix) = match stem {
        "token_embd" => ("model.embed_tokens".to_string(), Fix::None),
        "output_norm" => ("model.norm".to_string(), norm_fix),
        "output" => ("lm_head".to_string(), Fix::None),
        _ => {
            let (l, part) = block(stem)?;
            let permute = |heads| if arch == "llama" { Fix::Unpermute(heads) } else { Fix::None };
            let (hf, fix) = match (part, gemma) {
                ("attn_norm", _) => ("input_layernorm", norm_fix),
                ("attn_q", _) => ("self_attn.q_proj", permute(h)),
                ("attn_k", _) => ("self_attn.k_proj", permute(kv)),
                ("attn_v", _) => ("self_attn.v_proj", Fix::None),
                ("attn_qkv", _) if arch == "phi3" => ("self_attn.qkv_proj", Fix::None),
                ("attn_output", _) => ("self_attn.o_proj", Fix::None),
                ("attn_q_norm", _) => ("self_attn.q_norm", norm_fix),
                ("attn_k_norm", _) => ("self_attn.k_norm", norm_fix),
                ("ffn_norm", false) => ("post_attention_layernorm", Fix::None),
                ("ffn_norm", true) => ("pre_feedforward_layernorm", norm_fix),
                ("post_attention_norm", true) => ("post_attention_layernorm", norm_fix),
                ("post_ffw_norm", true) => ("post_feedforward_layernorm", norm_fix),
                ("ffn_up", _) if arch == "phi3" => ("mlp.gate_up_proj", Fix::None),
                ("ffn_gate", _) => ("mlp.gate_proj", Fix::None),
                ("ffn_up", _) => ("mlp.up_proj", Fix::None),
                ("ffn_down", _) => ("mlp.down_proj", Fix::None),
                _ => return None,
            };
            return Some((format!("model.layers.{l}.{hf}.{suffix}"), fix));
        }
    };
    Some((format!("{name}.{suffix}"), fix))
}

/// `blk.L.part` -> (L, part).
fn block(stem: &str) -> Option<(usize, &str)> {
    let rest = stem.strip_prefix("blk.")?;
    let (l, part) = rest.split_once('.')?;
    Some((l.parse().ok()?, part))
}

/// The HF `config.json` of `file`, as HF's GGUF loader builds it, with the sizes the tensors show
/// where the metadata leaves them out (the vocabulary, tied embeddings, q/k/v biases).
pub(crate) fn config(file: &GgufFile) -> Result<Json> {
    let arch = file.architecture()?;
    if !GGUF_ARCHITECTURES.contains(&arch) {
        return Err(Error::UnknownGgufArchitecture { found: arch.to_string(), supported: GGUF_ARCHITECTURES });
    }
    let bad = |message: String| Error::Checkpoint { path: file.path().to_path_buf(), message };
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<Option<i64>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| i64::try_from(n).ok())
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(|| bad(format!("`{}` must be a positive integer, found {}", key(k), v.summary()))),
        }
    };
    let need = |k: &str| int(k)?.ok_or_else(|| bad(format!("the metadata has no `{}`", key(k))));
    let float = |k: &str| -> Result<Option<f64>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| bad(format!("`{}` must be a finite number, found {}", key(k), v.summary())))
            }
        }
    };
    for refused in ["rope.scaling.type", "rope.scaling.factor"] {
        if let Some(v) = file.get(&key(refused)) {
            if !matches!(v.as_str(), Some("none")) && v.as_f64() != Some(1.0) {
                return Err(bad(format!("`{}` = {}: scaled rotary embeddings from GGUF metadata are not supported", key(refused), v.summary())));
            }
        }
    }
    let n_layers = need("block_count")?;
    let d_model = need("embedding_length")?;
    let n_ctx = need("context_length")?;
    let heads = need("attention.head_count")?;
    let tokens = file.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(<[Value]>::len);
    let embed_rows = file.info("token_embd.weight").and_then(|t| t.shape.first().copied());
    let vocab = match (int("vocab_size")?, tokens, embed_rows) {
        (Some(v), ..) => v,
        (None, Some(t), _) => t as i64,
        (None, None, Some(r)) => r,
        (None, None, None) => return Err(bad("no vocabulary size: no `vocab_size`, no tokenizer tokens, no `token_embd.weight`".into())),
    };
    if let Some(t) = tokens.filter(|&t| t as i64 > vocab) {
        return Err(bad(format!("the tokenizer has {t} tokens, more than the vocabulary size {vocab}")));
    }
    let special = |k: &str| file.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|n| n as i64);
    let tied = file.info("output.weight").is_none();
    let mut c = Map::new();
    let mut set = |k: &str, v: Json| {
        c.insert(k.to_string(), v);
    };
    set("vocab_size", json!(vocab));
    set("tie_word_embeddings", json!(tied));
    for (hf, k) in [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")] {
        if let Some(id) = special(k) {
            set(hf, json!(id));
        }
    }
    if arch == "gpt2" {
        set("model_type", json!("gpt2"));
        set("architectures", json!(["GPT2LMHeadModel"]));
        set("n_layer", json!(n_layers));
        set("n_embd", json!(d_model));
        set("n_head", json!(heads));
        set("n_positions", json!(n_ctx));
        set("n_ctx", json!(n_ctx));
        if let Some(d) = int("feed_forward_length")? {
            set("n_inner", json!(d));
        }
        set("layer_norm_epsilon", json!(float("attention.layer_norm_epsilon")?.unwrap_or(1e-5)));
        return Ok(Json::Object(c));
    }
    let kv = int("attention.head_count_kv")?.unwrap_or(heads);
    let eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6);
    let head_dim = match int("attention.key_length")? {
        Some(d) => d,
        None if arch == "llama" => int("rope.dimension_count")?.unwrap_or(d_model / heads),
        None => d_model / heads,
    };
    let theta = float("rope.freq_base")?.unwrap_or(10_000.0);
    let (model_type, class) = match arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        "phi3" => ("phi3", "Phi3ForCausalLM"),
        "gemma2" => ("gemma2", "Gemma2ForCausalLM"),
        _ => ("gemma3_text", "Gemma3ForCausalLM"),
    };
    set("model_type", json!(model_type));
    set("architectures", json!([class]));
    set("num_hidden_layers", json!(n_layers));
    set("hidden_size", json!(d_model));
    set("intermediate_size", json!(need("feed_forward_length")?));
    set("num_attention_heads", json!(heads));
    set("num_key_value_heads", json!(kv));
    set("head_dim", json!(head_dim));
    set("max_position_embeddings", json!(n_ctx));
    set("rms_norm_eps", json!(eps));
    match arch {
        "gemma2" | "gemma3" => {
            set("hidden_activation", json!("gelu_pytorch_tanh"));
            // HF's defaults for what llama.cpp's metadata leaves out.
            set("query_pre_attn_scalar", json!(256));
            let window = int("attention.sliding_window")?;
            if let Some(w) = window {
                set("sliding_window", json!(w));
            }
            if arch == "gemma2" {
                set("attn_logit_softcapping", json!(float("attn_logit_softcapping")?.unwrap_or(50.0)));
                set("final_logit_softcapping", json!(float("final_logit_softcapping")?.unwrap_or(30.0)));
                set("rope_parameters", json!({"rope_type": "default", "rope_theta": theta}));
                let types: Vec<&str> = (0..n_layers).map(|l| if l % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect();
                set("layer_types", json!(types));
            } else {
                // Gemma 3: five local layers, then a global one; local layers rotate with base 10k.
                let types: Vec<&str> = (0..n_layers).map(|l| if (l + 1) % 6 == 0 { "full_attention" } else { "sliding_attention" }).collect();
                set("layer_types", json!(types));
                set(
                    "rope_parameters",
                    json!({"full_attention": {"rope_type": "default", "rope_theta": theta}, "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
                );
            }
        }
        _ => {
            set("hidden_act", json!("silu"));
            let mut rope = json!({"rope_type": "default", "rope_theta": theta});
            if arch == "phi3" {
                if let Some(dim) = int("rope.dimension_count")?.filter(|&d| d != head_dim) {
                    rope["partial_rotary_factor"] = json!(dim as f64 / head_dim as f64);
                }
            }
            set("rope_parameters", rope);
            if arch == "qwen2" {
                set("qkv_bias", json!(file.info("blk.0.attn_q.bias").is_some()));
            }
            if arch == "llama" {
                set("attention_bias", json!(file.info("blk.0.attn_q.bias").is_some()));
            }
        }
    }
    Ok(Json::Object(c))
}
