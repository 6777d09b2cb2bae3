//! `ModelSpec`: the shape of a model to build from scratch (for training), written as an HF
//! `config.json` so that what we train is an ordinary checkpoint.

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Block layout of a model built here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BlockStyle {
    /// LayerNorm, learned positions, biases (HF `gpt2`).
    Gpt2,
    /// RMSNorm, rotary positions, no biases, always-gated MLP (HF `llama`).
    Llama,
}

/// MLP nonlinearity by its common name. The GLU family gates: `act(x W_gate) * (x W_in)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// max(0, x), ungated.
    Relu,
    /// GELU (tanh approximation), ungated.
    Gelu,
    /// Sigmoid gate.
    Glu,
    /// No nonlinearity on the gate.
    Bilinear,
    /// ReLU gate.
    ReGlu,
    /// GELU gate.
    GeGlu,
    /// SiLU gate (Llama's).
    SwiGlu,
}

impl MlpKind {
    /// (HF activation name, gated)
    fn hf(self) -> (&'static str, bool) {
        match self {
            MlpKind::Relu => ("relu", false),
            MlpKind::Gelu => ("gelu_new", false),
            MlpKind::Glu => ("sigmoid", true),
            MlpKind::Bilinear => ("linear", true),
            MlpKind::ReGlu => ("relu", true),
            MlpKind::GeGlu => ("gelu_new", true),
            MlpKind::SwiGlu => ("silu", true),
        }
    }

    /// The names [`MlpKind::parse`] takes.
    pub const NAMES: [&'static str; 7] = ["relu", "gelu", "glu", "bilinear", "reglu", "geglu", "swiglu"];

    /// The kind of one of [`MlpKind::NAMES`] (any case).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => MlpKind::Relu,
            "gelu" => MlpKind::Gelu,
            "glu" => MlpKind::Glu,
            "bilinear" => MlpKind::Bilinear,
            "reglu" => MlpKind::ReGlu,
            "geglu" => MlpKind::GeGlu,
            "swiglu" => MlpKind::SwiGlu,
            other => return Err(Error::Config(format!("unknown MLP `{other}` ({})", Self::NAMES.join(", ")))),
        })
    }
}

/// Where the norms of a block built here sit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NormPlacement {
    /// Before each sublayer (GPT-2, Llama).
    #[default]
    Pre,
    /// Before and after each sublayer, the sublayer's output normalised before it is added (Gemma 2
    /// and 3, the Peri-LN paper): Llama-style blocks saved as HF `gemma2` (so, as Gemma does,
    /// embeddings scaled by sqrt(d_model)), without soft caps or sliding windows.
    Peri,
    /// After each residual addition, DeepNet's post-norm: `norm(alpha x + f(x))` with alpha =
    /// (2 n_layers)^(1/4) and v, o and MLP weights initialised smaller by (8 n_layers)^(-1/4);
    /// no final norm. No HF transformers family computes it, so it is saved as this toolkit's
    /// `interp_post_norm` (Llama-style blocks), a model type HF refuses rather than misreads.
    Post,
}

/// Mixture-of-experts MLPs for a model built here (Llama-style blocks, saved as HF `mixtral`): each
/// token goes to `top_k` of `n_experts` gated MLPs of `d_mlp` units, chosen by a router trained
/// with a load-balancing loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Experts {
    /// Experts per layer.
    pub n_experts: i64,
    /// Experts per token.
    pub top_k: i64,
}

/// Weight of the load-balancing loss that trains a model built with [`Experts`]
/// (`router_aux_loss_coef`; OLMoE's value: routers of small models collapse onto few experts
/// under Mixtral's 0.001).
pub const ROUTER_AUX_LOSS_COEF: f64 = 0.01;

/// A model to build. `mlp: None` makes it attention-only.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// GPT-2 or Llama-style blocks.
    pub style: BlockStyle,
    /// Blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: i64,
    /// Attention heads per block (d_head = d_model / n_heads).
    pub n_heads: i64,
    /// Hidden units of each MLP.
    pub d_mlp: i64,
    /// Vocabulary size.
    pub d_vocab: i64,
    /// Context length.
    pub n_ctx: i64,
    /// The MLP kind; `None` for attention-only blocks.
    pub mlp: Option<MlpKind>,
    /// Share the embedding and unembedding matrices.
    pub tie_embeddings: bool,
    /// The BOS token (also written as `eos_token_id`).
    pub bos_token_id: Option<i64>,
    /// Mixture-of-experts MLPs (each expert `d_mlp` wide; Llama-style blocks only).
    pub experts: Option<Experts>,
    /// Where the norms sit.
    pub norm: NormPlacement,
}

