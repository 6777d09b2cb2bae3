//! Gemma, Gemma 2 and Gemma 3 (`model_type: gemma | gemma2 | gemma3_text`): the Llama layout with
//! embeddings scaled by sqrt(d_model), norm gains stored as `gain - 1`, tied embeddings; Gemma 2
//! adds norms after attention and MLP, soft caps, alternating sliding windows and
//! `query_pre_attn_scalar`; Gemma 3 adds per-head q/k norms and local layers with their own rotary
//! (`rope_parameters` keyed by layer type).

use serde::Deserialize;
use serde_json::Value;

use super::llama::{self, LlamaConfig};
use super::{RopeParams, TensorNames};
use crate::config::{Activation, Family, ModelConfig, Positional, Rotary};
use crate::error::{Error, Result};

/// HF `GemmaConfig` / `Gemma2Config`: the Llama keys and Gemma's own.
#[derive(Debug, Deserialize)]
pub(crate) struct GemmaConfig {
    #[serde(flatten)]
    base: LlamaConfig,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    tie_word_embeddings: Option<bool>,
    /// Gemma 3 (transformers v5): `{"full_attention": {...}, "sliding_attention": {...}}`;
    /// earlier Gemmas: the usual rotary keys.
    rope_parameters: Option<Value>,
    /// Gemma 3: every position attends to every other.
    use_bidirectional_attention: Option<bool>,
}

fn rope(v: &Value, what: &str) -> Result<RopeParams> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Config(format!("`rope_parameters{what}`: {e}")))
}

pub(crate) fn config(c: GemmaConfig, model_type: &str) -> Result<ModelConfig> {
    let gemma2 = model_type == "gemma2";
    // HF maps Gemma's legacy `gelu` to the tanh approximation; so do we.
    let act = match c.hidden_activation.as_deref().or(c.base.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh") {
        "gelu" => Activation::GeluTanh,
        other => Activation::parse(other)?,
    };
    let gemma3 = model_type == "gemma3_text";
    let mut base = c.base;
    let mut local = None;
    match &c.rope_parameters {
        Some(v) if v.get("full_attention").is_some() || v.get("sliding_attention").is_some() => {
            let of = |key: &str| rope(v.get(key).unwrap_or(&Value::Null), &format!(".{key}"));
            let (mut global, mut sliding) = (of("full_attention")?, of("sliding_attention")?);
            // Gemma 3's defaults: 1M for global layers, 10k for local ones.
            global.rope_theta = global.rope_theta.or(Some(1e6));
            sliding.rope_theta = sliding.rope_theta.or(Some(1e4));
            base.rope_parameters = Some(global);
            local = Some(sliding);
        }
        Some(v) => base.rope_parameters = Some(rope(v, "")?),
        None => {}
    }
    let mut cfg = llama::decoder(base, model_type, act)?;
    cfg.family = match model_type {
        "gemma3_text" => Family::Gemma3,
        "gemma2" => Family::Gemma2,
        _ => Family::Gemma,
    };
    cfg.causal = !c.use_bidirectional_attention.unwrap_or(false);
    if let (Some(local), Positional::Rotary(global)) = (local, &cfg.positional) {
        cfg.local_rotary = Some(Rotary { dim: global.dim, base: local.rope_theta.unwrap_or(1e4), scaling: local.scaling()? });
    }
    cfg.scale_embed = true;
    cfg.tie_embeddings = c.tie_word_embeddings.unwrap_or(true);
    if gemma2 || gemma3 {
        cfg.attn_scale = c.query_pre_attn_scalar.unwrap_or(cfg.d_head as f64).powf(-0.5);
        cfg.attn_softcap = c.attn_logit_softcapping;
        cfg.final_softcap = c.final_logit_softcapping;
        cfg.post_norms = true;
    }
    Ok(cfg)
}

pub(crate) fn names(cfg: &ModelConfig) -> TensorNames {
    TensorNames { gain_offset: 1.0, ..llama::names(cfg) }
}
