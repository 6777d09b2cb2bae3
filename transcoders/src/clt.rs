//! Cross-layer transcoders (CLTs) and transcoder sets.
//!
//! A CLT has one encoder per layer `l`, reading that layer's MLP input, and for every later layer
//! `l' >= l` a decoder from layer-`l` latents to layer `l'`'s MLP output; layer `l'`'s
//! reconstruction sums the decoders of all layers up to it. Weights follow circuit-tracer's
//! `CrossLayerTranscoder` (transposed encoder): `w_enc` [n_layers, d_model, d_sae], `b_enc`
//! [n_layers, d_sae], `threshold` [n_layers, d_sae] (JumpReLU), `w_dec[l]` [d_sae, n_layers - l,
//! d_model] (entry `j` writes to layer `l + j`), `b_dec` [n_layers, d_model].
//!
//! A [`TranscoderSet`] is what replaces every MLP of a model: one transcoder per layer, or a CLT.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::dictionary::{gather_rows, Architecture, SparseDictionary};
use crate::error::{Error, Result};
use crate::formats::{declared_activation, parse_flat_yaml, read_tensors, write_safetensors, Weights};

/// A CLT's shape, activation and hooks.
#[derive(Clone, Debug, PartialEq)]
pub struct CltConfig {
    /// ReLU (L1-trained), TopK (per layer: the `k` largest of each layer's latents) or JumpReLU.
    pub architecture: Architecture,
    /// Layers: one encoder each.
    pub n_layers: usize,
    /// Width of the residual stream (every encoder's input and decoder's output).
    pub d_model: i64,
    /// Latents per layer.
    pub d_sae: i64,
    /// The hook each encoder reads, without its `blocks.{l}.` prefix (`ln2.hook_normalized`).
    pub hook_in: String,
    /// The hook each layer's reconstruction predicts, without the prefix (`hook_mlp_out`).
    pub hook_out: String,
    /// The model it was trained on.
    pub model_name: String,
}

impl CltConfig {
    /// A CLT reading `blocks.{l}.ln2.hook_normalized` and predicting `blocks.{l}.hook_mlp_out`.
    pub fn new(architecture: Architecture, n_layers: usize, d_model: i64, d_sae: i64) -> Self {
        CltConfig { architecture, n_layers, d_model, d_sae, hook_in: "ln2.hook_normalized".into(), hook_out: "hook_mlp_out".into(), model_name: String::new() }
    }

    /// The hook layer `l`'s encoder reads.
    pub fn hook_in(&self, l: usize) -> String {
        format!("blocks.{l}.{}", self.hook_in)
    }

    /// The hook layer `l`'s reconstruction predicts.
    pub fn hook_out(&self, l: usize) -> String {
        format!("blocks.{l}.{}", self.hook_out)
    }

    /// "TopK cross-layer transcoder (k 16, 12 x 512 latents)".
    pub fn describe(&self) -> String {
        let arch = match self.architecture {
            Architecture::TopK { k } => format!("TopK cross-layer transcoder (k {k} per layer, "),
            Architecture::JumpRelu => "JumpReLU cross-layer transcoder (".into(),
            _ => "ReLU cross-layer transcoder (".into(),
        };
        format!("{arch}{} x {} latents)", self.n_layers, self.d_sae)
    }

    fn validated(self) -> Result<Self> {
        if self.n_layers == 0 || self.d_model <= 0 || self.d_sae <= 0 {
            return Err(Error::Input(format!(
                "a CLT needs layers and positive widths: {} layers, d_model {}, d_sae {}",
                self.n_layers, self.d_model, self.d_sae
            )));
        }
        match self.architecture {
            Architecture::ReluL1 | Architecture::JumpRelu => Ok(self),
            Architecture::TopK { k } if k >= 1 && k <= self.d_sae => Ok(self),
            Architecture::TopK { k } => Err(Error::setting("k", k, format!("in 1..={} (the number of latents)", self.d_sae))),
            other => Err(Error::Input(format!("cross-layer transcoders are ReLU, TopK or JumpReLU, not {other:?}"))),
        }
    }
}

