//! The dictionaries themselves: architectures, configuration, encode and decode.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How latents are activated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Architecture {
    /// `f = ReLU(pre)`, trained with an L1 penalty weighted by decoder norms (SAELens "standard").
    ReluL1,
    /// Keep the `k` largest pre-activations of each token (ReLU'd).
    TopK {
        /// Active latents per token.
        k: i64,
    },
    /// Keep the `k * batch` largest pre-activations of a whole batch while training; at inference a
    /// learned per-latent threshold (a JumpReLU), which is how it is saved.
    BatchTopK {
        /// Active latents per token, on average over the batch.
        k: i64,
    },
    /// `f = pre * H(pre - threshold)`, the threshold per latent and stored directly.
    JumpRelu,
    /// A gate path (`W_enc`, `b_gate`) decides which latents fire; a magnitude path
    /// (`W_enc * exp(r_mag)`, `b_mag`) decides how much.
    Gated,
}

/// What a dictionary reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DictionaryKind {
    /// Reconstructs the activation it reads (same hook in and out).
    Sae,
    /// Reads one hook (an MLP's input) and predicts another (its output).
    Transcoder,
    /// A transcoder plus a dense linear skip path `x W_skip^T` (starts at zero).
    SkipTranscoder,
}

/// The architecture names of SAELens's `cfg.json` that we read and write.
pub const SAELENS_ARCHITECTURES: &[&str] = &[
    "standard",
    "topk",
    "jumprelu",
    "gated",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
    "batchtopk",
    "matryoshka_batchtopk",
];

/// A dictionary's shape and where its activations come from.
#[derive(Clone, Debug, PartialEq)]
pub struct DictionaryConfig {
    /// Its activation function.
    pub architecture: Architecture,
    /// SAE, transcoder or skip transcoder.
    pub kind: DictionaryKind,
    /// Width of the activations read.
    pub d_in: i64,
    /// Number of latents.
    pub d_sae: i64,
    /// Equal to `d_in` for an SAE.
    pub d_out: i64,
    /// The hook read (`blocks.0.hook_resid_post`; a transcoder's `blocks.L.ln2.hook_normalized`).
    pub hook_name: String,
    /// The hook predicted (an SAE's own `hook_name`; a transcoder's `blocks.L.hook_mlp_out`).
    pub hook_name_out: String,
    /// The model it was trained on (SAELens `model_name`).
    pub model_name: String,
    /// Context length of the activations it was trained on.
    pub context_size: i64,
    /// Whether those contexts started with BOS.
    pub prepend_bos: bool,
    /// Subtract `b_dec` from the input before encoding (SAEs usually do; transcoders cannot).
    pub apply_b_dec_to_input: bool,
    /// Matryoshka BatchTopK (Bussmann et al. 2025): nested prefixes of the latents, each trained
    /// to reconstruct on its own, given by their increasing widths ending at `d_sae`; empty for a
    /// plain dictionary. Only training differs: the saved inference form is BatchTopK's JumpReLU.
    pub matryoshka_widths: Vec<i64>,
}

impl DictionaryConfig {
    /// An SAE on `hook_name` with `d_sae` latents.
    pub fn sae(architecture: Architecture, hook_name: &str, d_in: i64, d_sae: i64) -> Self {
        DictionaryConfig {
            architecture,
            kind: DictionaryKind::Sae,
            d_in,
            d_sae,
            d_out: d_in,
            hook_name: hook_name.to_string(),
            hook_name_out: hook_name.to_string(),
            model_name: String::new(),
            context_size: 128,
            prepend_bos: false,
            apply_b_dec_to_input: true,
            matryoshka_widths: Vec::new(),
        }
    }

    /// A Matryoshka BatchTopK SAE: latent prefixes of `widths` (increasing, the last `d_sae`)
    /// each reconstruct `hook_name` on their own.
    pub fn matryoshka(k: i64, widths: &[i64], hook_name: &str, d_in: i64) -> Self {
        let d_sae = widths.last().copied().unwrap_or(0);
        DictionaryConfig { matryoshka_widths: widths.to_vec(), ..Self::sae(Architecture::BatchTopK { k }, hook_name, d_in, d_sae) }
    }

    /// A transcoder (or skip transcoder) from `hook_in` to `hook_out`.
    pub fn transcoder(architecture: Architecture, skip: bool, hook_in: &str, hook_out: &str, d_in: i64, d_out: i64, d_sae: i64) -> Self {
        DictionaryConfig {
            kind: if skip { DictionaryKind::SkipTranscoder } else { DictionaryKind::Transcoder },
            d_out,
            hook_name_out: hook_out.to_string(),
            apply_b_dec_to_input: false,
            ..Self::sae(architecture, hook_in, d_in, d_sae)
        }
    }

