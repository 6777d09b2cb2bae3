//! One module per model family, as candle does: a serde struct mirroring the family's HF
//! `config.json`, its conversion into the validated [`ModelConfig`], and one table of HF tensor
//! names ([`TensorNames`]) that loading and saving both read.
//!
//! Linear weights are kept in HF's [out, in] layout (so `Tensor::linear` runs one fused GEMM), with
//! q, k and v fused into one matrix; `HookedTransformer::w_q` etc. give TransformerLens views.

mod gemma;
mod gpt2;
mod gpt_neox;
mod llama;
mod transformer_lens;

use std::path::Path;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{Checkpoint, TensorSource};
use crate::config::{Family, ModelConfig, MoeConfig, NormKind, QkNorm, RopeScaling, MAX_DIM};
use crate::error::{Error, Result};
use crate::params::{Attention, Block, Linear, Mlp, Moe, Norm, Params, SharedExpert};

/// The HF `model_type`s this runtime loads.
/// (`interp_post_norm` is this toolkit's own: post-norm blocks, which HF has no family for and
/// refuses.)
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "gpt2",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo2",
    "gemma",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
    "olmoe",
    "qwen3_moe",
    "interp_post_norm",
];

/// Converts an HF `config.json` value into a validated config (`hf_json` keeps the value).
pub(crate) fn config_from_hf(value: &Value) -> Result<ModelConfig> {
    let map = value.as_object().ok_or_else(|| Error::Config("config.json is not a JSON object".into()))?;
    let model_type = match map.get("model_type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(Error::Config(format!("`model_type` must be a string, found {other}"))),
        // A TransformerLens `HookedTransformerConfig` has no `model_type`.
        None if transformer_lens::is_config(map) => {
            let mut cfg = transformer_lens::config(parse(value)?)?;
            cfg.hf_json = value.clone();
            cfg.validate()?;
            return Ok(cfg);
        }
        None => return Err(Error::Config("missing key `model_type` (nor is it a TransformerLens config: no `d_model`, `n_layers`, `d_head`)".into())),
    };
    let mut cfg = match model_type {
        "gpt2" => gpt2::config(parse(value)?)?,
        "gpt_neox" => gpt_neox::config(parse(value)?)?,
        "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" | "olmo2" | "mixtral" | "qwen2_moe" | "olmoe" | "qwen3_moe" | "interp_post_norm" => {
            llama::config(parse(value)?, model_type)?
        }
        "gemma" | "gemma2" | "gemma3_text" => gemma::config(parse(value)?, model_type)?,
        other => return Err(Error::UnknownModelType { found: other.to_string(), supported: SUPPORTED_MODEL_TYPES }),
    };
    cfg.hf_json = value.clone();
    cfg.validate()?;
    Ok(cfg)
}

/// Deserializes a family's config struct; errors name the key (`missing key `n_embd``,
/// `` `n_head` must be an integer, found "x" ``).
fn parse<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        Error::Config(match inner.strip_prefix("missing field ") {
            Some(field) => format!("missing key {field}"),
            None if key == "." => inner,
            None => format!("`{key}` {inner}"),
        })
    })
}

// Reading a config is the family modules' work, so it lives here: config.rs knows no family.
impl ModelConfig {
    /// Reads and validates `<dir>/config.json` (or, in an InterpBench case folder without one,
    /// the pickled TransformerLens config `ll_model_cfg.pkl`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        // An InterpBench case folder: the TransformerLens config pickled.
        let pickled = dir.join("ll_model_cfg.pkl");
        if !path.exists() && pickled.exists() {
            return Self::from_hf_json(&crate::torch_file::read_pickle(&pickled)?);
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        Self::from_hf_json(&value)
    }

    /// Converts an HF `config.json` value (each family's keys are read by its module in
    /// `models/`).
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        config_from_hf(value)
    }
}

/// A size from `config.json`: an integer in `1..=MAX`, checked as it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dim<const MAX: i64 = MAX_DIM>(pub(crate) i64);

/// A layer count: at most [`MAX_LAYERS`](crate::config::MAX_LAYERS).
pub(crate) type Layers = Dim<{ crate::config::MAX_LAYERS as i64 }>;

impl<'de, const MAX: i64> Deserialize<'de> for Dim<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v.as_i64() {
            Some(n) if (1..=MAX).contains(&n) => Ok(Dim(n)),
            Some(n) => Err(D::Error::custom(format!("must be between 1 and {MAX}, found {n}"))),
            None => Err(D::Error::custom(format!("must be an integer, found {v}"))),
        }
    }
}

