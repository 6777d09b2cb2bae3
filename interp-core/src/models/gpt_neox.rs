//! GPT-NeoX / Pythia (`model_type: gpt_neox`): LayerNorm, partial rotary, attention and MLP in
//! parallel by default, q/k/v interleaved per head in one `query_key_value` matrix.

use serde::Deserialize;

use super::{BlockNames, Dim, Layers, QkvNames, RopeParams, TensorNames};
use crate::config::{Activation, Family, ModelConfig, NormKind, Positional, Rotary};

/// HF `GPTNeoXConfig` (v4 keys `rotary_pct` / `rotary_emb_base`, v5 `rope_parameters`).
#[derive(Debug, Deserialize)]
pub(crate) struct GptNeoxConfig {
    hidden_size: Dim,
    num_attention_heads: Dim,
    num_hidden_layers: Layers,
    intermediate_size: Dim,
    vocab_size: Dim,
    max_position_embeddings: Dim,
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    rope_parameters: Option<RopeParams>,
    rope_scaling: Option<RopeParams>,
    #[serde(flatten)]
    top_level_rope: RopeParams,
    attention_bias: Option<bool>,
    use_parallel_residual: Option<bool>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<i64>,
}

pub(crate) fn config(c: GptNeoxConfig) -> crate::Result<ModelConfig> {
    let (d_model, n_heads, n_layers) = (c.hidden_size.0, c.num_attention_heads.0, c.num_hidden_layers.0 as usize);
    let d_head = d_model / n_heads;
    let rope = RopeParams::pick(c.rope_parameters, c.rope_scaling, c.top_level_rope);
    let pct = rope.partial_rotary_factor.or(c.rotary_pct).unwrap_or(0.25);
    let base = rope.rope_theta.or(c.rotary_emb_base).unwrap_or(10000.0);
    let bias = c.attention_bias.unwrap_or(true);
    Ok(ModelConfig {
        model_type: "gpt_neox".into(),
        family: Family::GptNeox,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.intermediate_size.0,
        d_vocab: c.vocab_size.0,
        d_vocab_out: c.vocab_size.0,
        n_ctx: c.max_position_embeddings.0,
        norm: NormKind::LayerNorm,
        norm_eps: c.layer_norm_eps.unwrap_or(1e-5),
        act: Activation::parse(c.hidden_act.as_deref().unwrap_or("gelu"))?,
        positional: Positional::Rotary(Rotary { dim: (d_head as f64 * pct) as i64, base, scaling: rope.scaling()? }),
        parallel_attn_mlp: c.use_parallel_residual.unwrap_or(true),
        attn_scale: (d_head as f64).powf(-0.5),
        tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: true,
        bos_token_id: c.bos_token_id,
        attn_only: false,
        ..ModelConfig::plain(n_layers)
    })
}

pub(crate) fn names(cfg: &ModelConfig) -> TensorNames {
    let blocks = (0..cfg.n_layers)
        .map(|l| {
            let b = format!("gpt_neox.layers.{l}");
            BlockNames {
                ln1: format!("{b}.input_layernorm"),
                qkv: QkvNames::Interleaved(format!("{b}.attention.query_key_value")),
                q_norm: None,
                k_norm: None,
                o: format!("{b}.attention.dense"),
                ln1_post: None,
                ln2: format!("{b}.post_attention_layernorm"),
                mlp_in: format!("{b}.mlp.dense_h_to_4h"),
                mlp_gate: None,
                mlp_out: format!("{b}.mlp.dense_4h_to_h"),
                ln2_post: None,
                moe: None,
            }
        })
        .collect();
    TensorNames {
        embed: "gpt_neox.embed_in.weight".into(),
        pos_embed: None,
        blocks,
        ln_final: "gpt_neox.final_layer_norm".into(),
        unembed: "embed_out.weight".into(),
        fused_gate_up: false,
        conv1d: false,
        gain_offset: 0.0,
    }
}