    /// A name people read: "TopK SAE (k 16)", "JumpReLU skip transcoder", "Matryoshka BatchTopK
    /// SAE (k 32, prefixes 128/512/2048)".
    pub fn describe(&self) -> String {
        let (arch, k) = match self.architecture {
            Architecture::ReluL1 => ("ReLU", None),
            Architecture::TopK { k } => ("TopK", Some(k)),
            Architecture::BatchTopK { k } => ("BatchTopK", Some(k)),
            Architecture::JumpRelu => ("JumpReLU", None),
            Architecture::Gated => ("Gated", None),
        };
        let kind = match self.kind {
            DictionaryKind::Sae => "SAE",
            DictionaryKind::Transcoder => "transcoder",
            DictionaryKind::SkipTranscoder => "skip transcoder",
        };
        let prefix = if self.matryoshka_widths.is_empty() { "" } else { "Matryoshka " };
        let mut details: Vec<String> = k.map(|k| format!("k {k}")).into_iter().collect();
        if !self.matryoshka_widths.is_empty() {
            details.push(format!("prefixes {}", self.matryoshka_widths.iter().map(i64::to_string).collect::<Vec<_>>().join("/")));
        }
        let details = if details.is_empty() { String::new() } else { format!(" ({})", details.join(", ")) };
        format!("{prefix}{arch} {kind}{details}")
    }

    /// The config, if its widths and settings are consistent.
    pub(crate) fn validated(self) -> Result<Self> {
        if self.d_in <= 0 || self.d_sae <= 0 || self.d_out <= 0 {
            let (name, value) =
                [("d_in", self.d_in), ("d_sae", self.d_sae), ("d_out", self.d_out)].into_iter().find(|(_, v)| *v <= 0).unwrap_or(("d_in", self.d_in));
            return Err(Error::setting(name, value, "a positive width"));
        }
        if self.kind == DictionaryKind::Sae && self.d_out != self.d_in {
            return Err(Error::setting("d_out", self.d_out, format!("d_in = {}: an SAE reads and writes the same hook", self.d_in)));
        }
        if self.apply_b_dec_to_input && self.d_out != self.d_in {
            return Err(Error::setting("apply_b_dec_to_input", true, format!("false unless d_out = d_in ({} != {})", self.d_out, self.d_in)));
        }
        if !self.matryoshka_widths.is_empty() {
            let w = &self.matryoshka_widths;
            if !matches!(self.architecture, Architecture::BatchTopK { .. }) {
                return Err(Error::setting("architecture", format!("{:?}", self.architecture), "BatchTopK for Matryoshka prefixes"));
            }
            if w[0] <= 0 || w.windows(2).any(|p| p[0] >= p[1]) || w.last() != Some(&self.d_sae) {
                return Err(Error::setting("matryoshka_widths", format!("{w:?}"), format!("increasing from above 0 to d_sae = {}", self.d_sae)));
            }
        }
        if let Architecture::TopK { k } | Architecture::BatchTopK { k } = self.architecture {
            if k <= 0 || k > self.d_sae {
                return Err(Error::setting("k", k, format!("in 1..={} (the number of latents)", self.d_sae)));
            }
        }
        Ok(self)
    }
}

/// A sparse dictionary: SAE, transcoder or skip transcoder, of any [`Architecture`].
///
/// Weights follow SAELens: `w_enc` [d_in, d_sae], `b_enc` [d_sae] (the gate bias `b_gate` of a
/// gated dictionary), `w_dec` [d_sae, d_out], `b_dec` [d_out]; `threshold` [d_sae] for JumpReLU
/// and BatchTopK; `r_mag`, `b_mag` [d_sae] for gated; `w_skip` [d_out, d_in] for skip transcoders.
pub struct SparseDictionary {
    pub(crate) cfg: DictionaryConfig,
    pub(crate) w_enc: Tensor,
    pub(crate) b_enc: Tensor,
    pub(crate) w_dec: Tensor,
    pub(crate) b_dec: Tensor,
    pub(crate) threshold: Option<Tensor>,
    pub(crate) r_mag: Option<Tensor>,
    pub(crate) b_mag: Option<Tensor>,
    pub(crate) w_skip: Option<Tensor>,
}

