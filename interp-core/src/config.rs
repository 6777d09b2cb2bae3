//! `ModelConfig`: the validated, architecture-independent description of a model, read from an HF
//! `config.json`.

use std::path::Path;

use serde_json::{Map, Value};
use tch::Tensor;

use crate::error::{Error, Result};

/// The HF `model_type`s this runtime loads.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2"];

/// Architecture family; decides tensor names and block layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Gpt2,
    GptNeox,
    /// Llama, Mistral and Qwen2 share one layout.
    Llama,
    Gemma,
    Gemma2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

impl NormKind {
    /// The norm's linear step along `dim`: subtract the mean (LayerNorm) or nothing (RMSNorm).
    /// Dividing the result by the norm's scale gives the normalised input.
    pub fn centre(self, x: &Tensor, dim: i64) -> Result<Tensor> {
        Ok(match self {
            NormKind::LayerNorm => x.f_sub(&x.f_mean_dim(dim, true, x.kind())?)?,
            NormKind::RmsNorm => x.shallow_clone(),
        })
    }
}

/// MLP nonlinearity. Gated MLPs compute `act(x W_gate) * (x W_in)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
    Silu,
    Sigmoid,
    /// No nonlinearity: with a gate this is a bilinear MLP.
    Identity,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            "identity" | "linear" => Activation::Identity,
            other => return Err(Error::Config(format!("unsupported activation `{other}`"))),
        })
    }
}

/// Rotary position embedding on the first `dim` dims of each head (rotate-half style).
#[derive(Clone, Debug, PartialEq)]
pub struct Rotary {
    pub dim: i64,
    pub base: f64,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama-3 frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Positional {
    /// A learned `W_pos` [n_ctx, d_model] added to the embeddings.
    Learned,
    Rotary(Rotary),
}

/// Validated model description. Shapes use TransformerLens names.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The HF `model_type` it came from.
    pub model_type: String,
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: i64,
    pub n_heads: i64,
    /// Key/value heads (< n_heads under grouped-query attention).
    pub n_kv_heads: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    pub d_vocab: i64,
    pub n_ctx: i64,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub act: Activation,
    pub gated_mlp: bool,
    pub positional: Positional,
    /// Attention and MLP both read `resid_pre` (GPT-NeoX); there is no `resid_mid`.
    pub parallel_attn_mlp: bool,
    /// Multiplies the attention scores (usually `d_head^-0.5`).
    pub attn_scale: f64,
    /// GPT-2's `scale_attn_by_inverse_layer_idx`: layer `l` also divides scores by `l + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Per layer: the sliding-window length for local attention, `None` for global layers.
    pub sliding_window: Vec<Option<i64>>,
    /// Gemma-2's extra norms after attention and after the MLP.
    pub post_norms: bool,
    /// Embeddings multiplied by sqrt(d_model) (Gemma).
    pub scale_embed: bool,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    /// No MLPs (config extension `interp_attn_only`).
    pub attn_only: bool,
    /// The `config.json` this came from, written back by `save_pretrained`.
    pub hf_json: Value,
}

/// Keys this toolkit adds to HF `config.json` for models HF cannot express (documented in the
/// README): `interp_attn_only` (blocks without MLPs) and, for `gpt2`, `interp_gated_mlp` (a GLU-family
/// MLP `act(x W_gate) * (x W_in)` with the gate stored as `h.L.mlp.c_gate`).
pub const EXTENSION_KEYS: &[&str] = &["interp_attn_only", "interp_gated_mlp"];