/// A cross-layer transcoder (see the module docs for the weights' layout).
pub struct CrossLayerTranscoder {
    pub(crate) cfg: CltConfig,
    pub(crate) w_enc: Tensor,
    pub(crate) b_enc: Tensor,
    pub(crate) threshold: Option<Tensor>,
    pub(crate) w_dec: Vec<Tensor>,
    pub(crate) b_dec: Tensor,
}

impl CrossLayerTranscoder {
    /// A fresh CLT for training: each latent's decoders (over all the layers it writes to) random
    /// with unit joint norm, random unit encoder directions, zero biases, JumpReLU thresholds at
    /// 0.001.
    pub fn init(cfg: CltConfig, seed: i64, device: Device) -> Result<Self> {
        let cfg = cfg.validated()?;
        let (n, d, m) = (cfg.n_layers as i64, cfg.d_model, cfg.d_sae);
        let mut rng = interp_core::Rng::new(seed as u64);
        let w_enc = rng.normal_tensor(&[n, d, m])?.f_to_device(device)?;
        let w_enc = w_enc.f_div(&w_enc.f_norm_scalaropt_dim(2.0, [1], true)?)?;
        let w_dec = (0..n)
            .map(|l| -> Result<Tensor> {
                let w = rng.normal_tensor(&[m, n - l, d])?.f_to_device(device)?;
                Ok(w.f_div(&joint_norms(&w)?)?)
            })
            .collect::<Result<_>>()?;
        let threshold = match cfg.architecture {
            Architecture::JumpRelu => Some(Tensor::f_full([n, m], 0.001, (Kind::Float, device))?),
            _ => None,
        };
        Ok(CrossLayerTranscoder {
            w_enc,
            b_enc: Tensor::f_zeros([n, m], (Kind::Float, device))?,
            threshold,
            w_dec,
            b_dec: Tensor::f_zeros([n, d], (Kind::Float, device))?,
            cfg,
        })
    }

    /// Shape, activation and hooks.
    pub fn cfg(&self) -> &CltConfig {
        &self.cfg
    }

    /// W_enc [n_layers, d_model, d_sae].
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// b_enc [n_layers, d_sae].
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// Layer `l`'s decoders [d_sae, n_layers - l, d_model].
    pub fn w_dec(&self, l: usize) -> &Tensor {
        &self.w_dec[l]
    }

    /// b_dec [n_layers, d_model].
    pub fn b_dec(&self) -> &Tensor {
        &self.b_dec
    }

    /// JumpReLU thresholds [n_layers, d_sae].
    pub fn threshold(&self) -> Option<&Tensor> {
        self.threshold.as_ref()
    }