/// A dictionary's tensors in SAELens's layout (shapes as on [`SparseDictionary`]), to build one
/// with [`SparseDictionary::from_weights`], which checks them against its config.
#[derive(Debug)]
pub struct DictionaryWeights {
    /// [d_in, d_sae].
    pub w_enc: Tensor,
    /// [d_sae] (the gate bias of a gated dictionary).
    pub b_enc: Tensor,
    /// [d_sae, d_out].
    pub w_dec: Tensor,
    /// [d_out].
    pub b_dec: Tensor,
    /// [d_sae], JumpReLU and BatchTopK.
    pub threshold: Option<Tensor>,
    /// [d_sae], gated: the magnitude path's log scale.
    pub r_mag: Option<Tensor>,
    /// [d_sae], gated: the magnitude path's bias.
    pub b_mag: Option<Tensor>,
    /// [d_out, d_in], skip transcoders.
    pub w_skip: Option<Tensor>,
}

impl SparseDictionary {
    /// A fresh dictionary for training: decoder rows random with unit norm, `W_enc = W_dec^T`,
    /// zero biases, thresholds at 0.001 (the JumpReLU paper's start), a zero skip path.
    pub fn init(cfg: DictionaryConfig, seed: i64, device: Device) -> Result<Self> {
        let cfg = cfg.validated()?;
        let mut rng = interp_core::Rng::new(seed as u64);
        let opts = (Kind::Float, device);
        let w_dec = rng.normal_tensor(&[cfg.d_sae, cfg.d_out])?.f_to_device(device)?;
        let w_dec = w_dec.f_div(&w_dec.f_norm_scalaropt_dim(2.0, [1], true)?)?;
        // W_enc = W_dec^T only when the widths agree; a transcoder's encoder gets its own directions.
        let w_enc = if cfg.d_in == cfg.d_out {
            w_dec.f_tr()?.f_contiguous()?
        } else {
            let w = rng.normal_tensor(&[cfg.d_sae, cfg.d_in])?.f_to_device(device)?;
            w.f_div(&w.f_norm_scalaropt_dim(2.0, [1], true)?)?.f_tr()?.f_contiguous()?
        };
        let zeros = |n: i64| Tensor::f_zeros([n], opts);
        let threshold = match cfg.architecture {
            Architecture::JumpRelu => Some(zeros(cfg.d_sae)?.f_fill_(0.001)?),
            Architecture::BatchTopK { .. } => Some(zeros(cfg.d_sae)?),
            _ => None,
        };
        let gated = cfg.architecture == Architecture::Gated;
        Ok(SparseDictionary {
            w_enc,
            b_enc: zeros(cfg.d_sae)?,
            w_dec,
            b_dec: zeros(cfg.d_out)?,
            threshold,
            r_mag: if gated { Some(zeros(cfg.d_sae)?) } else { None },
            b_mag: if gated { Some(zeros(cfg.d_sae)?) } else { None },
            w_skip: if cfg.kind == DictionaryKind::SkipTranscoder { Some(Tensor::f_zeros([cfg.d_out, cfg.d_in], opts)?) } else { None },
            cfg,
        })
    }