/// Rotary keys: in `rope_parameters` (transformers v5), `rope_scaling` (v4), or at the top level.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RopeParams {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    pub(crate) rope_theta: Option<f64>,
    pub(crate) partial_rotary_factor: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

impl RopeParams {
    /// The nested object if the config has one, else the top-level keys.
    fn pick(v5: Option<RopeParams>, v4: Option<RopeParams>, top: RopeParams) -> RopeParams {
        v5.or(v4).unwrap_or(top)
    }

    fn scaling(&self) -> Result<RopeScaling> {
        let need = |v: Option<f64>, key: &str| v.ok_or_else(|| Error::Config(format!("rope parameters: missing `{key}`")));
        let kind = self.rope_type.as_deref().or(self.legacy_type.as_deref()).unwrap_or("default");
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(self.factor, "factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need(self.factor, "factor")?,
                low_freq_factor: need(self.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(self.high_freq_factor, "high_freq_factor")?,
                original_max_position: need(self.original_max_position_embeddings, "original_max_position_embeddings")?,
            },
            other => return Err(Error::Config(format!("unsupported rope type `{other}` (supported: default, linear, llama3)"))),
        })
    }
}

/// How a family stores q, k and v.
pub(crate) enum QkvNames {
    /// One matrix, q then k then v (GPT-2's `c_attn`).
    Fused(String),
    /// One matrix interleaved per head: q, k, v of head 0, then head 1, ... (GPT-NeoX).
    Interleaved(String),
    /// Three matrices (`q_proj`, `k_proj`, `v_proj`).
    Split([String; 3]),
}

/// HF names (without `.weight` / `.bias`) of one block's tensors.
pub(crate) struct BlockNames {
    pub(crate) ln1: String,
    pub(crate) qkv: QkvNames,
    /// Qwen3's per-head q and k norms.
    pub(crate) q_norm: Option<String>,
    pub(crate) k_norm: Option<String>,
    pub(crate) o: String,
    /// Gemma-2's norm on the attention output.
    pub(crate) ln1_post: Option<String>,
    pub(crate) ln2: String,
    pub(crate) mlp_in: String,
    /// Gated MLPs only.
    pub(crate) mlp_gate: Option<String>,
    pub(crate) mlp_out: String,
    /// Gemma-2's norm on the MLP output.
    pub(crate) ln2_post: Option<String>,
    /// A mixture-of-experts layer's tensors (then `mlp_in`, `mlp_gate` and `mlp_out` are unused).
    pub(crate) moe: Option<MoeNames>,
}

/// HF names of a mixture-of-experts MLP's tensors.
pub(crate) struct MoeNames {
    /// The router, [n_experts, d_model].
    pub(crate) router: String,
    /// Each expert's (gate, up, down) projections.
    pub(crate) experts: Vec<[String; 3]>,
    /// Qwen2-MoE's shared expert (gate, up, down) and its sigmoid gate [1, d_model].
    pub(crate) shared: Option<([String; 3], String)>,
}

/// Every HF tensor name of a model, and how the family stores them.
pub(crate) struct TensorNames {
    pub(crate) embed: String,
    pub(crate) pos_embed: Option<String>,
    pub(crate) blocks: Vec<BlockNames>,
    pub(crate) ln_final: String,
    pub(crate) unembed: String,
    /// GPT-2's Conv1D stores linear weights [in, out]; everyone else [out, in].
    pub(crate) conv1d: bool,
    /// Phi-3 stores gate and up projections as one matrix [gate; up], named by `mlp_in` (and
    /// `mlp_gate`).
    pub(crate) fused_gate_up: bool,
    /// Gemma stores a norm's gain as `gain - 1`.
    pub(crate) gain_offset: f64,
}

impl TensorNames {
    fn new(cfg: &ModelConfig) -> Self {
        match cfg.family {
            Family::Gpt2 => gpt2::names(cfg, "transformer."),
            Family::GptNeox => gpt_neox::names(cfg),
            Family::Llama => llama::names(cfg),
            Family::Gemma | Family::Gemma2 | Family::Gemma3 => gemma::names(cfg),
            Family::TransformerLens => unreachable!("TransformerLens models are read by transformer_lens::load_params"),
        }
    }
}