/// Reads keys of one `config.json` with errors that name the key.
struct Keys<'a>(&'a Map<String, Value>);

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn int(&self, key: &str) -> Result<i64> {
        self.opt_int(key)?.ok_or_else(|| Error::Config(format!("missing key `{key}`")))
    }
    fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| v.as_i64().ok_or_else(|| Error::Config(format!("`{key}` must be an integer, found {v}"))))
            .transpose()
    }
    fn opt_float(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| Error::Config(format!("`{key}` must be a number, found {v}"))))
            .transpose()
    }
    fn float_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_float(key)?.unwrap_or(default))
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| Error::Config(format!("`{key}` must be a boolean, found {v}"))))
            .transpose()
            .map(|b| b.unwrap_or(default))
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| Error::Config(format!("`{key}` must be a string, found {v}"))))
            .transpose()
    }
    /// `rope_parameters` (transformers v5) or `rope_scaling` (v4), merged over top-level keys.
    fn rope(&self) -> Keys<'_> {
        match self.get("rope_parameters").or_else(|| self.get("rope_scaling")).and_then(Value::as_object) {
            Some(m) => Keys(m),
            None => Keys(self.0),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        Self::from_hf_json(&value)
    }

    /// Converts an HF `config.json` value.
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| Error::Config("config.json is not a JSON object".into()))?;
        let k = Keys(map);
        let model_type = k.str("model_type")?.ok_or_else(|| Error::Config("missing key `model_type`".into()))?;
        let mut cfg = match model_type {
            "gpt2" => Self::gpt2(&k)?,
            "gpt_neox" => Self::gpt_neox(&k)?,
            "llama" | "mistral" | "qwen2" | "gemma" | "gemma2" => Self::llama_like(&k, model_type)?,
            other => return Err(Error::UnknownArchitecture { found: other.to_string() }),
        };
        cfg.hf_json = value.clone();
        cfg.validate()?;
        Ok(cfg)
    }

    fn gpt2(k: &Keys) -> Result<Self> {
        let d_model = k.int("n_embd")?;
        let n_heads = k.int("n_head")?;
        let d_head = d_model / n_heads.max(1);
        let n_layers = k.int("n_layer")? as usize;
        let scale = if k.bool_or("scale_attn_weights", true)? { (d_head as f64).powf(-0.5) } else { 1.0 };
        Ok(ModelConfig {
            model_type: "gpt2".into(),
            architecture: Architecture::Gpt2,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            d_head,
            d_mlp: k.opt_int("n_inner")?.unwrap_or(4 * d_model),
            d_vocab: k.int("vocab_size")?,
            n_ctx: k.int("n_positions")?,
            norm: NormKind::LayerNorm,
            norm_eps: k.float_or("layer_norm_epsilon", 1e-5)?,
            act: Activation::parse(k.str("activation_function")?.unwrap_or("gelu_new"))?,
            gated_mlp: k.bool_or("interp_gated_mlp", false)?,
            positional: Positional::Learned,
            parallel_attn_mlp: false,
            attn_scale: scale,
            scale_attn_by_inverse_layer_idx: k.bool_or("scale_attn_by_inverse_layer_idx", false)?,
            attn_softcap: None,
            final_softcap: None,
            sliding_window: vec![None; n_layers],
            post_norms: false,
            scale_embed: false,
            tie_embeddings: k.bool_or("tie_word_embeddings", true)?,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            bos_token_id: k.opt_int("bos_token_id")?,
            attn_only: k.bool_or("interp_attn_only", false)?,
            hf_json: Value::Null,
        })
    }

    fn gpt_neox(k: &Keys) -> Result<Self> {
        let d_model = k.int("hidden_size")?;
        let n_heads = k.int("num_attention_heads")?;
        let d_head = d_model / n_heads.max(1);
        let n_layers = k.int("num_hidden_layers")? as usize;
        let rope = k.rope();
        let pct = match rope.opt_float("partial_rotary_factor")? {
            Some(p) => p,
            None => k.float_or("rotary_pct", 0.25)?,
        };
        let base = match rope.opt_float("rope_theta")? {
            Some(b) => b,
            None => k.float_or("rotary_emb_base", 10000.0)?,
        };
        let bias = k.bool_or("attention_bias", true)?;
        Ok(ModelConfig {
            model_type: "gpt_neox".into(),
            architecture: Architecture::GptNeox,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            d_head,
            d_mlp: k.int("intermediate_size")?,
            d_vocab: k.int("vocab_size")?,
            n_ctx: k.int("max_position_embeddings")?,
            norm: NormKind::LayerNorm,
            norm_eps: k.float_or("layer_norm_eps", 1e-5)?,
            act: Activation::parse(k.str("hidden_act")?.unwrap_or("gelu"))?,
            gated_mlp: false,
            positional: Positional::Rotary(Rotary {
                dim: (d_head as f64 * pct) as i64,
                base,
                scaling: rope_scaling(&rope)?,
            }),
            parallel_attn_mlp: k.bool_or("use_parallel_residual", true)?,
            attn_scale: (d_head as f64).powf(-0.5),
            scale_attn_by_inverse_layer_idx: false,
            attn_softcap: None,
            final_softcap: None,
            sliding_window: vec![None; n_layers],
            post_norms: false,
            scale_embed: false,
            tie_embeddings: k.bool_or("tie_word_embeddings", false)?,
            qkv_bias: bias,
            o_bias: bias,
            mlp_bias: true,
            bos_token_id: k.opt_int("bos_token_id")?,
            attn_only: false,
            hf_json: Value::Null,
        })
    }

    fn llama_like(k: &Keys, model_type: &str) -> Result<Self> {
        let d_model = k.int("hidden_size")?;
        let n_heads = k.int("num_attention_heads")?;
        let d_head = match k.opt_int("head_dim")? {
            Some(d) => d,
            None => d_model / n_heads.max(1),
        };
        let n_layers = k.int("num_hidden_layers")? as usize;
        let gemma = model_type.starts_with("gemma");
        let gemma2 = model_type == "gemma2";
        let rope = k.rope();
        let base = match rope.opt_float("rope_theta")? {
            Some(b) => b,
            None => k.float_or("rope_theta", 10000.0)?,
        };
        // HF maps Gemma's legacy `gelu` to the tanh approximation; so do we.
        let act_name = k.str("hidden_activation")?.or(k.str("hidden_act")?).unwrap_or("silu");
        let act = match (gemma, act_name) {
            (true, "gelu") => Activation::GeluTanh,
            _ => Activation::parse(act_name)?,
        };
        let attention_bias = k.bool_or("attention_bias", false)?;
        let window = k.opt_int("sliding_window")?;
        let layer_types: Option<Vec<String>> = match k.get("layer_types") {
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| Error::Config(format!("`layer_types` must be a list of strings: {e}")))?,
            ),
            None => None,
        };
        let sliding_window = (0..n_layers)
            .map(|l| -> Result<Option<i64>> {
                let sliding = match (&layer_types, model_type) {
                    (Some(types), _) => match types.get(l).map(String::as_str) {
                        Some("sliding_attention") => true,
                        Some("full_attention") => false,
                        other => return Err(Error::Config(format!("layer_types[{l}] is {other:?}"))),
                    },
                    (None, "gemma2") => l % 2 == 0,
                    (None, "mistral") => true,
                    (None, "qwen2") => {
                        k.bool_or("use_sliding_window", false)? && l as i64 >= k.opt_int("max_window_layers")?.unwrap_or(28)
                    }
                    _ => false,
                };
                Ok(if sliding { window } else { None })
            })
            .collect::<Result<_>>()?;
        let scale = if gemma2 { k.float_or("query_pre_attn_scalar", d_head as f64)? } else { d_head as f64 };
        Ok(ModelConfig {
            model_type: model_type.into(),
            architecture: match model_type {
                "gemma" => Architecture::Gemma,
                "gemma2" => Architecture::Gemma2,
                _ => Architecture::Llama,
            },
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: k.opt_int("num_key_value_heads")?.unwrap_or(n_heads),
            d_head,
            d_mlp: k.int("intermediate_size")?,
            d_vocab: k.int("vocab_size")?,
            n_ctx: k.int("max_position_embeddings")?,
            norm: NormKind::RmsNorm,
            norm_eps: k.float_or("rms_norm_eps", 1e-6)?,
            act,
            gated_mlp: true,
            positional: Positional::Rotary(Rotary { dim: d_head, base, scaling: rope_scaling(&rope)? }),
            parallel_attn_mlp: false,
            attn_scale: scale.powf(-0.5),
            scale_attn_by_inverse_layer_idx: false,
            attn_softcap: if gemma2 { k.opt_float("attn_logit_softcapping")? } else { None },
            final_softcap: if gemma2 { k.opt_float("final_logit_softcapping")? } else { None },
            sliding_window,
            post_norms: gemma2,
            scale_embed: gemma,
            tie_embeddings: k.bool_or("tie_word_embeddings", gemma)?,
            qkv_bias: attention_bias || model_type == "qwen2",
            o_bias: attention_bias,
            mlp_bias: k.bool_or("mlp_bias", false)?,
            bos_token_id: k.opt_int("bos_token_id")?,
            attn_only: k.bool_or("interp_attn_only", false)?,
            hf_json: Value::Null,
        })
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("number of layers", self.n_layers as i64),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("vocab size", self.d_vocab),
            ("context length", self.n_ctx),
        ];
        for (what, v) in positive {
            if v <= 0 {
                return Err(Error::Config(format!("{what} must be positive, found {v}")));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Config(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            )));
        }
        if matches!(self.architecture, Architecture::Gpt2 | Architecture::GptNeox) && self.d_model % self.n_heads != 0 {
            return Err(Error::Config(format!("d_model ({}) must be divisible by n_heads ({})", self.d_model, self.n_heads)));
        }
        if let Positional::Rotary(r) = &self.positional {
            if r.dim % 2 != 0 || r.dim > self.d_head || r.base <= 0.0 {
                return Err(Error::Config(format!("invalid rotary: dim {} (d_head {}), base {}", r.dim, self.d_head, r.base)));
            }
        }
        if let Some(w) = self.sliding_window.iter().flatten().find(|w| **w <= 0) {
            return Err(Error::Config(format!("sliding_window must be positive, found {w}")));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(Error::Config(format!("norm eps must be positive, found {}", self.norm_eps)));
        }
        Ok(())
    }
}