    /// A dictionary of these weights: an error unless `cfg` is consistent and every tensor has
    /// the shape it implies (and exists exactly when the architecture and kind need it).
    pub fn from_weights(cfg: DictionaryConfig, w: DictionaryWeights) -> Result<Self> {
        let cfg = cfg.validated()?;
        let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.d_out);
        let needs_threshold = matches!(cfg.architecture, Architecture::JumpRelu | Architecture::BatchTopK { .. });
        let gated = cfg.architecture == Architecture::Gated;
        let skip = cfg.kind == DictionaryKind::SkipTranscoder;
        let check = |name: &str, t: Option<&Tensor>, needed: bool, shape: &[i64]| -> Result<()> {
            match (t, needed) {
                (Some(t), true) if t.size() == shape => Ok(()),
                (Some(t), true) => Err(Error::Input(format!("`{name}` has shape {:?}, expected {shape:?}", t.size()))),
                (None, true) => Err(Error::Input(format!("this dictionary needs `{name}` {shape:?}"))),
                (Some(_), false) => Err(Error::Input(format!("this dictionary has no `{name}`"))),
                (None, false) => Ok(()),
            }
        };
        check("w_enc", Some(&w.w_enc), true, &[d_in, d_sae])?;
        check("b_enc", Some(&w.b_enc), true, &[d_sae])?;
        check("w_dec", Some(&w.w_dec), true, &[d_sae, d_out])?;
        check("b_dec", Some(&w.b_dec), true, &[d_out])?;
        check("threshold", w.threshold.as_ref(), needs_threshold, &[d_sae])?;
        check("r_mag", w.r_mag.as_ref(), gated, &[d_sae])?;
        check("b_mag", w.b_mag.as_ref(), gated, &[d_sae])?;
        check("w_skip", w.w_skip.as_ref(), skip, &[d_out, d_in])?;
        let DictionaryWeights { w_enc, b_enc, w_dec, b_dec, threshold, r_mag, b_mag, w_skip } = w;
        Ok(SparseDictionary { cfg, w_enc, b_enc, w_dec, b_dec, threshold, r_mag, b_mag, w_skip })
    }

    /// A copy sharing the weights' storage: in-place changes reach both, replaced tensors (as
    /// [`SparseDictionary::fold_scales`] makes) only one.
    pub(crate) fn shallow_clone(&self) -> Self {
        let opt = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
        SparseDictionary {
            cfg: self.cfg.clone(),
            w_enc: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            w_dec: self.w_dec.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
            threshold: opt(&self.threshold),
            r_mag: opt(&self.r_mag),
            b_mag: opt(&self.b_mag),
            w_skip: opt(&self.w_skip),
        }
    }

    /// Its config and weights, to change and rebuild with [`SparseDictionary::from_weights`].
    pub fn into_parts(self) -> (DictionaryConfig, DictionaryWeights) {
        let SparseDictionary { cfg, w_enc, b_enc, w_dec, b_dec, threshold, r_mag, b_mag, w_skip } = self;
        (cfg, DictionaryWeights { w_enc, b_enc, w_dec, b_dec, threshold, r_mag, b_mag, w_skip })
    }

    /// The same dictionary with its weights changed by `f`, checked as by
    /// [`SparseDictionary::from_weights`].
    pub fn map_weights(self, f: impl FnOnce(&mut DictionaryWeights)) -> Result<Self> {
        let (cfg, mut w) = self.into_parts();
        f(&mut w);
        SparseDictionary::from_weights(cfg, w)
    }

    /// Shape, architecture and hooks.
    pub fn cfg(&self) -> &DictionaryConfig {
        &self.cfg
    }

    /// W_enc [d_in, d_sae].
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// b_enc [d_sae] (the gate bias of a gated dictionary).
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// W_dec [d_sae, d_out].
    pub fn w_dec(&self) -> &Tensor {
        &self.w_dec
    }

    /// b_dec [d_out].
    pub fn b_dec(&self) -> &Tensor {
        &self.b_dec
    }

    /// The JumpReLU threshold [d_sae] (also BatchTopK's inference threshold).
    pub fn threshold(&self) -> Option<&Tensor> {
        self.threshold.as_ref()
    }

    /// W_skip [d_out, d_in] of a skip transcoder.
    pub fn w_skip(&self) -> Option<&Tensor> {
        self.w_skip.as_ref()
    }

    /// Every trainable tensor, in a fixed order.
    pub fn parameters(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec];
        out.extend(self.threshold.iter().filter(|_| self.cfg.architecture == Architecture::JumpRelu));
        out.extend(self.r_mag.iter().chain(&self.b_mag).chain(&self.w_skip));
        out
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.w_enc.device()
    }

    /// An error unless `x` ends in `d_in` (or `d_out` for a target), naming `what`.
    pub fn check_width(&self, x: &Tensor, expected: i64, what: &str) -> Result<()> {
        let found = x.size().last().copied().unwrap_or(0);
        if found != expected {
            return Err(Error::Width { what: what.to_string(), expected, found });
        }
        Ok(())
    }

    /// `(x - b_dec) w + bias` for SAEs that apply `b_dec` to their input, `x w + bias` otherwise;
    /// `x` [.., d_in], `w` [d_in, d_sae], `bias` [d_sae]. Computed as `x w + (bias - b_dec w)`:
    /// the same value, but training then gets `b_dec`'s gradient from a vector product instead of
    /// a second [n, d_sae] x [d_sae, d_in] GEMM.
    pub(crate) fn project(&self, x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.check_width(x, self.cfg.d_in, &format!("activations of `{}`", self.cfg.hook_name))?;
        let bias = if self.cfg.apply_b_dec_to_input { bias.f_sub(&self.b_dec.f_matmul(w)?)? } else { bias.shallow_clone() };
        let x = x.f_to_kind(Kind::Float)?;
        let mut shape = x.size();
        let rows = x.f_reshape([-1, self.cfg.d_in])?;
        // One fused GEMM with the bias as its addend: no second pass over [n, d_sae].
        let out = bias.f_addmm(&rows, w)?;
        if let Some(last) = shape.last_mut() {
            *last = w.size()[1];
        }
        Ok(out.f_reshape(shape)?)
    }

    /// Pre-activations [.., d_sae] of `x` [.., d_in] (the gate path's for gated dictionaries).
    pub fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        self.project(x, &self.w_enc, &self.b_enc)
    }

    /// Latent activations [.., d_sae] of `x` [.., d_in], as used at inference.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(x)?;
        Ok(match (&self.cfg.architecture, &self.threshold) {
            (Architecture::ReluL1, _) => pre.f_relu()?,
            (Architecture::TopK { k }, _) => {
                let (values, indices) = pre.f_topk(*k, -1, true, false)?;
                pre.f_zeros_like()?.f_scatter(-1, &indices, &values.f_relu()?)?
            }
            (Architecture::JumpRelu | Architecture::BatchTopK { .. }, Some(threshold)) => pre.f_relu()?.f_mul(&pre.f_gt_tensor(threshold)?)?,
            (Architecture::Gated, _) => {
                let (r_mag, b_mag) = self.gated_params()?;
                let mag = self.project(x, &self.w_enc.f_mul(&r_mag.f_exp()?)?, b_mag)?;
                mag.f_relu()?.f_mul(&pre.f_gt(0.0)?)?
            }
            (_, None) => return Err(Error::Input("a JumpReLU dictionary needs a threshold".into())),
        })
    }

    pub(crate) fn gated_params(&self) -> Result<(&Tensor, &Tensor)> {
        match (&self.r_mag, &self.b_mag) {
            (Some(r), Some(b)) => Ok((r, b)),
            _ => Err(Error::Input("a gated dictionary needs r_mag and b_mag".into())),
        }
    }

    /// Reconstruction [.., d_out] from latents `f` [.., d_sae] (and, for a skip transcoder, the
    /// input `x` [.., d_in] of the skip path).
    pub fn decode(&self, f: &Tensor, x: Option<&Tensor>) -> Result<Tensor> {
        let out = f.f_matmul(&self.w_dec)?.f_add(&self.b_dec)?;
        self.add_skip(out, x)
    }

    pub(crate) fn add_skip(&self, out: Tensor, x: Option<&Tensor>) -> Result<Tensor> {
        match (&self.w_skip, x) {
            (Some(w_skip), Some(x)) => Ok(out.f_add(&x.f_to_kind(Kind::Float)?.f_matmul(&w_skip.f_tr()?)?)?),
            (Some(_), None) => Err(Error::Input("a skip transcoder's decode needs its input".into())),
            (None, _) => Ok(out),
        }
    }

    /// Reconstruction [n, d_out] from `k` active latents per row: `values` [n, k] at `indices`
    /// [n, k]. Gathers `k` decoder rows instead of a dense [n, d_sae] x [d_sae, d_out] product;
    /// differentiable in `values` and `w_dec`.
    pub fn decode_sparse(&self, values: &Tensor, indices: &Tensor) -> Result<Tensor> {
        Ok(gather_rows(&self.w_dec, values, indices)?.f_add(&self.b_dec)?)
    }

    /// `decode(encode(x))` [.., d_out] for `x` [.., d_in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(x)?, Some(x))
    }

    /// Folds an input scale `s_in` and output scale `s_out` into the weights: a dictionary
    /// trained on `s_in * x` predicting `s_out * y` becomes one that reads `x` and predicts `y`
    /// with the same latent activations.
    pub fn fold_scales(&mut self, s_in: f64, s_out: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.w_enc = self.w_enc.f_mul_scalar(s_in)?;
        self.w_dec = self.w_dec.f_div_scalar(s_out)?;
        // An SAE subtracts b_dec from its input; that stays consistent because s_in == s_out.
        self.b_dec = self.b_dec.f_div_scalar(s_out)?;
        if let Some(w) = &self.w_skip {
            self.w_skip = Some(w.f_mul_scalar(s_in / s_out)?);
        }
        Ok(())
    }
}

/// `sum_j values[i, j] * w[indices[i, j]]` [n, m] for `w` [rows, m], `values` and `indices` [n, k]:
/// `k` rows gathered per output row instead of a dense product; differentiable in `values` and `w`.
pub(crate) fn gather_rows(w: &Tensor, values: &Tensor, indices: &Tensor) -> Result<Tensor> {
    let (n, k) = (values.size()[0], values.size()[1]);
    let offsets = Tensor::f_arange_start_step(0, n * k, k, (Kind::Int64, values.device()))?;
    let (sum, _, _, _) = Tensor::f_embedding_bag(w, &indices.f_flatten(0, -1)?, &offsets, false, 0, false, Some(values.f_flatten(0, -1)?), false)?;
    Ok(sum)
}