/// What a family adds to a stored norm gain (1 for Gemma's `gain - 1`).
pub(crate) fn gain_offset(cfg: &ModelConfig) -> f64 {
    match cfg.family {
        Family::TransformerLens => 0.0,
        _ => TensorNames::new(cfg).gain_offset,
    }
}

/// Reads HF-named tensors into our layout.
struct Loader<'a> {
    src: &'a dyn TensorSource,
    cfg: &'a ModelConfig,
    names: &'a TensorNames,
    kind: Kind,
    device: Device,
}

impl Loader<'_> {
    fn t(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.src.tensor(name, shape, self.kind, self.device)
    }

    /// A linear map [d_out, d_in] (transposed from Conv1D's [d_in, d_out]).
    fn linear(&self, prefix: &str, d_in: i64, d_out: i64, bias: bool) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let w = match self.names.conv1d {
            true => self.t(&name, &[d_in, d_out])?.f_tr()?.f_contiguous()?,
            false => self.t(&name, &[d_out, d_in])?,
        };
        let b = if bias { Some(self.t(&format!("{prefix}.bias"), &[d_out])?) } else { None };
        Ok(Linear { w, b })
    }

    /// Norm gains and biases are kept in f32 (f64 for an f64 model): norms compute in it.
    fn norm(&self, prefix: &str) -> Result<Norm> {
        self.norm_over(prefix, self.cfg.d_model)
    }

    /// `ln1` or `ln2`: the identity in a model without norms before its sublayers (OLMo 2).
    fn pre_norm(&self, prefix: &str) -> Result<Norm> {
        match self.cfg.pre_norms {
            true => self.norm(prefix),
            false => Ok(self.identity()),
        }
    }

    /// The final norm: the identity after post-norm blocks, which end normalised.
    fn final_norm(&self, prefix: &str) -> Result<Norm> {
        match self.cfg.post_ln_alpha {
            Some(_) => Ok(self.identity()),
            None => self.norm(prefix),
        }
    }

    /// A norm that is not there.
    fn identity(&self) -> Norm {
        Norm { kind: NormKind::Identity, w: None, b: None, eps: self.cfg.norm_eps }
    }

    /// A norm over `dm` units (d_model, or d_head for Qwen3's q/k norms).
    fn norm_over(&self, prefix: &str, dm: i64) -> Result<Norm> {
        let acc = if self.kind == Kind::Double { Kind::Double } else { Kind::Float };
        let read = |name: String| self.src.tensor(&name, &[dm], acc, self.device);
        let mut w = read(format!("{prefix}.weight"))?;
        if self.names.gain_offset != 0.0 {
            w = w.f_add_scalar(self.names.gain_offset)?;
        }
        let b = match self.cfg.norm {
            NormKind::LayerNorm => Some(read(format!("{prefix}.bias"))?),
            NormKind::RmsNorm | NormKind::Identity => None,
        };
        Ok(Norm { kind: self.cfg.norm, w: Some(w), b, eps: self.cfg.norm_eps })
    }

    fn block(&self, n: &BlockNames) -> Result<Block> {
        let c = self.cfg;
        let (dm, h, kv, dh) = (c.d_model, c.n_heads, c.n_kv_heads, c.d_head);
        let qkv = match &n.qkv {
            QkvNames::Fused(p) => self.linear(p, dm, (h + 2 * kv) * dh, c.qkv_bias)?,
            QkvNames::Interleaved(p) => {
                let lin = self.linear(p, dm, 3 * h * dh, c.qkv_bias)?;
                // [h, 3, dh, dm] -> [3, h, dh, dm]: q heads, k heads, v heads.
                let w = lin.w.f_view([h, 3, dh, dm])?.f_transpose(0, 1)?.f_reshape([3 * h * dh, dm])?;
                let b = lin.b.map(|b| b.f_view([h, 3, dh])?.f_transpose(0, 1)?.f_reshape([3 * h * dh])).transpose()?;
                Linear { w, b }
            }
            QkvNames::Split([q, k, v]) => {
                let q = self.linear(q, dm, h * dh, c.qkv_bias)?;
                let k = self.linear(k, dm, kv * dh, c.qkv_bias)?;
                let v = self.linear(v, dm, kv * dh, c.qkv_bias)?;
                let b = match (q.b, k.b, v.b) {
                    (Some(qb), Some(kb), Some(vb)) => Some(Tensor::f_cat(&[qb, kb, vb], 0)?),
                    _ => None,
                };
                Linear { w: Tensor::f_cat(&[q.w, k.w, v.w], 0)?, b }
            }
        };
        let mlp = if c.attn_only {
            None
        } else if let (Some(names), Some(moe)) = (&n.moe, &c.moe) {
            Some(self.moe(n, names, moe)?)
        } else {
            let (w_in, w_gate) = match self.names.fused_gate_up {
                // [gate; up] in one matrix.
                true => {
                    let both = self.linear(&n.mlp_in, dm, 2 * c.d_mlp, c.mlp_bias)?;
                    let half = |start: i64| -> Result<Linear> {
                        Ok(Linear {
                            w: both.w.f_narrow(0, start, c.d_mlp)?.f_contiguous()?,
                            b: both.b.as_ref().map(|b| b.f_narrow(0, start, c.d_mlp)).transpose()?,
                        })
                    };
                    (half(c.d_mlp)?, Some(half(0)?))
                }
                false => (self.linear(&n.mlp_in, dm, c.d_mlp, c.mlp_bias)?, n.mlp_gate.as_ref().map(|g| self.linear(g, dm, c.d_mlp, c.mlp_bias)).transpose()?),
            };
            Some(Mlp {
                ln2: self.pre_norm(&n.ln2)?,
                w_in,
                w_gate,
                ln: None,
                w_out: self.linear(&n.mlp_out, c.d_mlp, dm, c.mlp_bias)?,
                ln2_post: n.ln2_post.as_ref().map(|p| self.norm(p)).transpose()?,
                moe: None,
            })
        };
        Ok(Block {
            ln1: self.pre_norm(&n.ln1)?,
            attn: Attention {
                qkv,
                o: self.linear(&n.o, h * dh, dm, c.o_bias)?,
                q_norm: n.q_norm.as_ref().map(|p| self.norm_over(p, qk_norm_width(c, h))).transpose()?,
                k_norm: n.k_norm.as_ref().map(|p| self.norm_over(p, qk_norm_width(c, kv))).transpose()?,
            },
            ln1_post: n.ln1_post.as_ref().map(|p| self.norm(p)).transpose()?,
            mlp,
        })
    }

    /// A mixture-of-experts MLP: the experts' projections stacked into one gated MLP's, the router
    /// and any shared expert.
    fn moe(&self, n: &BlockNames, names: &MoeNames, moe: &MoeConfig) -> Result<Mlp> {
        let (dm, de) = (self.cfg.d_model, moe.d_expert);
        let mut parts: [Vec<Tensor>; 3] = Default::default();
        for [gate, up, down] in &names.experts {
            parts[0].push(self.linear(gate, dm, de, false)?.w);
            parts[1].push(self.linear(up, dm, de, false)?.w);
            parts[2].push(self.linear(down, de, dm, false)?.w);
        }
        let [gates, ups, downs] = parts;
        let shared = match (&names.shared, moe.d_shared_expert) {
            (Some(([gate, up, down], shared_gate)), Some(ds)) => Some(SharedExpert {
                w_gate: self.linear(gate, dm, ds, false)?,
                w_in: self.linear(up, dm, ds, false)?,
                w_out: self.linear(down, ds, dm, false)?,
                gate: self.linear(shared_gate, dm, 1, false)?,
            }),
            _ => None,
        };
        Ok(Mlp {
            ln2: self.pre_norm(&n.ln2)?,
            w_in: Linear { w: Tensor::f_cat(&ups, 0)?, b: None },
            w_gate: Some(Linear { w: Tensor::f_cat(&gates, 0)?, b: None }),
            ln: None,
            w_out: Linear { w: Tensor::f_cat(&downs, 1)?, b: None },
            ln2_post: n.ln2_post.as_ref().map(|p| self.norm(p)).transpose()?,
            moe: Some(Moe { router: self.linear(&names.router, dm, moe.n_experts, false)?, shared }),
        })
    }
}

