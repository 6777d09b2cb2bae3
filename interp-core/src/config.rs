//! `ModelConfig`: the validated, architecture-independent description of a model, read from an HF
//! `config.json` by the family modules in `models/` (`ModelConfig::from_dir`, `from_hf_json`).

use serde_json::Value;
use tch::Tensor;

use crate::error::{Error, Result};

/// Most layers a `config.json` may declare.
pub const MAX_LAYERS: usize = 4096;

/// Largest size any `config.json` dimension may take (16.7M: beyond every published model), so
/// that nothing is ever allocated from an unchecked size.
pub const MAX_DIM: i64 = 1 << 24;

/// The model family (one module of `models/` each); decides tensor names and block layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// HF `gpt2`.
    Gpt2,
    /// HF `gpt_neox` (Pythia).
    GptNeox,
    /// Llama, Mistral and Qwen2 share one layout.
    Llama,
    /// HF `gemma`: the Llama layout, scaled embeddings, norm gains stored as gain - 1.
    Gemma,
    /// HF `gemma2`: Gemma with post-norms, soft caps and alternating sliding windows.
    Gemma2,
    /// HF `gemma3_text`: Gemma 2's layout with per-head q/k norms and local layers' own rotary base.
    Gemma3,
    /// A TransformerLens-native model: a `HookedTransformerConfig` and TransformerLens's state dict
    /// (`embed.W_E`, `blocks.L.attn.W_Q` [n_heads, d_model, d_head], ...).
    TransformerLens,
}

/// The normalisation before each sublayer and the unembedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// Centre, divide by the standard deviation, then gain and bias.
    LayerNorm,
    /// Divide by the root mean square, then gain.
    RmsNorm,
    /// No normalisation (TransformerLens's `normalization_type: None`): the norm hooks do not exist.
    Identity,
}

impl NormKind {
    /// The norm's linear step along `dim`: subtract the mean (LayerNorm) or nothing (RMSNorm).
    /// Dividing the result by the norm's scale gives the normalised input.
    pub fn centre(self, x: &Tensor, dim: i64) -> Result<Tensor> {
        Ok(match self {
            NormKind::LayerNorm => x.f_sub(&x.f_mean_dim(dim, true, x.kind())?)?,
            NormKind::RmsNorm | NormKind::Identity => x.shallow_clone(),
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
    /// max(0, x).
    Relu,
    /// x * sigmoid(x) (swish).
    Silu,
    /// sigmoid(x) (a GLU gate).
    Sigmoid,
    /// No nonlinearity: with a gate this is a bilinear MLP.
    Identity,
    /// SoLU, `x * softmax(x)` over the hidden units.
    Solu,
    /// SoLU followed by a LayerNorm over the hidden units (TransformerLens's `solu_ln`, the SoLU
    /// paper's MLP): `mlp.hook_mid` is the SoLU output, `mlp.hook_post` the normed one.
    SoluLn,
}

impl Activation {
    pub(crate) fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            "identity" | "linear" => Activation::Identity,
            "solu" => Activation::Solu,
            "solu_ln" => Activation::SoluLn,
            other => return Err(Error::Config(format!("unsupported activation `{other}`"))),
        })
    }
}

/// Rotary position embedding on the first `dim` dims of each head (rotate-half style).
#[derive(Clone, Debug, PartialEq)]
pub struct Rotary {
    /// Dimensions rotated (`rotary_dim`; even).
    pub dim: i64,
    /// Frequency base (`rope_theta`).
    pub base: f64,
    /// Scaling of positions or frequencies for long contexts.
    pub scaling: RopeScaling,
}

/// RoPE scaling (HF `rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama-3 frequency-dependent scaling.
    Llama3 {
        /// Scaling of the low frequencies.
        factor: f64,
        /// Wavelengths longer than `original_max_position / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the model was pretrained with.
        original_max_position: f64,
    },
}

/// Where q and k are normalised (before rotary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// No q/k norms.
    None,
    /// An RMSNorm over each head's d_head (Qwen3): hooks [batch, pos, heads, 1 or d_head].
    PerHead,
    /// An RMSNorm over all heads' q (and k) together (OLMo 2): hooks [batch, pos, 1 or heads d_head].
    WholeProjection,
}

