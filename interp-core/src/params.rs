//! The weights of a model, as every family's conversion (`models/`) fills them and the forward pass
//! reads them. Matrices are stored as HF stores them ([out, in]); TransformerLens's layouts are
//! given by the accessors of [`HookedTransformer`](crate::HookedTransformer).

use tch::Tensor;

use crate::config::NormKind;
use crate::error::Result;

/// `x W^T + b` with W stored [out, in].
pub(crate) struct Linear {
    pub(crate) w: Tensor,
    pub(crate) b: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.w, self.b.as_ref())?)
    }

    /// The outputs `start..start + len` only (a slice of a fused projection such as q, k, v).
    pub(crate) fn forward_rows(&self, x: &Tensor, start: i64, len: i64) -> Result<Tensor> {
        let b = self.b.as_ref().map(|b| b.f_narrow(0, start, len)).transpose()?;
        Ok(x.f_linear(&self.w.f_narrow(0, start, len)?, b.as_ref())?)
    }
}

/// LayerNorm or RMSNorm; gain and bias in f32 (`None` once folded away by `fold_ln`).
pub(crate) struct Norm {
    pub(crate) kind: NormKind,
    pub(crate) w: Option<Tensor>,
    pub(crate) b: Option<Tensor>,
    pub(crate) eps: f64,
}

pub(crate) struct Attention {
    /// [(n_heads + 2 n_kv_heads) d_head, d_model]: q heads, then k heads, then v heads.
    pub(crate) qkv: Linear,
    /// [d_model, n_heads d_head]
    pub(crate) o: Linear,
    /// Qwen3's RMSNorm over each head's q (gain [d_head]).
    pub(crate) q_norm: Option<Norm>,
    /// Qwen3's RMSNorm over each key head's k (gain [d_head]).
    pub(crate) k_norm: Option<Norm>,
}

/// An MLP sublayer: its norm(s) and weights.
pub(crate) struct Mlp {
    /// `blocks.L.ln2`, before the MLP.
    pub(crate) ln2: Norm,
    /// [d_mlp, d_model]; a mixture of experts: [n_experts d_expert, d_model], the experts' up
    /// projections stacked (expert e's units are rows e d_expert .. (e + 1) d_expert).
    pub(crate) w_in: Linear,
    /// [d_mlp, d_model], gated MLPs only (stacked like `w_in` in a mixture of experts).
    pub(crate) w_gate: Option<Linear>,
    /// The LayerNorm over the hidden units after SoLU (`solu_ln` models: TransformerLens's `mlp.ln`).
    pub(crate) ln: Option<Norm>,
    /// [d_model, d_mlp] ([d_model, n_experts d_expert] in a mixture of experts).
    pub(crate) w_out: Linear,
    /// Gemma-2's norm on the MLP output; in post-norm blocks, the norm of the scaled residual
    /// plus the MLP output.
    pub(crate) ln2_post: Option<Norm>,
    /// The router (and shared expert) of a mixture-of-experts layer, whose experts are `w_in`,
    /// `w_gate` and `w_out`.
    pub(crate) moe: Option<Moe>,
}

/// A mixture-of-experts layer's router and shared expert (sizes in [`crate::config::MoeConfig`]).
pub(crate) struct Moe {
    /// [n_experts, d_model]
    pub(crate) router: Linear,
    /// Qwen2-MoE's shared expert.
    pub(crate) shared: Option<SharedExpert>,
}

/// An expert that every token uses, its output scaled by `sigmoid(x W_shared_gate)` (Qwen2-MoE).
pub(crate) struct SharedExpert {
    /// [d_shared_expert, d_model]
    pub(crate) w_in: Linear,
    /// [d_shared_expert, d_model]
    pub(crate) w_gate: Linear,
    /// [d_model, d_shared_expert]
    pub(crate) w_out: Linear,
    /// [1, d_model]
    pub(crate) gate: Linear,
}

pub(crate) struct Block {
    pub(crate) ln1: Norm,
    pub(crate) attn: Attention,
    /// Gemma-2's norm on the attention output; in post-norm blocks, the norm of the scaled
    /// residual plus the attention output.
    pub(crate) ln1_post: Option<Norm>,
    /// `None` in attention-only models.
    pub(crate) mlp: Option<Mlp>,
}

pub(crate) struct Params {
    /// [d_vocab, d_model]
    pub(crate) w_e: Tensor,
    /// [n_ctx, d_model]
    pub(crate) w_pos: Option<Tensor>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_final: Norm,
    /// [d_vocab_out, d_model] (HF layout; `w_u()` gives TransformerLens' [d_model, d_vocab_out]).
    pub(crate) w_u: Tensor,
    /// [d_vocab_out]
    pub(crate) b_u: Option<Tensor>,
}