/// Units a q (`heads` = n_heads) or k (n_kv_heads) norm's gain spans: d_head, or all heads.
fn qk_norm_width(c: &ModelConfig, heads: i64) -> i64 {
    match c.qk_norm {
        QkNorm::WholeProjection => heads * c.d_head,
        QkNorm::PerHead | QkNorm::None => c.d_head,
    }
}

/// Our parameters from HF-named tensors (a checkpoint, or a random init keyed by the same names).
pub(crate) fn load_params(cfg: &ModelConfig, src: &dyn TensorSource, kind: Kind, device: Device) -> Result<Params> {
    if cfg.family == Family::TransformerLens {
        return transformer_lens::load_params(cfg, src, kind, device);
    }
    let mut names = TensorNames::new(cfg);
    // GPT-2 checkpoints saved from `GPT2Model` (not `GPT2LMHeadModel`) lack the `transformer.` prefix.
    if cfg.family == Family::Gpt2 && !src.contains(&names.embed) && src.contains("wte.weight") {
        names = gpt2::names(cfg, "");
    }
    let l = Loader { src, cfg, names: &names, kind, device };
    let w_e = l.t(&names.embed, &[cfg.d_vocab, cfg.d_model])?;
    let w_pos = names.pos_embed.as_ref().map(|n| l.t(n, &[cfg.n_ctx, cfg.d_model])).transpose()?;
    let blocks = names.blocks.iter().map(|b| l.block(b)).collect::<Result<_>>()?;
    let w_u = match cfg.tie_embeddings {
        true => w_e.shallow_clone(),
        false => l.t(&names.unembed, &[cfg.d_vocab, cfg.d_model])?,
    };
    Ok(Params { w_e, w_pos, blocks, ln_final: l.final_norm(&names.ln_final)?, w_u, b_u: None })
}