/// Mixture-of-experts MLPs (Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE): a router picks `top_k` of
/// `n_experts` gated MLPs per token and sums their outputs weighted by the router's softmax
/// probabilities at the chosen experts.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Experts per MoE layer.
    pub n_experts: i64,
    /// Experts each token is routed to.
    pub top_k: i64,
    /// Hidden units of each expert.
    pub d_expert: i64,
    /// The top-k weights are renormalised to sum to 1 (Mixtral, Qwen3-MoE's checkpoints); otherwise
    /// they are the softmax probabilities as they are (Qwen2-MoE, OLMoE).
    pub norm_topk_prob: bool,
    /// Qwen2-MoE: a shared expert of this many hidden units on every token, its output scaled by
    /// `sigmoid(x W_shared_gate)`.
    pub d_shared_expert: Option<i64>,
    /// Per layer: a mixture of experts (`true`) or a dense MLP of `d_mlp` units (Qwen-MoE's
    /// `mlp_only_layers`, `decoder_sparse_step`).
    pub layers: Vec<bool>,
    /// Weight of the load-balancing loss in training (`router_aux_loss_coef`).
    pub router_aux_loss_coef: f64,
}

impl MoeConfig {
    fn validate(&self, n_layers: usize) -> Result<()> {
        if !(1..=MAX_DIM).contains(&self.n_experts) || !(1..=MAX_DIM).contains(&self.d_expert) {
            return Err(Error::Config(format!(
                "the number of experts and their width must be between 1 and {MAX_DIM}, found {} and {}",
                self.n_experts, self.d_expert
            )));
        }
        if !(1..=self.n_experts).contains(&self.top_k) {
            return Err(Error::Config(format!(
                "the router's top-k (num_experts_per_tok) must be between 1 and the number of experts ({}), found {}",
                self.n_experts, self.top_k
            )));
        }
        if let Some(d) = self.d_shared_expert.filter(|d| !(1..=MAX_DIM).contains(d)) {
            return Err(Error::Config(format!("shared_expert_intermediate_size must be between 1 and {MAX_DIM}, found {d}")));
        }
        if !self.router_aux_loss_coef.is_finite() || self.router_aux_loss_coef < 0.0 {
            return Err(Error::Config(format!("router_aux_loss_coef must be finite and non-negative, found {}", self.router_aux_loss_coef)));
        }
        if self.layers.len() != n_layers {
            return Err(Error::Config(format!("{} MoE layer flags for {n_layers} layers", self.layers.len())));
        }
        Ok(())
    }
}

/// How positions enter the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Positional {
    /// A learned `W_pos` [n_ctx, d_model] added to the embeddings.
    Learned,
    /// Rotary embeddings on q and k.
    Rotary(Rotary),
    /// A learned `W_pos` added to the inputs of q and k only, after ln1, never to the residual
    /// stream (TransformerLens's `shortformer`).
    Shortformer,
}