impl ModelSpec {
    /// The HF `config.json` (with this toolkit's extension keys where HF has no equivalent).
    pub fn to_hf_json(&self) -> Result<Value> {
        // Combinations no saved layout holds.
        let (peri, post) = (self.norm == NormPlacement::Peri, self.norm == NormPlacement::Post);
        let refusal = match (self.style, self.experts.is_some(), self.mlp.is_some()) {
            (BlockStyle::Gpt2, ..) if peri || post => Some("peri- and post-norm blocks are built Llama-style: use --style llama"),
            (BlockStyle::Gpt2, true, _) => Some("mixtures of experts are built with Llama-style blocks (saved as HF `mixtral`): use --style llama"),
            (_, true, false) => Some("an attention-only model has no MLPs to split into experts"),
            (_, true, _) if peri || post => Some("peri- and post-norm blocks with mixture-of-experts MLPs are not built (HF's gemma2 has dense MLPs)"),
            (_, _, false) if peri => Some("peri-norm blocks are saved as HF gemma2, which has no attention-only block"),
            (_, _, false) if post => Some("post-norm blocks need an MLP after attention (attention-only post-norm blocks are not built)"),
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(Error::Config(why.into()));
        }
        let default = if self.style == BlockStyle::Llama { MlpKind::SwiGlu } else { MlpKind::Gelu };
        let (act, gated) = self.mlp.unwrap_or(default).hf();
        let mut v = match self.style {
            BlockStyle::Gpt2 => json!({
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "n_layer": self.n_layers, "n_embd": self.d_model, "n_head": self.n_heads, "n_inner": self.d_mlp,
                "vocab_size": self.d_vocab, "n_positions": self.n_ctx, "activation_function": act,
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": self.tie_embeddings,
            }),
            BlockStyle::Llama => {
                if !gated {
                    return Err(Error::Config(format!("Llama-style blocks have gated MLPs; {:?} is not gated", self.mlp)));
                }
                let act = if act == "gelu_new" { "gelu_pytorch_tanh" } else { act };
                let (model_type, architecture) = match (self.experts, self.norm) {
                    (Some(_), _) => ("mixtral", "MixtralForCausalLM"),
                    (None, NormPlacement::Peri) => ("gemma2", "Gemma2ForCausalLM"),
                    // Ours: HF refuses the model type instead of loading something else.
                    (None, NormPlacement::Post) => ("interp_post_norm", "InterpPostNormForCausalLM"),
                    (None, NormPlacement::Pre) => ("llama", "LlamaForCausalLM"),
                };
                json!({
                    "model_type": model_type, "architectures": [architecture],
                    "num_hidden_layers": self.n_layers, "hidden_size": self.d_model, "num_attention_heads": self.n_heads,
                    "num_key_value_heads": self.n_heads, "head_dim": self.d_model / self.n_heads.max(1),
                    "intermediate_size": self.d_mlp, "vocab_size": self.d_vocab, "max_position_embeddings": self.n_ctx,
                    "hidden_act": act, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "attention_bias": false,
                    "mlp_bias": false, "tie_word_embeddings": self.tie_embeddings,
                })
            }
        };
        let map = v.as_object_mut().ok_or_else(|| Error::Config("config is not an object".into()))?;
        if let Some(e) = self.experts {
            map.insert("num_local_experts".into(), e.n_experts.into());
            map.insert("num_experts_per_tok".into(), e.top_k.into());
            map.insert("router_aux_loss_coef".into(), ROUTER_AUX_LOSS_COEF.into());
            map.insert("sliding_window".into(), Value::Null);
        }
        if post {
            map.insert("interp_residual_scale".into(), (2.0 * self.n_layers as f64).powf(0.25).into());
        }
        if peri {
            // Gemma 2's extras off: no soft caps, every layer global, the usual attention scale.
            let head_dim = self.d_model / self.n_heads.max(1);
            map.insert("hidden_activation".into(), map.get("hidden_act").cloned().unwrap_or(Value::Null));
            map.insert("query_pre_attn_scalar".into(), head_dim.into());
            map.insert("attn_logit_softcapping".into(), Value::Null);
            map.insert("final_logit_softcapping".into(), Value::Null);
            map.insert("sliding_window".into(), self.n_ctx.into());
            map.insert("layer_types".into(), json!(vec!["full_attention"; self.n_layers]));
        }
        map.insert("bos_token_id".into(), self.bos_token_id.map_or(Value::Null, Value::from));
        map.insert("eos_token_id".into(), self.bos_token_id.map_or(Value::Null, Value::from));
        if self.mlp.is_none() {
            map.insert("interp_attn_only".into(), true.into());
        } else if gated && self.style == BlockStyle::Gpt2 {
            map.insert("interp_gated_mlp".into(), true.into());
        }
        Ok(v)
    }

