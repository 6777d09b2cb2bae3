//! Llama, Mistral, Qwen2, Qwen3, Phi-3 and OLMo 2 (`model_type: llama | mistral | qwen2 | qwen3 | phi3 | olmo2`),
//! and the mixtures of experts built on them (`mixtral | qwen2_moe | olmoe | qwen3_moe`):
//! RMSNorm, rotary, gated MLPs, q/k/v projections (grouped-query attention), per-layer sliding
//! windows. Qwen3 adds an RMSNorm over each head's q and k; Phi-3 fuses q, k and v into
//! `qkv_proj` and gate and up into `gate_up_proj`, and may rotate part of each head; OLMo 2
//! (`olmo2`) normalises each sublayer's output instead of its input and q and k over all heads.
//! `interp_post_norm` (this toolkit's, a model type HF refuses) is the Llama layout with DeepNet's
//! post-norm blocks: norms on the scaled residual plus each sublayer's output, under OLMo 2's names.
//! The MoE families replace MLPs by a router over gated experts (Qwen2-MoE adds a shared expert;
//! OLMoE normalises q and k as OLMo 2 does, Qwen3-MoE as Qwen3).

use serde::Deserialize;
use serde_json::Value;

use super::{BlockNames, Dim, Layers, MoeNames, QkvNames, RopeParams, TensorNames};
use crate::config::{Activation, Family, ModelConfig, MoeConfig, NormKind, Positional, QkNorm, Rotary};
use crate::error::{Error, Result};

/// The keys HF's `LlamaConfig`, `MistralConfig` and `Qwen2Config` share (Gemma's config extends
/// them), plus the extension key `interp_attn_only`.
#[derive(Debug, Deserialize)]
pub(crate) struct LlamaConfig {
    hidden_size: Dim,
    num_attention_heads: Dim,
    num_key_value_heads: Option<Dim>,
    head_dim: Option<Dim>,
    num_hidden_layers: Layers,
    intermediate_size: Dim,
    vocab_size: Dim,
    max_position_embeddings: Dim,
    rms_norm_eps: Option<f64>,
    pub(crate) hidden_act: Option<String>,
    pub(crate) rope_parameters: Option<RopeParams>,
    rope_scaling: Option<RopeParams>,
    #[serde(flatten)]
    top_level_rope: RopeParams,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    /// 0 means none (Qwen2-MoE saves 0 when `use_sliding_window` is false).
    sliding_window: Option<i64>,
    /// `sliding_attention` / `full_attention` per layer (transformers v5).
    layer_types: Option<Vec<String>>,
    /// Qwen2: sliding windows only from layer `max_window_layers` on, and only if this is set.
    use_sliding_window: Option<bool>,
    max_window_layers: Option<i64>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<i64>,
    interp_attn_only: Option<bool>,
    /// `interp_post_norm`'s residual scale (DeepNet's alpha).
    interp_residual_scale: Option<f64>,
    /// Qwen2 and Qwen2-MoE (transformers v5): biases on q, k and v.
    qkv_bias: Option<bool>,
    #[serde(flatten)]
    moe: MoeKeys,
}

/// The mixture-of-experts keys of `mixtral`, `qwen2_moe`, `olmoe` and `qwen3_moe`.
#[derive(Debug, Deserialize)]
struct MoeKeys {
    /// Mixtral's (and Qwen3-MoE's saved) name for `num_experts`.
    num_local_experts: Option<Dim>,
    num_experts: Option<Dim>,
    num_experts_per_tok: Option<Dim>,
    /// Each expert's width where it differs from `intermediate_size` (Qwen-MoE).
    moe_intermediate_size: Option<Dim>,
    shared_expert_intermediate_size: Option<Dim>,
    norm_topk_prob: Option<bool>,
    /// Layers with a dense MLP of `intermediate_size` units (Qwen-MoE).
    mlp_only_layers: Option<Vec<usize>>,
    /// Every `decoder_sparse_step`-th layer is a mixture of experts (Qwen-MoE).
    decoder_sparse_step: Option<Dim>,
    router_aux_loss_coef: Option<f64>,
    /// OLMoE: q, k and v clamped to this; not supported.
    clip_qkv: Option<f64>,
    /// Routing settings of other MoE families (DeepSeek, GLM-4.5) that change which experts a
    /// token gets or how they are weighted: refused, never ignored.
    scoring_func: Option<Value>,
    topk_method: Option<Value>,
    n_group: Option<Value>,
    topk_group: Option<Value>,
    routed_scaling_factor: Option<Value>,
    n_shared_experts: Option<Value>,
}