/// Checks what a checkpoint holds beyond the tensors loading reads, where HF would compute
/// something else: a mixture of experts with more experts than the config names (HF would refuse
/// or ignore them), and the MLPs of an attention-only model. Such a model is saved with MLPs whose
/// output is exactly zero, so that HF (which has no attention-only block) computes the same
/// function; a checkpoint whose MLPs would write anything is refused: HF would run them and we
/// would not.
pub(crate) fn check_checkpoint(cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<()> {
    if cfg.family == Family::TransformerLens {
        return Ok(());
    }
    let names = TensorNames::new(cfg);
    if let Some(moe) = &cfg.moe {
        for n in names.blocks.iter().filter_map(|b| b.moe.as_ref()) {
            let Some([gate, ..]) = n.experts.first() else { continue };
            let extra = format!("{}.weight", gate.replace(".experts.0.", &format!(".experts.{}.", moe.n_experts)));
            if ckpt.shape(&extra).is_some() {
                return Err(Error::Config(format!("the checkpoint has `{extra}`, but the config says {} experts per layer", moe.n_experts)));
            }
        }
    }
    if !cfg.attn_only {
        return Ok(());
    }
    for (l, n) in names.blocks.iter().enumerate() {
        for name in [format!("{}.weight", n.mlp_out), format!("{}.bias", n.mlp_out)] {
            let Some(shape) = ckpt.shape(&name) else { continue };
            let t = ckpt.tensor(&name, &shape, Kind::Float, Device::Cpu)?;
            if t.f_abs()?.f_max()?.f_double_value(&[])? != 0.0 {
                return Err(Error::Config(format!(
                    "`interp_attn_only` is set, but layer {l}'s MLP output `{name}` is not zero: HF transformers would run that MLP"
                )));
            }
        }
    }
    Ok(())
}

/// Parameters under their HF names in HF layout (copies where the layout differs). An
/// attention-only block gets an MLP whose output is exactly zero (see [`check_checkpoint`]).
pub(crate) fn hf_tensors(cfg: &ModelConfig, p: &Params, device: Device) -> Result<Vec<(String, Tensor)>> {
    if cfg.family == Family::TransformerLens {
        return Err(Error::Config(
            "a TransformerLens-native model has no HF transformers layout to be saved in (HF would not load it as the same function)".into(),
        ));
    }
    let names = TensorNames::new(cfg);
    let (h, kv, dh, dm) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model);
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let f32 = (Kind::Float, device);
    // Norms folded away by `fold_ln` are written back as gain 1, bias 0.
    let norm_over = |out: &mut Vec<(String, Tensor)>, prefix: &str, n: Option<&Norm>, dm: i64| -> Result<()> {
        let gain = match n.and_then(|n| n.w.as_ref()) {
            Some(w) => w.shallow_clone(),
            None => Tensor::f_ones([dm], f32)?,
        };
        out.push((format!("{prefix}.weight"), gain.f_sub_scalar(names.gain_offset)?));
        if cfg.norm == NormKind::LayerNorm {
            let b = match n.and_then(|n| n.b.as_ref()) {
                Some(b) => b.shallow_clone(),
                None => Tensor::f_zeros([dm], f32)?,
            };
            out.push((format!("{prefix}.bias"), b));
        }
        Ok(())
    };
    let norm = |out: &mut Vec<(String, Tensor)>, prefix: &str, n: Option<&Norm>| norm_over(out, prefix, n, dm);
    let linear = |out: &mut Vec<(String, Tensor)>, prefix: &str, w: Tensor, b: Option<Tensor>| {
        // Conv1D stores [in, out]: a transposed view (made contiguous when written).
        out.push((format!("{prefix}.weight"), if names.conv1d { w.tr() } else { w }));
        out.extend(b.map(|b| (format!("{prefix}.bias"), b)));
    };
    let copy = |l: &Linear| (l.w.shallow_clone(), l.b.as_ref().map(Tensor::shallow_clone));
    out.push((names.embed.clone(), p.w_e.shallow_clone()));
    if let (Some(name), Some(w_pos)) = (&names.pos_embed, &p.w_pos) {
        out.push((name.clone(), w_pos.shallow_clone()));
    }
    for (n, blk) in names.blocks.iter().zip(&p.blocks) {
        if cfg.pre_norms {
            norm(&mut out, &n.ln1, Some(&blk.ln1))?;
        }
        let qkv = &blk.attn.qkv;
        match &n.qkv {
            QkvNames::Fused(prefix) => {
                let (w, b) = copy(qkv);
                linear(&mut out, prefix, w, b);
            }
            QkvNames::Interleaved(prefix) => {
                let w = qkv.w.f_view([3, h, dh, dm])?.f_transpose(0, 1)?.f_reshape([3 * h * dh, dm])?;
                let b = qkv.b.as_ref().map(|b| b.f_view([3, h, dh])?.f_transpose(0, 1)?.f_reshape([3 * h * dh])).transpose()?;
                linear(&mut out, prefix, w, b);
            }
            QkvNames::Split(prefixes) => {
                for (prefix, (start, heads)) in prefixes.iter().zip([(0, h), (h, kv), (h + kv, kv)]) {
                    let w = qkv.w.f_narrow(0, start * dh, heads * dh)?;
                    let b = qkv.b.as_ref().map(|b| b.f_narrow(0, start * dh, heads * dh)).transpose()?;
                    linear(&mut out, prefix, w, b);
                }
            }
        }
        for (prefix, qk, heads) in [(&n.q_norm, &blk.attn.q_norm, h), (&n.k_norm, &blk.attn.k_norm, kv)] {
            if let Some(prefix) = prefix {
                norm_over(&mut out, prefix, qk.as_ref(), qk_norm_width(cfg, heads))?;
            }
        }
        let (w, b) = copy(&blk.attn.o);
        linear(&mut out, &n.o, w, b);
        if let Some(prefix) = &n.ln1_post {
            norm(&mut out, prefix, blk.ln1_post.as_ref())?;
        }
        let mlp = blk.mlp.as_ref();
        if cfg.pre_norms {
            norm(&mut out, &n.ln2, mlp.map(|m| &m.ln2))?;
        }
        if let Some(prefix) = &n.ln2_post {
            norm(&mut out, prefix, mlp.and_then(|m| m.ln2_post.as_ref()))?;
        }
        if let (Some(names), Some(m), Some(moe)) = (&n.moe, mlp, &cfg.moe) {
            let Some(gate) = &m.w_gate else { return Err(Error::Config("mixture-of-experts MLPs are gated; this one has no gate".into())) };
            // The forward adds any expert or router bias; HF's MoE layouts have none to hold one.
            let router = m.moe.as_ref().map(|r| &r.router);
            if [Some(gate), Some(&m.w_in), Some(&m.w_out), router].into_iter().flatten().any(|l| l.b.is_some()) {
                return Err(Error::Config(format!("{}'s MoE layout has no place for expert or router biases (from fold_ln)", cfg.model_type)));
            }
            let de = moe.d_expert;
            for (e, [g, u, d]) in names.experts.iter().enumerate() {
                let start = e as i64 * de;
                linear(&mut out, g, gate.w.f_narrow(0, start, de)?, None);
                linear(&mut out, u, m.w_in.w.f_narrow(0, start, de)?, None);
                linear(&mut out, d, m.w_out.w.f_narrow(1, start, de)?, None);
            }
            if let Some(r) = &m.moe {
                linear(&mut out, &names.router, r.router.w.shallow_clone(), None);
                if let (Some(([g, u, d], shared_gate)), Some(s)) = (&names.shared, &r.shared) {
                    for (prefix, l) in [(g, &s.w_gate), (u, &s.w_in), (d, &s.w_out), (shared_gate, &s.gate)] {
                        linear(&mut out, prefix, l.w.shallow_clone(), None);
                    }
                }
            }
            continue;
        }
        let zero = |d_out: i64, d_in: i64| -> Result<(Tensor, Option<Tensor>)> {
            let b = if cfg.mlp_bias { Some(Tensor::f_zeros([d_out], f32)?) } else { None };
            Ok((Tensor::f_zeros([d_out, d_in], f32)?, b))
        };
        let (w, b) = match mlp {
            Some(m) => copy(&m.w_in),
            None => zero(cfg.d_mlp, dm)?,
        };
        if names.fused_gate_up {
            // [gate; up] under one name.
            let gate = match mlp.map(|m| m.w_gate.as_ref()) {
                Some(Some(g)) => copy(g),
                Some(None) => return Err(Error::Config(format!("{} MLPs are gated; this one has no gate", cfg.model_type))),
                None => zero(cfg.d_mlp, dm)?,
            };
            let both_b = match (gate.1, b) {
                (Some(gb), Some(ub)) => Some(Tensor::f_cat(&[gb, ub], 0)?),
                _ => None,
            };
            linear(&mut out, &n.mlp_in, Tensor::f_cat(&[gate.0, w], 0)?, both_b);
        } else {
            linear(&mut out, &n.mlp_in, w, b);
        }
        if let (Some(prefix), false) = (&n.mlp_gate, names.fused_gate_up) {
            let (w, b) = match mlp.map(|m| m.w_gate.as_ref()) {
                Some(Some(g)) => copy(g),
                Some(None) => return Err(Error::Config(format!("{} MLPs are gated; this one has no gate", cfg.model_type))),
                None => zero(cfg.d_mlp, dm)?,
            };
            linear(&mut out, prefix, w, b);
        }
        let (w, b) = match mlp {
            Some(m) => copy(&m.w_out),
            None => zero(dm, cfg.d_mlp)?,
        };
        linear(&mut out, &n.mlp_out, w, b);
    }
    if cfg.post_ln_alpha.is_none() {
        norm(&mut out, &names.ln_final, Some(&p.ln_final))?;
    }
    if !cfg.tie_embeddings {
        out.push((names.unembed.clone(), p.w_u.shallow_clone()));
    }
    if p.b_u.is_some() {
        return Err(Error::Config("an unembedding bias (from fold_ln) has no place in the HF layout".into()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Positional, Rotary};
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
        assert_eq!(
            base("llama", json!({"layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention"]})),
            [None, Some(5), None, None]
        );
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

    /// Sizes are checked as they are read: a negative or absurd layer count was a "capacity
    /// overflow" panic and a 16 TB allocation abort.
    #[test]
    fn sizes_are_bounded_before_anything_is_allocated() {
        let gpt2 = |n_layer: Value| {
            ModelConfig::from_hf_json(&json!({"model_type": "gpt2", "n_layer": n_layer, "n_embd": 8, "n_head": 2,
                "vocab_size": 10, "n_positions": 16}))
            .unwrap_err()
            .to_string()
        };
        assert!(gpt2(json!(-1)).contains("`n_layer` must be between 1 and 4096, found -1"), "{}", gpt2(json!(-1)));
        assert!(gpt2(json!(1_000_000_000_000i64)).contains("found 1000000000000"));
        assert!(gpt2(json!(1.5)).contains("`n_layer` must be an integer, found 1.5"));
        let e = ModelConfig::from_hf_json(&json!({"model_type": "gpt2", "n_layer": 2, "n_embd": -8, "n_head": 2,
            "vocab_size": 10, "n_positions": 16}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`n_embd` must be between 1 and 16777216, found -8"), "{e}");
        let neox = ModelConfig::from_hf_json(&json!({"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 1, "intermediate_size": 96, "vocab_size": 10, "max_position_embeddings": 64, "rotary_pct": -1.0}));
        assert!(neox.unwrap_err().to_string().contains("invalid rotary"));
    }
}