    /// Every trainable tensor: w_enc, b_enc, b_dec, the decoders by layer, the threshold.
    pub fn parameters(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.w_enc, &self.b_enc, &self.b_dec];
        out.extend(&self.w_dec);
        out.extend(&self.threshold);
        out
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.w_enc.device()
    }

    /// Layer `l`'s pre-activations [.., d_sae] of `x` [.., d_model].
    pub fn pre_activations(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        if l >= self.cfg.n_layers {
            return Err(Error::Input(format!("layer {l} of a {}-layer CLT", self.cfg.n_layers)));
        }
        let width = x.size().last().copied().unwrap_or(0);
        if width != self.cfg.d_model {
            return Err(Error::Width { what: format!("activations of `{}`", self.cfg.hook_in(l)), expected: self.cfg.d_model, found: width });
        }
        Ok(x.f_to_kind(Kind::Float)?.f_matmul(&self.w_enc.f_get(l as i64)?)?.f_add(&self.b_enc.f_get(l as i64)?)?)
    }

    /// Layer `l`'s latents [.., d_sae] of `x` [.., d_model].
    pub fn encode(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(l, x)?;
        Ok(match (self.cfg.architecture, &self.threshold) {
            (Architecture::TopK { k }, _) => {
                let (values, indices) = pre.f_topk(k, -1, true, false)?;
                pre.f_zeros_like()?.f_scatter(-1, &indices, &values.f_relu()?)?
            }
            (Architecture::JumpRelu, Some(t)) => pre.f_relu()?.f_mul(&pre.f_gt_tensor(&t.f_get(l as i64)?)?)?,
            _ => pre.f_relu()?,
        })
    }

    /// Every layer's reconstruction [.., d_model] from every layer's latents `f` [.., d_sae].
    pub fn decode(&self, f: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = self.cfg.n_layers;
        if f.len() != n {
            return Err(Error::Input(format!("{} layers of latents for a {n}-layer CLT", f.len())));
        }
        let mut out: Vec<Tensor> =
            (0..n).map(|l| Ok(self.b_dec.f_get(l as i64)?.f_expand(shape_with(&f[0], self.cfg.d_model).as_slice(), false)?)).collect::<Result<_>>()?;
        for (l, f_l) in f.iter().enumerate() {
            let w = &self.w_dec[l];
            let decoded = f_l.f_matmul(&w.f_flatten(1, 2)?)?; // [.., (n - l) * d]
            for j in 0..(n - l) {
                out[l + j] = out[l + j].f_add(&decoded.f_narrow(-1, j as i64 * self.cfg.d_model, self.cfg.d_model)?)?;
            }
        }
        Ok(out)
    }

    /// Every layer's reconstruction from every layer's input `x` [.., d_model].
    pub fn forward(&self, x: &[Tensor]) -> Result<Vec<Tensor>> {
        let f = x.iter().enumerate().map(|(l, x)| self.encode(l, x)).collect::<Result<Vec<_>>>()?;
        self.decode(&f)
    }

    /// The contributions [n, n_layers - l, d_model] of `k` active layer-`l` latents per row
    /// (`values`, `indices` [n, k]) to the layers they write to, gathering their decoder rows.
    pub fn decode_sparse(&self, l: usize, values: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let w = &self.w_dec[l];
        let s = w.size();
        Ok(gather_rows(&w.f_flatten(1, 2)?, values, indices)?.f_reshape([-1, s[1], s[2]])?)
    }

    /// Folds per-layer input scales `s_in` and output scales `s_out`: a CLT trained on
    /// `s_in[l] * x_l` predicting `s_out[l] * y_l` becomes one that reads `x` and predicts `y`.
    pub fn fold_scales(&mut self, s_in: &[f64], s_out: &[f64]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let dev = self.device();
        let col = |s: &[f64], shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(&s.iter().map(|&v| v as f32).collect::<Vec<_>>())?.f_reshape(shape)?.f_to_device(dev)?)
        };
        let n = self.cfg.n_layers as i64;
        self.w_enc = self.w_enc.f_mul(&col(s_in, &[n, 1, 1])?)?;
        self.b_dec = self.b_dec.f_div(&col(s_out, &[n, 1])?)?;
        for (l, w) in self.w_dec.iter_mut().enumerate() {
            *w = w.f_div(&col(&s_out[l..], &[1, n - l as i64, 1])?)?;
        }
        Ok(())
    }

    /// Writes circuit-tracer's CLT layout, which circuit-tracer 0.5.0's `load_clt` reads as the
    /// same function: `W_enc_{l}.safetensors` (`W_enc_{l}` [d_sae, d_model], `b_enc_{l}`,
    /// `b_dec_{l}`, `threshold_{l}` for JumpReLU), `W_dec_{l}.safetensors` (`W_dec_{l}` [d_sae,
    /// n_layers - l, d_model]) and `config.yaml` (`model_kind: cross_layer_transcoder`, the hooks,
    /// `scan`, `activation_function`). circuit-tracer has no TopK CLTs (it would read them as
    /// ReLU): a TopK CLT is written with `model_kind: topk_cross_layer_transcoder`, which
    /// circuit-tracer refuses and [`CrossLayerTranscoder::load`] reads.
    pub fn save(&self, dir: impl AsRef<Path>, scan: &str) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        for l in 0..self.cfg.n_layers {
            let li = l as i64;
            let (w_enc, b_enc, b_dec) = (self.w_enc.f_get(li)?.f_tr()?, self.b_enc.f_get(li)?, self.b_dec.f_get(li)?);
            let names = [format!("W_enc_{l}"), format!("b_enc_{l}"), format!("b_dec_{l}"), format!("threshold_{l}")];
            let threshold = self.threshold.as_ref().map(|t| t.f_get(li)).transpose()?;
            let mut named = vec![(names[0].as_str(), &w_enc), (names[1].as_str(), &b_enc), (names[2].as_str(), &b_dec)];
            if let Some(t) = &threshold {
                named.push((names[3].as_str(), t));
            }
            write_safetensors(&named, &dir.join(format!("W_enc_{l}.safetensors")))?;
            let dec = format!("W_dec_{l}");
            write_safetensors(&[(dec.as_str(), &self.w_dec[l])], &dir.join(format!("W_dec_{l}.safetensors")))?;
        }
        let (kind, activation) = match self.cfg.architecture {
            Architecture::TopK { k } => ("topk_cross_layer_transcoder", format!("topk\nk: {k}")),
            Architecture::JumpRelu => ("cross_layer_transcoder", "jumprelu".into()),
            _ => ("cross_layer_transcoder", "relu".into()),
        };
        let yaml = format!(
            "# A cross-layer transcoder (interp); circuit-tracer 0.5.0 loads ReLU and JumpReLU ones with load_clt.\nmodel_kind: {kind}\nmodel_name: \"{}\"\nscan: \"{scan}\"\nfeature_input_hook: \"{}\"\nfeature_output_hook: \"{}\"\nactivation_function: {activation}\n",
            self.cfg.model_name, self.cfg.hook_in, self.cfg.hook_out
        );
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml).map_err(Error::io(&path))
    }

    /// Reads circuit-tracer's CLT layout (see [`CrossLayerTranscoder::save`]). The activation is
    /// JumpReLU where the files hold thresholds; otherwise config.yaml must say `relu` or `topk`
    /// with `k` (circuit-tracer assumes ReLU, which a TopK CLT would silently become). Layer
    /// files missing, extra or of inconsistent shapes are errors naming the file.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("config.yaml");
        let text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
        let (keys, _) = parse_flat_yaml(&text);
        let key = |name: &str| keys.get(name).cloned().ok_or_else(|| Error::format(&cfg_path, format!("no `{name}`")));
        let kind = key("model_kind")?;
        if kind != "cross_layer_transcoder" && kind != "topk_cross_layer_transcoder" {
            return Err(Error::format(&cfg_path, format!("model_kind `{kind}` is not a cross-layer transcoder")));
        }
        let n_layers = (0..).take_while(|l| dir.join(format!("W_enc_{l}.safetensors")).exists()).count();
        let files = std::fs::read_dir(dir).map_err(Error::io(dir))?.filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string));
        let stray: Vec<String> = files
            .filter(|f| (f.starts_with("W_enc_") || f.starts_with("W_dec_")) && f.ends_with(".safetensors"))
            .filter(|f| f[6..f.len() - 12].parse::<usize>().map_or(true, |l| l >= n_layers))
            .collect();
        if n_layers == 0 || !stray.is_empty() {
            return Err(Error::format(
                dir,
                format!("a CLT needs W_enc_0.safetensors, W_enc_1.safetensors, ... numbered from 0 without gaps ({n_layers} found; out of order: {stray:?})"),
            ));
        }
        let (mut w_enc, mut b_enc, mut b_dec, mut thresholds, mut w_dec) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut dims = None;
        for l in 0..n_layers {
            let path = dir.join(format!("W_enc_{l}.safetensors"));
            let mut w = Weights { map: read_tensors(&path, device)?, path: path.clone() };
            let (m, d) = match dims {
                Some(dims) => dims,
                None => {
                    let (m, d) = (w.vector_len(&format!("b_enc_{l}"))?, w.vector_len(&format!("b_dec_{l}"))?);
                    dims = Some((m, d));
                    (m, d)
                }
            };
            w_enc.push(w.take(&format!("W_enc_{l}"), &[m, d])?.f_tr()?);
            b_enc.push(w.take(&format!("b_enc_{l}"), &[m])?);
            b_dec.push(w.take(&format!("b_dec_{l}"), &[d])?);
            thresholds.push(w.take_opt(&format!("threshold_{l}"), &[m])?);
            let path = dir.join(format!("W_dec_{l}.safetensors"));
            let mut w = Weights { map: read_tensors(&path, device)?, path };
            w_dec.push(w.take(&format!("W_dec_{l}"), &[m, (n_layers - l) as i64, d])?);
        }
        let (d_sae, d_model) = dims.unwrap_or_default();
        let has_threshold = thresholds.iter().filter(|t| t.is_some()).count();
        if has_threshold != 0 && has_threshold != n_layers {
            return Err(Error::format(dir, format!("{has_threshold} of {n_layers} layers have JumpReLU thresholds: all or none must")));
        }
        let architecture = match (has_threshold > 0, declared_activation(&keys, &cfg_path)?) {
            (true, None | Some(Architecture::JumpRelu)) => Architecture::JumpRelu,
            (false, Some(a @ (Architecture::ReluL1 | Architecture::TopK { .. }))) => a,
            (false, None) => {
                return Err(Error::format(
                    &cfg_path,
                    "no thresholds and no `activation_function`: circuit-tracer would read ReLU, but a TopK CLT saved without `k` looks the same. Add `activation_function: relu` (or `topk` and `k: K`)",
                ))
            }
            (t, a) => return Err(Error::format(&cfg_path, format!("the activation is ambiguous: thresholds {}, activation_function {a:?}", if t { "present" } else { "absent" }))),
        };
        let cfg = CltConfig {
            architecture,
            n_layers,
            d_model,
            d_sae,
            hook_in: key("feature_input_hook")?,
            hook_out: key("feature_output_hook")?,
            model_name: keys.get("model_name").cloned().unwrap_or_default(),
        }
        .validated()?;
        let threshold = if has_threshold > 0 { Some(Tensor::f_stack(&thresholds.into_iter().flatten().collect::<Vec<_>>(), 0)?) } else { None };
        Ok(CrossLayerTranscoder {
            cfg,
            w_enc: Tensor::f_stack(&w_enc, 0)?.f_contiguous()?,
            b_enc: Tensor::f_stack(&b_enc, 0)?,
            threshold,
            w_dec,
            b_dec: Tensor::f_stack(&b_dec, 0)?,
        })
    }
}