impl MoeKeys {
    fn config(&self, model_type: &str, n_layers: usize, d_mlp: i64) -> Result<Option<MoeConfig>> {
        let unsupported = [
            ("scoring_func", &self.scoring_func),
            ("topk_method", &self.topk_method),
            ("n_group", &self.n_group),
            ("topk_group", &self.topk_group),
            ("routed_scaling_factor", &self.routed_scaling_factor),
            ("n_shared_experts", &self.n_shared_experts),
        ];
        if let Some((key, Some(v))) = unsupported.into_iter().find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null())) {
            return Err(Error::Config(format!(
                "unsupported expert routing setting `{key}: {v}` ({model_type} routes by a softmax over the router logits and its top-k)"
            )));
        }
        if let Some(c) = self.clip_qkv {
            return Err(Error::Config(format!("unsupported `clip_qkv: {c}` (q, k and v clamped)")));
        }
        if !matches!(model_type, "mixtral" | "qwen2_moe" | "olmoe" | "qwen3_moe") {
            return Ok(None);
        }
        let need = |v: Option<Dim>, key: &str| v.map(|d| d.0).ok_or_else(|| Error::Config(format!("missing key `{key}`")));
        // Mixtral's key, also what Qwen3-MoE's config saves `num_experts` as.
        let n_experts = need(self.num_local_experts.or(self.num_experts), "num_experts")?;
        let step = self.decoder_sparse_step.map_or(1, |d| d.0) as usize;
        let dense = self.mlp_only_layers.clone().unwrap_or_default();
        if let Some(l) = dense.iter().find(|l| **l >= n_layers) {
            return Err(Error::Config(format!("`mlp_only_layers` names layer {l}, but the model has {n_layers}")));
        }
        Ok(Some(MoeConfig {
            n_experts,
            top_k: need(self.num_experts_per_tok, "num_experts_per_tok")?,
            d_expert: self.moe_intermediate_size.map_or(d_mlp, |d| d.0),
            // Mixtral always renormalises; the others read the key (HF's default: false).
            norm_topk_prob: model_type == "mixtral" || self.norm_topk_prob.unwrap_or(false),
            d_shared_expert: match model_type {
                "qwen2_moe" => Some(need(self.shared_expert_intermediate_size, "shared_expert_intermediate_size")?),
                _ => None,
            },
            layers: (0..n_layers).map(|l| !dense.contains(&l) && (l + 1) % step == 0).collect(),
            // HF's defaults.
            router_aux_loss_coef: self.router_aux_loss_coef.unwrap_or(if model_type == "olmoe" { 0.01 } else { 0.001 }),
        }))
    }
}

pub(crate) fn config(c: LlamaConfig, model_type: &str) -> Result<ModelConfig> {
    let act = Activation::parse(c.hidden_act.as_deref().unwrap_or("silu"))?;
    decoder(c, model_type, act)
}

/// The config of a Llama-layout decoder; Gemma adjusts what differs.
pub(crate) fn decoder(c: LlamaConfig, model_type: &str, act: Activation) -> Result<ModelConfig> {
    let (d_model, n_heads, n_layers) = (c.hidden_size.0, c.num_attention_heads.0, c.num_hidden_layers.0 as usize);
    let d_head = c.head_dim.map_or(d_model / n_heads, |d| d.0);
    let top_theta = c.top_level_rope.rope_theta;
    let rope = RopeParams::pick(c.rope_parameters, c.rope_scaling, c.top_level_rope);
    let base = rope.rope_theta.or(top_theta).unwrap_or(10000.0);
    let window = match c.sliding_window {
        Some(w) if !(0..=super::MAX_DIM).contains(&w) => {
            return Err(Error::Config(format!("`sliding_window` must be between 0 (none) and {}, found {w}", super::MAX_DIM)))
        }
        w => w.filter(|w| *w > 0),
    };
    let sliding_window = (0..n_layers)
        .map(|l| -> Result<Option<i64>> {
            let sliding = match (&c.layer_types, model_type) {
                (Some(types), _) => match types.get(l).map(String::as_str) {
                    Some("sliding_attention") => true,
                    Some("full_attention") => false,
                    other => return Err(Error::Config(format!("layer_types[{l}] is {other:?}"))),
                },
                (None, "gemma2") => l % 2 == 0,
                // Gemma 3: five local layers, then a global one.
                (None, "gemma3_text") => (l + 1) % 6 != 0,
                (None, "mistral" | "mixtral" | "phi3") => true,
                (None, "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe") => c.use_sliding_window.unwrap_or(false) && l as i64 >= c.max_window_layers.unwrap_or(28),
                _ => false,
            };
            Ok(if sliding { window } else { None })
        })
        .collect::<Result<_>>()?;
    let attention_bias = c.attention_bias.unwrap_or(false);
    Ok(ModelConfig {
        model_type: model_type.into(),
        family: Family::Llama,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: c.num_key_value_heads.map_or(n_heads, |d| d.0),
        d_head,
        d_mlp: c.intermediate_size.0,
        d_vocab: c.vocab_size.0,
        d_vocab_out: c.vocab_size.0,
        n_ctx: c.max_position_embeddings.0,
        norm: NormKind::RmsNorm,
        norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
        act,
        gated_mlp: true,
        positional: Positional::Rotary(Rotary { dim: (d_head as f64 * rope.partial_rotary_factor.unwrap_or(1.0)) as i64, base, scaling: rope.scaling()? }),
        attn_scale: (d_head as f64).powf(-0.5),
        sliding_window,
        post_norms: matches!(model_type, "olmo2" | "interp_post_norm"),
        tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
        qkv_bias: c.qkv_bias.unwrap_or(attention_bias || matches!(model_type, "qwen2" | "qwen2_moe")),
        o_bias: attention_bias,
        mlp_bias: c.mlp_bias.unwrap_or(false),
        bos_token_id: c.bos_token_id,
        attn_only: c.interp_attn_only.unwrap_or(false),
        qk_norm: match model_type {
            "qwen3" | "qwen3_moe" | "gemma3_text" => QkNorm::PerHead,
            "olmo2" | "olmoe" => QkNorm::WholeProjection,
            _ => QkNorm::None,
        },
        pre_norms: !matches!(model_type, "olmo2" | "interp_post_norm"),
        post_ln_alpha: match (model_type, c.interp_residual_scale) {
            ("interp_post_norm", Some(alpha)) => Some(alpha),
            ("interp_post_norm", None) => return Err(Error::Config("missing key `interp_residual_scale`".into())),
            _ => None,
        },
        moe: c.moe.config(model_type, n_layers, c.intermediate_size.0)?,
        ..ModelConfig::plain(n_layers)
    })
}

