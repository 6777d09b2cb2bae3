//! Gemma and Gemma 2 (`model_type: gemma | gemma2`): the Llama layout with embeddings scaled by
//! sqrt(d_model), norm gains stored as `gain - 1`, tied embeddings; Gemma 2 adds norms after
//! attention and MLP, soft caps, alternating sliding windows and `query_pre_attn_scalar`.

use serde::Deserialize;

use super::llama::{self, LlamaConfig};
use super::TensorNames;
use crate::config::{Activation, Family, ModelConfig};
use crate::error::Result;

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
}

pub(crate) fn config(c: GemmaConfig, model_type: &str) -> Result<ModelConfig> {
    let gemma2 = model_type == "gemma2";
    // HF maps Gemma's legacy `gelu` to the tanh approximation; so do we.
    let act = match c.hidden_activation.as_deref().or(c.base.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh") {
        "gelu" => Activation::GeluTanh,
        other => Activation::parse(other)?,
    };
    let mut cfg = llama::decoder(c.base, model_type, act)?;
    cfg.family = if gemma2 { Family::Gemma2 } else { Family::Gemma };
    cfg.scale_embed = true;
    cfg.tie_embeddings = c.tie_word_embeddings.unwrap_or(true);
    if gemma2 {
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