/// The norm of each latent's decoders over all the layers it writes to: [d_sae, 1, 1] of `w`
/// [d_sae, layers, d_model].
pub(crate) fn joint_norms(w: &Tensor) -> Result<Tensor> {
    Ok(w.f_square()?.f_sum_dim_intlist([1i64, 2].as_slice(), true, Kind::Float)?.f_sqrt()?.f_clamp_min(1e-8)?)
}

/// The shape of `t` with its last axis `width`.
fn shape_with(t: &Tensor, width: i64) -> Vec<i64> {
    let mut s = t.size();
    if let Some(last) = s.last_mut() {
        *last = width;
    }
    s
}

/// What replaces every MLP of a model: one transcoder per layer (in order), or a CLT.
pub enum TranscoderSet {
    /// One transcoder per layer.
    PerLayer(Vec<SparseDictionary>),
    /// A cross-layer transcoder.
    CrossLayer(CrossLayerTranscoder),
}

impl From<Vec<SparseDictionary>> for TranscoderSet {
    fn from(set: Vec<SparseDictionary>) -> Self {
        TranscoderSet::PerLayer(set)
    }
}

impl From<CrossLayerTranscoder> for TranscoderSet {
    fn from(clt: CrossLayerTranscoder) -> Self {
        TranscoderSet::CrossLayer(clt)
    }
}