fn rope_scaling(rope: &Keys) -> Result<RopeScaling> {
    let kind = rope.str("rope_type")?.or(rope.str("type")?).unwrap_or("default");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need(rope, "factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need(rope, "factor")?,
            low_freq_factor: need(rope, "low_freq_factor")?,
            high_freq_factor: need(rope, "high_freq_factor")?,
            original_max_position: need(rope, "original_max_position_embeddings")?,
        },
        other => return Err(Error::Config(format!("unsupported rope type `{other}` (supported: default, linear, llama3)"))),
    })
}

fn need(k: &Keys, key: &str) -> Result<f64> {
    k.opt_float(key)?.ok_or_else(|| Error::Config(format!("rope parameters: missing `{key}`")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pythia_style_keys() {
        let c = ModelConfig::from_hf_json(&json!({
            "model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 6,
            "intermediate_size": 2048, "vocab_size": 50304, "max_position_embeddings": 2048,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true
        }))
        .unwrap();
        assert_eq!(c.positional, Positional::Rotary(Rotary { dim: 16, base: 10000.0, scaling: RopeScaling::None }));
        assert!(c.parallel_attn_mlp && !c.tie_embeddings && c.qkv_bias);
    }

    #[test]
    fn llama3_rope_scaling_in_the_v4_layout() {
        let c = ModelConfig::from_hf_json(&json!({
            "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 1, "intermediate_size": 96, "vocab_size": 10, "max_position_embeddings": 64,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}
        }))
        .unwrap();
        let Positional::Rotary(r) = &c.positional else { panic!("rotary") };
        assert_eq!(r.base, 500000.0);
        assert!(matches!(r.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!((c.n_kv_heads, c.d_head, c.tie_embeddings), (2, 16, false));
    }

    #[test]
    fn sliding_windows_per_layer() {
        let base = |model_type: &str, extra: serde_json::Value| {
            let mut v = json!({
                "model_type": model_type, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
                "intermediate_size": 96, "vocab_size": 10, "max_position_embeddings": 64, "sliding_window": 5
            });
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ModelConfig::from_hf_json(&v).unwrap().sliding_window
        };
        assert_eq!(base("gemma2", json!({})), [Some(5), None, Some(5), None]);
        assert_eq!(base("mistral", json!({})), [Some(5); 4]);
        assert_eq!(base("qwen2", json!({"use_sliding_window": true, "max_window_layers": 2})), [None, None, Some(5), Some(5)]);
        assert_eq!(base("qwen2", json!({})), [None; 4]);
        assert_eq!(base("llama", json!({"layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention"]})), [None, Some(5), None, None]);
    }

    #[test]
    fn invalid_values_are_errors() {
        let bad = |v: serde_json::Value| ModelConfig::from_hf_json(&v).unwrap_err().to_string();
        assert!(bad(json!([1, 2])).contains("not a JSON object"));
        assert!(bad(json!({"n_embd": 8})).contains("missing key `model_type`"));
        let e = bad(json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
            "num_hidden_layers": 1, "intermediate_size": 96, "vocab_size": 10, "max_position_embeddings": 64}));
        assert!(e.contains("multiple of n_kv_heads"), "{e}");
        let e = bad(json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
            "intermediate_size": 96, "vocab_size": 10, "max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn"}}));
        assert!(e.contains("unsupported rope type `yarn`"), "{e}");
    }
}
