//! `HookedTransformer`: the model, its loading, its weights in TransformerLens's layouts, and its
//! hook points. Running it is in `runner` (the public ways) and `forward` (the pass itself).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::config::{Activation, Family, ModelConfig, NormKind, Positional, QkNorm, RopeScaling, Rotary};
use crate::error::{Error, Result};
use crate::hook_point::{edit_distance, glob_match, BlockSite, HookPoint};
use crate::params::{Block, Linear, Mlp, Norm, Params};
use crate::tokenizer::Tokenizer;

/// Which norm [`HookedTransformer::norm_weights`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormSite {
    /// `blocks.L.ln1`, before attention.
    Ln1(usize),
    /// `blocks.L.ln2`, before the MLP.
    Ln2(usize),
    /// `ln_final`, before the unembedding.
    LnFinal,
}

/// A transformer language model with TransformerLens hook points.
///
/// ```no_run
/// use interp_core::{HookedTransformer, CacheSpec};
/// let model = HookedTransformer::from_pretrained_dir("tests/fixtures/gpt2", tch::Device::Cpu, tch::Kind::Float)?;
/// let tokens = model.to_tokens("Then, Mary and John went to the store.", true)?;
/// let (logits, cache) = model.run_with_cache(&tokens, CacheSpec::names(["blocks.*.attn.hook_pattern"]))?;
/// let pattern = cache.get("blocks.1.attn.hook_pattern")?; // [batch, head, query, key]
/// # Ok::<(), interp_core::Error>(())
/// ```
pub struct HookedTransformer {
    /// The validated configuration (its `hf_json` is what `save_pretrained` writes).
    pub cfg: ModelConfig,
    pub(crate) params: Params,
    pub(crate) tokenizer: Option<Tokenizer>,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
    /// Rotary inverse frequencies [rotary_dim / 2], f32.
    pub(crate) inv_freq: Option<Tensor>,
    /// Those of local (sliding-window) layers, where they differ (Gemma 3).
    pub(crate) inv_freq_local: Option<Tensor>,
}