impl TranscoderSet {
    /// Layers it replaces.
    pub fn n_layers(&self) -> usize {
        match self {
            TranscoderSet::PerLayer(set) => set.len(),
            TranscoderSet::CrossLayer(clt) => clt.cfg.n_layers,
        }
    }

    /// The hooks layer `l` reads and writes.
    pub fn hooks(&self, l: usize) -> (String, String) {
        match self {
            TranscoderSet::PerLayer(set) => (set[l].cfg.hook_name.clone(), set[l].cfg.hook_name_out.clone()),
            TranscoderSet::CrossLayer(clt) => (clt.cfg.hook_in(l), clt.cfg.hook_out(l)),
        }
    }

    /// Latents of layer `l`.
    pub fn d_sae(&self, l: usize) -> i64 {
        match self {
            TranscoderSet::PerLayer(set) => set[l].cfg.d_sae,
            TranscoderSet::CrossLayer(clt) => clt.cfg.d_sae,
        }
    }

    /// "12 per-layer transcoders: TopK transcoder (k 32)" or the CLT's description.
    pub fn describe(&self) -> String {
        match self {
            TranscoderSet::PerLayer(set) => format!("{} per-layer transcoders: {}", set.len(), set.first().map_or(String::new(), |t| t.cfg.describe())),
            TranscoderSet::CrossLayer(clt) => clt.cfg.describe(),
        }
    }