    /// The validated runtime config.
    pub fn config(&self) -> Result<ModelConfig> {
        ModelConfig::from_hf_json(&self.to_hf_json()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Another value of the same kind, one the reader must notice if it reads the key.
    fn perturbed(v: &Value) -> Value {
        match v {
            Value::Bool(b) => (!b).into(),
            Value::Number(n) => n.as_i64().map_or_else(|| (n.as_f64().unwrap_or(0.0) * 2.0 + 1.0).into(), |i| (i + 1).into()),
            Value::String(s) => if s == "relu" { "silu" } else { "relu" }.into(),
            Value::Null => 3.into(),
            Value::Array(a) => a.iter().map(perturbed).collect(),
            Value::Object(_) => Value::Null,
        }
    }

    #[test]
    fn every_key_a_spec_writes_is_read() {
        // The keys are spelled here and in the family structs of models/: a key misspelt here would
        // leave the reader at its default without a word. So each key, changed, must change the
        // config read back (or make it invalid). HF-only keys are listed.
        let hf_only = ["model_type", "architectures", "eos_token_id"];
        let base = ModelSpec {
            style: BlockStyle::Gpt2,
            n_layers: 2,
            d_model: 16,
            n_heads: 2,
            d_mlp: 32,
            d_vocab: 50,
            n_ctx: 24,
            mlp: Some(MlpKind::Gelu),
            tie_embeddings: false,
            bos_token_id: Some(0),
            experts: None,
            norm: NormPlacement::Pre,
        };
        let llama = ModelSpec { style: BlockStyle::Llama, mlp: Some(MlpKind::SwiGlu), ..base.clone() };
        let specs = [
            base.clone(),
            ModelSpec { mlp: Some(MlpKind::GeGlu), ..base.clone() },
            ModelSpec { mlp: None, ..base.clone() },
            llama.clone(),
            ModelSpec { mlp: None, ..llama.clone() },
            ModelSpec { experts: Some(Experts { n_experts: 4, top_k: 2 }), ..llama.clone() },
            ModelSpec { norm: NormPlacement::Peri, ..llama.clone() },
            ModelSpec { norm: NormPlacement::Post, ..llama.clone() },
        ];
        let read = |json: &Value| ModelConfig::from_hf_json(json).map(|c| ModelConfig { hf_json: Value::Null, ..c });
        for spec in specs {
            let json = spec.to_hf_json().unwrap();
            let cfg = read(&json).unwrap();
            // Peri-norm blocks are saved as gemma2, which reads `hidden_activation`, and whose
            // `sliding_window` only transformers versions before `layer_types` read.
            let written_for_hf = if spec.norm == NormPlacement::Peri { &["hidden_act", "sliding_window"][..] } else { &[] };
            let unread: Vec<&String> = json
                .as_object()
                .unwrap()
                .iter()
                .filter(|(key, value)| {
                    let mut changed = json.clone();
                    changed[key.as_str()] = perturbed(value);
                    !hf_only.contains(&key.as_str()) && !written_for_hf.contains(&key.as_str()) && read(&changed).is_ok_and(|c| c == cfg)
                })
                .map(|(key, _)| key)
                .collect();
            assert!(unread.is_empty(), "{:?} {:?} {:?}: keys that change nothing: {unread:?}", spec.style, spec.mlp, spec.norm);
        }
    }
}