impl HookedTransformer {
    /// Loads a model from `path`: an HF checkpoint directory (`config.json`, safetensors or PyTorch
    /// weights and, if present, `tokenizer.json`), or a GGUF file (llama.cpp's format; also a
    /// folder holding one `.gguf` and no `config.json`), whose tensors are dequantised and whose
    /// tokenizer is built from its metadata as HF transformers builds them. Weights are converted
    /// to `kind` (`Float`, `Half`, `BFloat16` or `Double`) on `device`.
    pub fn from_pretrained_dir(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model directory or GGUF file not found"),
            });
        }
        if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
            return Err(Error::setting("dtype", format!("{kind:?}"), "a float kind (f32, f16, bf16 or f64)"));
        }
        if let Some(file) = crate::gguf::find(path)? {
            return Self::from_gguf(&file, device, kind);
        }
        if !path.is_dir() {
            return Err(Error::Checkpoint { path: path.to_path_buf(), message: "neither a model directory nor a `.gguf` file".into() });
        }
        let cfg = ModelConfig::from_dir(path)?;
        let ckpt = Checkpoint::open(path)?;
        crate::models::check_checkpoint(&cfg, &ckpt)?;
        let params = crate::models::load_params(&cfg, &ckpt, kind, device)?;
        let tok_path = path.join("tokenizer.json");
        let tokenizer = if tok_path.exists() { Some(Tokenizer::from_file(&tok_path, cfg.bos_token_id)?) } else { None };
        Self::from_params(cfg, params, tokenizer, kind, device)
    }

    /// Loads a GGUF file (see [`from_pretrained_dir`](Self::from_pretrained_dir)).
    fn from_gguf(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let mut file = crate::gguf::GgufFile::open(path)?;
        let cfg = ModelConfig::from_hf_json(&crate::gguf::hf::config(&file)?)?;
        let tokenizer = match file.get("tokenizer.ggml.model") {
            Some(_) => {
                let config = crate::gguf::tokenizer::tokenizer_config(&file);
                let json = crate::gguf::tokenizer::tokenizer_json(&file, &config)?;
                Some(Tokenizer::from_json(&json, config, cfg.bos_token_id)?)
            }
            None => None,
        };
        // The vocabulary's metadata (Gemma: 262k tokens and scores) is not needed for the weights.
        file.metadata.retain(|key, _| !key.starts_with("tokenizer.ggml."));
        let ckpt = crate::gguf::hf::GgufCheckpoint::new(file, cfg.n_heads, cfg.n_kv_heads)?;
        let params = crate::models::load_params(&cfg, &ckpt, kind, device)?;
        Self::from_params(cfg, params, tokenizer, kind, device)
    }

    pub(crate) fn from_params(cfg: ModelConfig, params: Params, tokenizer: Option<Tokenizer>, kind: Kind, device: Device) -> Result<Self> {
        let inv_freq = match &cfg.positional {
            Positional::Rotary(r) => Some(rotary_inv_freq(r)?.f_to_device(device)?),
            Positional::Learned | Positional::Shortformer => None,
        };
        let inv_freq_local = cfg.local_rotary.as_ref().map(|r| rotary_inv_freq(r)?.f_to_device(device).map_err(Error::from)).transpose()?;
        Ok(HookedTransformer { cfg, params, tokenizer, kind, device, inv_freq, inv_freq_local })
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weights' dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The tokenizer loaded with the model, if it had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The tokenizer, or [`Error::NoTokenizer`] saying what it was `needed_for` ("to encode the
    /// prompt").
    pub fn require_tokenizer(&self, needed_for: &str) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::NoTokenizer { needed_for: needed_for.to_string() })
    }

    /// Every parameter tensor, a tied unembedding once. They share storage with the model, so
    /// in-place updates (an optimiser step) change it; they are leaves, so they can require grad.
    pub fn parameters(&self) -> Vec<Tensor> {
        let p = &self.params;
        let mut out: Vec<Tensor> = Vec::new();
        let lin = |l: &Linear, out: &mut Vec<Tensor>| {
            out.push(l.w.shallow_clone());
            out.extend(l.b.as_ref().map(Tensor::shallow_clone));
        };
        let norm = |n: &Norm, out: &mut Vec<Tensor>| out.extend([&n.w, &n.b].into_iter().flatten().map(Tensor::shallow_clone));
        out.push(p.w_e.shallow_clone());
        out.extend(p.w_pos.as_ref().map(Tensor::shallow_clone));
        for b in &p.blocks {
            norm(&b.ln1, &mut out);
            lin(&b.attn.qkv, &mut out);
            lin(&b.attn.o, &mut out);
            if let Some(n) = &b.ln1_post {
                norm(n, &mut out);
            }
            if let Some(m) = &b.mlp {
                norm(&m.ln2, &mut out);
                lin(&m.w_in, &mut out);
                if let Some(g) = &m.w_gate {
                    lin(g, &mut out);
                }
                lin(&m.w_out, &mut out);
                if let Some(n) = &m.ln2_post {
                    norm(n, &mut out);
                }
                if let Some(moe) = &m.moe {
                    lin(&moe.router, &mut out);
                    if let Some(s) = &moe.shared {
                        for l in [&s.w_in, &s.w_gate, &s.w_out, &s.gate] {
                            lin(l, &mut out);
                        }
                    }
                }
            }
        }
        norm(&p.ln_final, &mut out);
        if p.w_u.data_ptr() != p.w_e.data_ptr() {
            out.push(p.w_u.shallow_clone());
        }
        out.extend(p.b_u.as_ref().map(Tensor::shallow_clone));
        out
    }

    /// Number of parameters held (a tied unembedding counts once).
    pub fn n_params(&self) -> i64 {
        self.parameters().iter().map(|t| t.numel() as i64).sum()
    }

    // ---- TransformerLens-layout weight views (no copies) ----

    /// W_E [d_vocab, d_model]
    pub fn w_e(&self) -> &Tensor {
        &self.params.w_e
    }
    /// W_pos [n_ctx, d_model], for learned positional embeddings.
    pub fn w_pos(&self) -> Option<&Tensor> {
        self.params.w_pos.as_ref()
    }
    /// W_U [d_model, d_vocab]
    pub fn w_u(&self) -> Tensor {
        self.params.w_u.tr()
    }
    fn block(&self, layer: usize) -> Result<&Block> {
        self.params.blocks.get(layer).ok_or(Error::LayerOutOfRange { layer, n_layers: self.cfg.n_layers })
    }
    fn qkv_part(&self, layer: usize, part: i64) -> Result<Tensor> {
        let (h, kv, dh, dm) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.d_head, self.cfg.d_model);
        let (start, heads) = [(0, h), (h, kv), (h + kv, kv)][part as usize];
        let w = &self.block(layer)?.attn.qkv.w;
        Ok(w.f_narrow(0, start * dh, heads * dh)?.f_view([heads, dh, dm])?.f_transpose(1, 2)?)
    }
    /// W_Q [n_heads, d_model, d_head]
    pub fn w_q(&self, layer: usize) -> Result<Tensor> {
        self.qkv_part(layer, 0)
    }
    /// W_K [n_kv_heads, d_model, d_head]
    pub fn w_k(&self, layer: usize) -> Result<Tensor> {
        self.qkv_part(layer, 1)
    }
    /// W_V [n_kv_heads, d_model, d_head]
    pub fn w_v(&self, layer: usize) -> Result<Tensor> {
        self.qkv_part(layer, 2)
    }
    /// W_O [n_heads, d_head, d_model]
    pub fn w_o(&self, layer: usize) -> Result<Tensor> {
        let (h, dh, dm) = (self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model);
        Ok(self.block(layer)?.attn.o.w.f_view([dm, h, dh])?.f_permute([1, 2, 0])?)
    }
    fn mlp_weights(&self, layer: usize) -> Result<&Mlp> {
        self.block(layer)?.mlp.as_ref().ok_or(Error::AttnOnly)
    }
    /// W_in [d_model, d_mlp]
    pub fn w_in(&self, layer: usize) -> Result<Tensor> {
        Ok(self.mlp_weights(layer)?.w_in.w.tr())
    }
    /// W_gate [d_model, d_mlp], gated MLPs only.
    pub fn w_gate(&self, layer: usize) -> Result<Option<Tensor>> {
        Ok(self.mlp_weights(layer)?.w_gate.as_ref().map(|g| g.w.tr()))
    }
    /// W_out [d_mlp, d_model]
    pub fn w_out(&self, layer: usize) -> Result<Tensor> {
        Ok(self.mlp_weights(layer)?.w_out.w.tr())
    }
    /// b_in [d_mlp], when the MLP has biases.
    pub fn b_in(&self, layer: usize) -> Result<Option<Tensor>> {
        Ok(self.mlp_weights(layer)?.w_in.b.as_ref().map(Tensor::shallow_clone))
    }
    /// b_gate [d_mlp], gated MLPs with biases only.
    pub fn b_gate(&self, layer: usize) -> Result<Option<Tensor>> {
        Ok(self.mlp_weights(layer)?.w_gate.as_ref().and_then(|g| g.b.as_ref()).map(Tensor::shallow_clone))
    }
    /// b_out [d_model], when the MLP has biases.
    pub fn b_out(&self, layer: usize) -> Result<Option<Tensor>> {
        Ok(self.mlp_weights(layer)?.w_out.b.as_ref().map(Tensor::shallow_clone))
    }
    /// b_U [d_vocab], when the unembedding has a bias.
    pub fn b_u(&self) -> Option<&Tensor> {
        self.params.b_u.as_ref()
    }
    /// Gain and bias [d_model] of a norm (`blocks.L.ln1`, `blocks.L.ln2`, `ln_final`), each
    /// `None` when absent or folded away; Gemma's stored `w` is returned as the gain `1 + w`.
    pub fn norm_weights(&self, norm: NormSite) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = match norm {
            NormSite::Ln1(l) => &self.block(l)?.ln1,
            NormSite::Ln2(l) => &self.mlp_weights(l)?.ln2,
            NormSite::LnFinal => &self.params.ln_final,
        };
        Ok((n.w.as_ref().map(Tensor::shallow_clone), n.b.as_ref().map(Tensor::shallow_clone)))
    }

    // ---- hook points ----

    /// Whether this model has `point`, and why not if it does not.
    fn availability(&self, point: HookPoint) -> std::result::Result<(), String> {
        let c = &self.cfg;
        match point {
            HookPoint::PosEmbed if matches!(c.positional, Positional::Rotary(_)) => Err("the model uses rotary positions".into()),
            HookPoint::Block(l, _) if l >= c.n_layers => Err(format!("the model has {} layers", c.n_layers)),
            HookPoint::Block(_, BlockSite::RotQ | BlockSite::RotK) if !matches!(c.positional, Positional::Rotary(_)) => {
                Err("the model has no rotary embeddings".into())
            }
            HookPoint::LnFinalScale | HookPoint::LnFinalNormalized if c.post_ln_alpha.is_some() => {
                Err("post-norm blocks end normalised: the model has no final norm".into())
            }
            HookPoint::LnFinalScale
            | HookPoint::LnFinalNormalized
            | HookPoint::Block(_, BlockSite::Ln1Scale | BlockSite::Ln1Normalized | BlockSite::Ln2Scale | BlockSite::Ln2Normalized)
                if c.norm == NormKind::Identity =>
            {
                Err("the model has no normalization".into())
            }
            HookPoint::Block(_, BlockSite::Ln1Scale | BlockSite::Ln1Normalized | BlockSite::Ln2Scale | BlockSite::Ln2Normalized) if !c.pre_norms => {
                Err("the model has no norms before attention and MLP (only after them)".into())
            }
            HookPoint::Block(_, BlockSite::QNormScale | BlockSite::QNormNormalized | BlockSite::KNormScale | BlockSite::KNormNormalized)
                if c.qk_norm == QkNorm::None =>
            {
                Err("the model has no q/k norms".into())
            }
            HookPoint::Block(_, BlockSite::MlpMid | BlockSite::MlpLnScale | BlockSite::MlpLnNormalized) if c.act != Activation::SoluLn => {
                Err("only solu_ln MLPs have a LayerNorm on their hidden units".into())
            }
            HookPoint::Block(_, BlockSite::ResidMid) if c.parallel_attn_mlp => Err("attention and MLP run in parallel, so there is no resid_mid".into()),
            HookPoint::Block(_, s) if c.attn_only && s >= BlockSite::MlpIn && s <= BlockSite::MlpOut => Err("the model is attention-only".into()),
            HookPoint::Block(_, BlockSite::MlpPreLinear) if !c.gated_mlp => Err("the MLP is not gated".into()),
            HookPoint::Block(l, BlockSite::MlpPre | BlockSite::MlpPreLinear | BlockSite::MlpPost) if c.is_moe_layer(l) => Err(format!(
                "layer {l} is a mixture of experts: its hidden units belong to the experts (hook mlp.hook_expert_out, or hook_mlp_in and hook_mlp_out)"
            )),
            HookPoint::Block(l, BlockSite::RouterLogits | BlockSite::ExpertIndices | BlockSite::ExpertWeights | BlockSite::ExpertOut) if !c.is_moe_layer(l) => {
                Err(format!("layer {l}'s MLP is not a mixture of experts"))
            }
            HookPoint::Block(l, BlockSite::SharedExpertOut) if !c.is_moe_layer(l) || c.moe.as_ref().is_some_and(|m| m.d_shared_expert.is_none()) => {
                Err(format!("layer {l}'s MLP has no shared expert"))
            }
            _ => Ok(()),
        }
    }

    /// Every hook point this model has, in forward order; opt-in points only with `opt_in`.
    pub fn hook_points(&self, opt_in: bool) -> Vec<HookPoint> {
        let top = [HookPoint::Embed, HookPoint::PosEmbed];
        let end = [HookPoint::LnFinalScale, HookPoint::LnFinalNormalized, HookPoint::UnembedIn, HookPoint::UnembedOut];
        let blocks = (0..self.cfg.n_layers).flat_map(|l| BlockSite::ALL.into_iter().map(move |s| HookPoint::Block(l, s)));
        top.into_iter().chain(blocks).chain(end).filter(|p| self.availability(*p).is_ok() && (opt_in || !p.is_opt_in())).collect()
    }

    /// Parses a hook name and checks that this model has it; suggests the closest name if not.
    pub fn hook_point(&self, name: &str) -> Result<HookPoint> {
        match name.parse::<HookPoint>() {
            Ok(p) => self.availability(p).map(|()| p).map_err(|why| Error::HookUnavailable { name: name.into(), why }),
            Err(_) => {
                let suggestion = self.hook_points(true).into_iter().map(|p| p.to_string()).min_by_key(|s| edit_distance(s, name));
                Err(Error::UnknownHook { name: name.into(), suggestion })
            }
        }
    }

    /// The points a name or glob pattern selects; an error if it selects none.
    pub(crate) fn resolve_pattern(&self, pattern: &str) -> Result<Vec<HookPoint>> {
        if !pattern.contains('*') {
            return Ok(vec![self.hook_point(pattern)?]);
        }
        let found: Vec<HookPoint> =
            self.hook_points(true).into_iter().filter(|p| (!p.is_opt_in() || pattern.contains(p.leaf())) && glob_match(pattern, &p.to_string())).collect();
        if found.is_empty() {
            return Err(Error::UnknownHook { name: pattern.into(), suggestion: None });
        }
        Ok(found)
    }

    /// The MLP nonlinearity, applied in the model dtype.
    pub(crate) fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.act {
            Activation::Gelu => x.f_gelu("none")?,
            Activation::GeluTanh => x.f_gelu("tanh")?,
            Activation::Relu => x.f_relu()?,
            Activation::Silu => x.f_silu()?,
            Activation::Sigmoid => x.f_sigmoid()?,
            Activation::Identity => x.shallow_clone(),
            Activation::Solu | Activation::SoluLn => x.f_mul(&x.f_softmax(-1, x.kind())?)?,
        })
    }

    /// The dtype that norms and softmax accumulate in: f32, or f64 for an f64 model.
    pub(crate) fn accumulate_kind(&self) -> Kind {
        if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        }
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.cfg.family
    }
}

/// Rotary inverse frequencies [dim / 2] (f32), with the configured scaling.
fn rotary_inv_freq(r: &Rotary) -> Result<Tensor> {
    let freqs: Vec<f32> = (0..r.dim / 2)
        .map(|i| {
            let f = 1.0 / r.base.powf((2 * i) as f64 / r.dim as f64);
            let f = match r.scaling {
                RopeScaling::None => f,
                RopeScaling::Linear { factor } => f / factor,
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let (low_wavelen, high_wavelen) = (original_max_position / low_freq_factor, original_max_position / high_freq_factor);
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                }
            };
            f as f32
        })
        .collect();
    Ok(Tensor::f_from_slice(&freqs)?)
}
