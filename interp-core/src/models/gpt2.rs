//! GPT-2 (`model_type: gpt2`): LayerNorm, learned positions, Conv1D weights stored [in, out], one
//! fused `c_attn` for q, k and v.

use serde::Deserialize;

use super::{BlockNames, Dim, Layers, QkvNames, TensorNames};
use crate::config::{Activation, Family, ModelConfig, NormKind, Positional};

/// HF `GPT2Config`, plus this toolkit's extension keys `interp_attn_only` and `interp_gated_mlp`
/// (a GLU-family MLP `act(x W_gate) * (x W_in)`, its gate stored as `h.L.mlp.c_gate`).
#[derive(Debug, Deserialize)]
pub(crate) struct Gpt2Config {
    n_layer: Layers,
    n_embd: Dim,
    n_head: Dim,
    n_inner: Option<Dim>,
    vocab_size: Dim,
    n_positions: Dim,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<i64>,
    interp_attn_only: Option<bool>,
    interp_gated_mlp: Option<bool>,
}

pub(crate) fn config(c: Gpt2Config) -> crate::Result<ModelConfig> {
    let (d_model, n_heads, n_layers) = (c.n_embd.0, c.n_head.0, c.n_layer.0 as usize);
    let d_head = d_model / n_heads;
    let scale = if c.scale_attn_weights.unwrap_or(true) { (d_head as f64).powf(-0.5) } else { 1.0 };
    Ok(ModelConfig {
        model_type: "gpt2".into(),
        family: Family::Gpt2,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.n_inner.map_or(4 * d_model, |d| d.0),
        d_vocab: c.vocab_size.0,
        d_vocab_out: c.vocab_size.0,
        n_ctx: c.n_positions.0,
        norm: NormKind::LayerNorm,
        norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
        act: Activation::parse(c.activation_function.as_deref().unwrap_or("gelu_new"))?,
        gated_mlp: c.interp_gated_mlp.unwrap_or(false),
        positional: Positional::Learned,
        attn_scale: scale,
        scale_attn_by_inverse_layer_idx: c.scale_attn_by_inverse_layer_idx.unwrap_or(false),
        tie_embeddings: c.tie_word_embeddings.unwrap_or(true),
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        bos_token_id: c.bos_token_id,
        attn_only: c.interp_attn_only.unwrap_or(false),
        ..ModelConfig::plain(n_layers)
    })
}

/// The tensor names under `prefix`: `transformer.` as `GPT2LMHeadModel` saves them, or empty for
/// checkpoints saved from `GPT2Model`.
pub(crate) fn names(cfg: &ModelConfig, prefix: &str) -> TensorNames {
    let p = prefix;
    let blocks = (0..cfg.n_layers)
        .map(|l| {
            let b = format!("{p}h.{l}");
            BlockNames {
                ln1: format!("{b}.ln_1"),
                qkv: QkvNames::Fused(format!("{b}.attn.c_attn")),
                q_norm: None,
                k_norm: None,
                o: format!("{b}.attn.c_proj"),
                ln1_post: None,
                ln2: format!("{b}.ln_2"),
                mlp_in: format!("{b}.mlp.c_fc"),
                mlp_gate: cfg.gated_mlp.then(|| format!("{b}.mlp.c_gate")),
                mlp_out: format!("{b}.mlp.c_proj"),
                ln2_post: None,
                moe: None,
            }
        })
        .collect();
    TensorNames {
        embed: format!("{p}wte.weight"),
        pos_embed: Some(format!("{p}wpe.weight")),
        blocks,
        ln_final: format!("{p}ln_f"),
        unembed: "lm_head.weight".into(),
        fused_gate_up: false,
        conv1d: true,
        gain_offset: 0.0,
    }
}