    /// Bytes of its weights.
    pub fn n_bytes(&self) -> u64 {
        let params: Vec<&Tensor> = match self {
            TranscoderSet::PerLayer(set) => set.iter().flat_map(|t| t.parameters()).collect(),
            TranscoderSet::CrossLayer(clt) => clt.parameters(),
        };
        params.iter().map(|p| p.numel() as u64 * 4).sum()
    }

    /// Layer `l`'s latents [.., d_sae] of its input `x` [.., d_in].
    pub fn encode(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        match self {
            TranscoderSet::PerLayer(set) => set[l].encode(x),
            TranscoderSet::CrossLayer(clt) => clt.encode(l, x),
        }
    }

    /// Layer `l`'s encoder direction [d_in] for `feature` and the constant of its pre-activation
    /// (`pre = <x, w> + constant`).
    pub fn encoder(&self, l: usize, feature: i64) -> Result<(Tensor, f64)> {
        match self {
            TranscoderSet::PerLayer(set) => {
                let tc = &set[l];
                let w = tc.w_enc.f_select(1, feature)?;
                let mut k = tc.b_enc.f_double_value(&[feature])?;
                if tc.cfg.apply_b_dec_to_input {
                    k -= tc.b_dec.f_dot(&w)?.f_double_value(&[])?;
                }
                Ok((w, k))
            }
            TranscoderSet::CrossLayer(clt) => Ok((clt.w_enc.f_get(l as i64)?.f_select(1, feature)?, clt.b_enc.f_double_value(&[l as i64, feature])?)),
        }
    }

    /// The decoder rows of layer-`l` `features` [n]: [n, layers, d_out], entry `j` writing to layer
    /// `l + j` (a single layer for a per-layer transcoder).
    pub fn decoders(&self, l: usize, features: &Tensor) -> Result<Tensor> {
        Ok(match self {
            TranscoderSet::PerLayer(set) => set[l].w_dec.f_index_select(0, features)?.f_unsqueeze(1)?,
            TranscoderSet::CrossLayer(clt) => clt.w_dec[l].f_index_select(0, features)?,
        })
    }

    /// What layer `l`'s output gets besides its latents: `b_dec` and a skip path of its input
    /// `x` [.., d_in], shaped [.., d_out].
    pub fn decoder_bias(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        match self {
            TranscoderSet::PerLayer(set) => set[l].add_skip(set[l].b_dec.f_expand(shape_with(x, set[l].cfg.d_out).as_slice(), false)?, Some(x)),
            TranscoderSet::CrossLayer(clt) => Ok(clt.b_dec.f_get(l as i64)?.f_expand(shape_with(x, clt.cfg.d_model).as_slice(), false)?),
        }
    }

    /// Every layer's reconstruction from every layer's input `x` and latents `f`.
    pub fn decode(&self, x: &[Tensor], f: &[Tensor]) -> Result<Vec<Tensor>> {
        match self {
            TranscoderSet::PerLayer(set) => set.iter().zip(x).zip(f).map(|((t, x), f)| t.decode(f, Some(x))).collect(),
            TranscoderSet::CrossLayer(clt) => clt.decode(f),
        }
    }
}

/// The transcoders in `dir`: a CLT (circuit-tracer's CLT layout), a circuit-tracer transcoder set
/// (one per layer, in layer order), or a folder of SAELens transcoder folders (any names, ordered
/// by the layer of the hook each reads). Errors name a folder that is not a transcoder and a
/// layer missing or repeated.
pub fn load_transcoder_set(dir: impl AsRef<Path>, device: Device) -> Result<TranscoderSet> {
    let dir = dir.as_ref();
    if dir.join("W_enc_0.safetensors").exists() {
        return Ok(CrossLayerTranscoder::load(dir, device)?.into());
    }
    Ok(crate::formats::load_per_layer_set(dir, device)?.into())
}