/// Validated model description. Shapes use TransformerLens names.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The HF `model_type` it came from.
    pub model_type: String,
    /// The block layout and tensor names (see `models/`).
    pub family: Family,
    /// Blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: i64,
    /// Query heads per block.
    pub n_heads: i64,
    /// Key/value heads (< n_heads under grouped-query attention).
    pub n_kv_heads: i64,
    /// Width of each head.
    pub d_head: i64,
    /// Hidden units of each MLP.
    pub d_mlp: i64,
    /// Vocabulary size (input tokens).
    pub d_vocab: i64,
    /// Width of the logits: `d_vocab`, except in algorithmic models (TransformerLens's
    /// `d_vocab_out`, e.g. tracr's output vocabulary).
    pub d_vocab_out: i64,
    /// Context length (positions the model accepts).
    pub n_ctx: i64,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// The norms' epsilon.
    pub norm_eps: f64,
    /// The MLP's nonlinearity (the gate's, in gated MLPs).
    pub act: Activation,
    /// Whether the MLP is gated: `act(x W_gate) * (x W_in)`.
    pub gated_mlp: bool,
    /// Learned or rotary positions.
    pub positional: Positional,
    /// The rotary of sliding-window (local) layers where it differs from `positional`'s (Gemma 3).
    pub local_rotary: Option<Rotary>,
    /// Attention and MLP both read `resid_pre` (GPT-NeoX); there is no `resid_mid`.
    pub parallel_attn_mlp: bool,
    /// Multiplies the attention scores (usually `d_head^-0.5`).
    pub attn_scale: f64,
    /// GPT-2's `scale_attn_by_inverse_layer_idx`: layer `l` also divides scores by `l + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Gemma-2: attention scores soft-capped at this, `c * tanh(s / c)`.
    pub attn_softcap: Option<f64>,
    /// Gemma-2: logits soft-capped at this.
    pub final_softcap: Option<f64>,
    /// Per layer: the sliding-window length for local attention, `None` for global layers.
    pub sliding_window: Vec<Option<i64>>,
    /// Gemma-2's extra norms after attention and after the MLP.
    pub post_norms: bool,
    /// Embeddings multiplied by sqrt(d_model) (Gemma).
    pub scale_embed: bool,
    /// The unembedding is the embedding matrix.
    pub tie_embeddings: bool,
    /// q, k and v projections have biases.
    pub qkv_bias: bool,
    /// RMSNorms on q and k before rotary: per head (Qwen3) or over the whole projection (OLMo 2).
    pub qk_norm: QkNorm,
    /// Norms before attention and MLP (`ln1`, `ln2`); OLMo 2 has none, only norms after them.
    pub pre_norms: bool,
    /// Post-norm blocks (DeepNet, `interp_post_norm`): the residual stream is scaled by this and
    /// each sublayer's output added, then the sum normalised (`resid_mid = norm(alpha resid_pre +
    /// attn_out)`, `resid_post = norm(alpha resid_mid + mlp_out)`), with no norm before the
    /// unembedding. `None`: norms before the sublayers (and Gemma's on their outputs).
    pub post_ln_alpha: Option<f64>,
    /// The attention output projection has a bias.
    pub o_bias: bool,
    /// The MLP's projections have biases.
    pub mlp_bias: bool,
    /// The token `to_tokens` prepends, if the model has one.
    pub bos_token_id: Option<i64>,
    /// No MLPs (config extension `interp_attn_only`).
    pub attn_only: bool,
    /// Mixture-of-experts MLPs, where the model has them.
    pub moe: Option<MoeConfig>,
    /// Each position attends to earlier ones only (every HF family); `false`: to every position
    /// (TransformerLens's `attention_dir: bidirectional`, as tracr compiles most programs).
    pub causal: bool,
    /// The `config.json` this came from, written back by `save_pretrained`.
    pub hf_json: Value,
}

/// Keys this toolkit adds to HF `config.json` for models HF cannot express (documented in the
/// README): `interp_attn_only` (blocks without MLPs), for `gpt2`, `interp_gated_mlp` (a GLU-family
/// MLP `act(x W_gate) * (x W_in)` with the gate stored as `h.L.mlp.c_gate`), and for
/// `interp_post_norm` (a model type HF refuses), `interp_residual_scale` (DeepNet's alpha).
pub const EXTENSION_KEYS: &[&str] = &["interp_attn_only", "interp_gated_mlp", "interp_residual_scale"];

impl ModelConfig {
    /// A plain causal decoder of `n_layers` blocks: pre-norms, no soft caps, sliding windows,
    /// post-norms, q/k norms or other extras. Each family sets its sizes and what differs (the
    /// sizes here are 0, which validation refuses, so none can be left unset).
    pub(crate) fn plain(n_layers: usize) -> ModelConfig {
        ModelConfig {
            model_type: String::new(),
            family: Family::Gpt2,
            n_layers,
            d_model: 0,
            n_heads: 0,
            n_kv_heads: 0,
            d_head: 0,
            d_mlp: 0,
            d_vocab: 0,
            d_vocab_out: 0,
            n_ctx: 0,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            act: Activation::Gelu,
            gated_mlp: false,
            positional: Positional::Learned,
            local_rotary: None,
            parallel_attn_mlp: false,
            attn_scale: 1.0,
            scale_attn_by_inverse_layer_idx: false,
            attn_softcap: None,
            final_softcap: None,
            sliding_window: vec![None; n_layers],
            post_norms: false,
            scale_embed: false,
            tie_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            attn_only: false,
            qk_norm: QkNorm::None,
            pre_norms: true,
            post_ln_alpha: None,
            moe: None,
            causal: true,
            hf_json: Value::Null,
        }
    }