/// Llama-layout names; Gemma-2 moves `post_attention_layernorm` onto the attention output.
pub(crate) fn names(cfg: &ModelConfig) -> TensorNames {
    let blocks = (0..cfg.n_layers)
        .map(|l| {
            let b = format!("model.layers.{l}");
            let (ln2, ln1_post, ln2_post) = match cfg.post_norms {
                true => {
                    (format!("{b}.pre_feedforward_layernorm"), Some(format!("{b}.post_attention_layernorm")), Some(format!("{b}.post_feedforward_layernorm")))
                }
                false => (format!("{b}.post_attention_layernorm"), None, None),
            };
            let phi3 = cfg.model_type == "phi3";
            BlockNames {
                ln1: format!("{b}.input_layernorm"),
                qkv: match phi3 {
                    true => QkvNames::Fused(format!("{b}.self_attn.qkv_proj")),
                    false => QkvNames::Split(["q_proj", "k_proj", "v_proj"].map(|p| format!("{b}.self_attn.{p}"))),
                },
                q_norm: (cfg.qk_norm != QkNorm::None).then(|| format!("{b}.self_attn.q_norm")),
                k_norm: (cfg.qk_norm != QkNorm::None).then(|| format!("{b}.self_attn.k_norm")),
                o: format!("{b}.self_attn.o_proj"),
                ln1_post,
                ln2,
                mlp_in: format!("{b}.mlp.{}", if phi3 { "gate_up_proj" } else { "up_proj" }),
                mlp_gate: Some(format!("{b}.mlp.{}", if phi3 { "gate_up_proj" } else { "gate_proj" })),
                mlp_out: format!("{b}.mlp.down_proj"),
                ln2_post,
                moe: cfg.moe.as_ref().filter(|_| cfg.is_moe_layer(l)).map(|m| moe_names(&b, &cfg.model_type, m)),
            }
        })
        .collect();
    TensorNames {
        embed: "model.embed_tokens.weight".into(),
        pos_embed: None,
        blocks,
        ln_final: "model.norm".into(),
        unembed: "lm_head.weight".into(),
        fused_gate_up: cfg.model_type == "phi3",
        conv1d: false,
        gain_offset: 0.0,
    }
}

/// Mixtral: `block_sparse_moe.gate` and `experts.E.w1` (gate) / `w3` (up) / `w2` (down); the Qwen
/// MoEs and OLMoE: `mlp.gate` and `mlp.experts.E.gate_proj` / `up_proj` / `down_proj`, and Qwen2-MoE's
/// `mlp.shared_expert.*` and `mlp.shared_expert_gate`.
fn moe_names(block: &str, model_type: &str, moe: &MoeConfig) -> MoeNames {
    let (module, [gate, up, down]) = match model_type {
        "mixtral" => ("block_sparse_moe", ["w1", "w3", "w2"]),
        _ => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
    };
    let m = format!("{block}.{module}");
    MoeNames {
        router: format!("{m}.gate"),
        experts: (0..moe.n_experts).map(|e| [gate, up, down].map(|p| format!("{m}.experts.{e}.{p}"))).collect(),
        shared: moe
            .d_shared_expert
            .map(|_| (["gate_proj", "up_proj", "down_proj"].map(|p| format!("{m}.shared_expert.{p}")), format!("{m}.shared_expert_gate"))),
    }
}