    /// Whether layer `l`'s MLP is a mixture of experts.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.layers.get(l).copied().unwrap_or(false))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("number of layers", self.n_layers as i64),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("vocab size", self.d_vocab),
            ("output vocab size", self.d_vocab_out),
            ("context length", self.n_ctx),
        ];
        for (what, v) in positive {
            if !(1..=MAX_DIM).contains(&v) {
                return Err(Error::Config(format!("{what} must be between 1 and {MAX_DIM}, found {v}")));
            }
        }
        if self.n_layers > MAX_LAYERS {
            return Err(Error::Config(format!("at most {MAX_LAYERS} layers are supported, found {}", self.n_layers)));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::Config(format!("n_heads ({}) must be a multiple of n_kv_heads ({})", self.n_heads, self.n_kv_heads)));
        }
        if matches!(self.family, Family::Gpt2 | Family::GptNeox) && self.d_model % self.n_heads != 0 {
            return Err(Error::Config(format!("d_model ({}) must be divisible by n_heads ({})", self.d_model, self.n_heads)));
        }
        if self.tie_embeddings && self.d_vocab_out != self.d_vocab {
            return Err(Error::Config(format!("a tied unembedding needs d_vocab_out = d_vocab, found {} and {}", self.d_vocab_out, self.d_vocab)));
        }
        let global = match &self.positional {
            Positional::Rotary(r) => Some(r),
            _ => None,
        };
        if self.local_rotary.is_some() && global.is_none() {
            return Err(Error::Config("a local rotary needs rotary positions".into()));
        }
        for r in global.into_iter().chain(&self.local_rotary) {
            let factors = match r.scaling {
                RopeScaling::None => vec![],
                RopeScaling::Linear { factor } => vec![factor],
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                    vec![factor, low_freq_factor, high_freq_factor, original_max_position]
                }
            };
            let bad_factor = factors.iter().any(|f| !f.is_finite() || *f <= 0.0);
            if r.dim < 0 || r.dim % 2 != 0 || r.dim > self.d_head || !r.base.is_finite() || r.base <= 0.0 || bad_factor {
                return Err(Error::Config(format!("invalid rotary: dim {} (d_head {}), base {}", r.dim, self.d_head, r.base)));
            }
        }
        if let Some(w) = self.sliding_window.iter().flatten().find(|w| **w <= 0) {
            return Err(Error::Config(format!("sliding_window must be positive, found {w}")));
        }
        if !self.norm_eps.is_finite() || self.norm_eps <= 0.0 {
            return Err(Error::Config(format!("norm eps must be positive, found {}", self.norm_eps)));
        }
        if let Some(moe) = &self.moe {
            moe.validate(self.n_layers)?;
            if self.mlp_bias || !self.gated_mlp || self.attn_only {
                return Err(Error::Config("mixture-of-experts MLPs are gated, without biases".into()));
            }
        }
        if self.post_ln_alpha.is_some() && (self.attn_only || self.parallel_attn_mlp || !self.post_norms) {
            return Err(Error::Config("post-norm blocks need an attention and an MLP sublayer in sequence, each followed by its norm".into()));
        }
        let scales = [
            ("interp_residual_scale", self.post_ln_alpha),
            ("attention scale", Some(self.attn_scale)),
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
        ];
        if let Some((what, v)) = scales.into_iter().find_map(|(w, v)| v.filter(|v| !v.is_finite() || *v <= 0.0).map(|v| (w, v))) {
            return Err(Error::Config(format!("{what} must be positive and finite, found {v}")));
        }
        Ok(())
    }
}
