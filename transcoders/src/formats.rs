//! Dictionary files other tools write and read: SAELens v6 folders (read and write), sparsify
//! folders (read) and circuit-tracer transcoder sets (read and write).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use interp_core::HookedTransformer;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::dictionary::{Architecture, DictionaryConfig, DictionaryKind, SparseDictionary, SAELENS_ARCHITECTURES};
use crate::error::{Error, Result};

/// Top-level `cfg.json` fields [`SparseDictionary::load_saelens`] reads (v6, and v5's names).
pub const SAELENS_READ_FIELDS: &[&str] = &[
    "architecture",
    "d_in",
    "d_sae",
    "d_out",
    "k",
    "rescale_acts_by_decoder_norm",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
    "dtype",
    "model_name",
    "hook_name",
    "hook_point",
    "hook_name_out",
    "context_size",
    "prepend_bos",
    "hook_head_index",
    "hook_point_head_index",
    "activation_fn_str",
    "activation_fn",
    "activation_fn_kwargs",
    "finetuning_scaling_factor",
];

/// Fields of SAELens training checkpoints that set how a dictionary was trained (initialisation,
/// loss coefficients and schedules, the threshold's learning rate, Matryoshka prefixes of the
/// loss), not what it computes: accepted and not used.
pub const SAELENS_TRAINING_FIELDS: &[&str] = &[
    "decoder_init_norm",
    "use_sparse_activations",
    "aux_loss_coefficient",
    "topk_threshold_lr",
    "matryoshka_widths",
    "use_matryoshka_aux_loss",
    "l1_coefficient",
    "lp_norm",
    "l1_warm_up_steps",
    "l0_coefficient",
    "l0_warm_up_steps",
    "jumprelu_init_threshold",
    "jumprelu_bandwidth",
    "jumprelu_sparsity_loss_mode",
    "jumprelu_tanh_scale",
    "jumprelu_ste_to_input",
    "pre_act_loss_coefficient",
    "target_l0",
];

/// Fields that say where a dictionary came from or where SAELens places it, not what it
/// computes: accepted and not used (v6 keeps provenance in `metadata`, v5 at the top level).
pub const SAELENS_PROVENANCE_FIELDS: &[&str] = &[
    "device",
    "hook_layer",
    "dataset_path",
    "dataset_trust_remote_code",
    "sae_lens_training_version",
    "sae_lens_version",
    "neuronpedia_id",
    "model_from_pretrained_kwargs",
    "seqpos_slice",
    "exclude_special_tokens",
];

/// File names of a SAELens folder.
pub const SAELENS_CFG: &str = "cfg.json";
pub const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";
pub const SAELENS_SPARSITY: &str = "sparsity.safetensors";

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("malformed JSON: {e}")))
}

/// Every tensor of a safetensors file, as f32 on `device`.
pub(crate) fn read_tensors(path: &Path, device: Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::Io { path: path.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) });
    }
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| Error::format(path, format!("unreadable safetensors: {}", e.to_string().lines().next().unwrap_or_default())))?;
    tensors.into_iter().map(|(name, t)| Ok((name, t.f_to_kind(Kind::Float)?.f_to_device(device)?))).collect()
}

/// Writes `named` tensors (any device, any layout) to the safetensors file `path`, as CPU
/// contiguous copies.
pub(crate) fn write_safetensors(named: &[(&str, &Tensor)], path: &Path) -> Result<()> {
    let cpu: Vec<(&str, Tensor)> = named.iter().map(|(n, t)| Ok((*n, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?))).collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, path).map_err(|e| Error::format(path, format!("cannot write: {}", e.to_string().lines().next().unwrap_or_default())))
}

/// The tensors of one file, taken out by name with their expected shapes.
pub(crate) struct Weights {
    pub(crate) path: PathBuf,
    pub(crate) map: HashMap<String, Tensor>,
}

impl Weights {
    pub(crate) fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| Error::format(&self.path, format!("no tensor `{name}` (expected shape {shape:?})")))?;
        if t.size() != shape {
            return Err(Error::format(&self.path, format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t)
    }

    /// The length of the vector `name`, which sizes the rest of the file.
    pub(crate) fn vector_len(&self, name: &str) -> Result<i64> {
        match self.map.get(name).map(Tensor::size).as_deref() {
            Some([n]) => Ok(*n),
            Some(shape) => Err(Error::format(&self.path, format!("tensor `{name}` must be a vector, found shape {shape:?}"))),
            None => Err(Error::format(&self.path, format!("no tensor `{name}`"))),
        }
    }

    pub(crate) fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.map.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn architecture_name(cfg: &DictionaryConfig) -> String {
    let base = match cfg.architecture {
        Architecture::ReluL1 => "standard",
        Architecture::TopK { .. } => "topk",
        Architecture::JumpRelu | Architecture::BatchTopK { .. } => "jumprelu",
        Architecture::Gated => "gated",
    };
    match (cfg.kind, base) {
        (DictionaryKind::Sae, _) => base.to_string(),
        (DictionaryKind::Transcoder, "standard") => "transcoder".into(),
        (DictionaryKind::SkipTranscoder, "standard") => "skip_transcoder".into(),
        (DictionaryKind::Transcoder, _) => format!("{base}_transcoder"),
        (DictionaryKind::SkipTranscoder, _) => format!("{base}_skip_transcoder"),
    }
}

fn parse_architecture(name: &str, k: impl Fn() -> Result<i64>) -> Result<(Architecture, DictionaryKind)> {
    let (base, kind) = match name {
        "transcoder" => ("standard", DictionaryKind::Transcoder),
        "skip_transcoder" => ("standard", DictionaryKind::SkipTranscoder),
        _ => match (name.strip_suffix("_skip_transcoder"), name.strip_suffix("_transcoder")) {
            (Some(b), _) => (b, DictionaryKind::SkipTranscoder),
            (None, Some(b)) => (b, DictionaryKind::Transcoder),
            (None, None) => (name, DictionaryKind::Sae),
        },
    };
    let arch = match base {
        "standard" => Architecture::ReluL1,
        "topk" => Architecture::TopK { k: k()? },
        "jumprelu" => Architecture::JumpRelu,
        "gated" => Architecture::Gated,
        _ => return Err(Error::UnknownArchitecture { found: name.to_string(), supported: SAELENS_ARCHITECTURES }),
    };
    Ok((arch, kind))
}

impl SparseDictionary {
    /// Writes a SAELens v6 folder: `cfg.json`, `sae_weights.safetensors` and, given the log10
    /// feature densities [d_sae], `sparsity.safetensors`. BatchTopK dictionaries are written as
    /// JumpReLU (their inference form), as SAELens does. SAELens has no TopK or gated transcoder;
    /// those are written as `topk_transcoder` / `gated_transcoder`, which only this crate reads.
    pub fn save_saelens(&self, dir: impl AsRef<Path>, log10_density: Option<&Tensor>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let c = &self.cfg;
        let mut cfg = json!({
            "architecture": architecture_name(c),
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": c.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "model_name": c.model_name,
                "hook_name": c.hook_name,
                "hook_name_out": c.hook_name_out,
                "context_size": c.context_size,
                "prepend_bos": c.prepend_bos,
                "sae_lens_training_version": null,
            },
        });
        if c.kind != DictionaryKind::Sae {
            cfg["d_out"] = json!(c.d_out);
        }
        if !c.matryoshka_widths.is_empty() {
            // SAELens saves Matryoshka SAEs in their inference form too, a JumpReLU.
            cfg["metadata"]["training_architecture"] = json!("matryoshka_batchtopk");
            cfg["metadata"]["training_architecture_details"] = json!({ "matryoshka_widths": c.matryoshka_widths });
        }
        if let Architecture::TopK { k } = c.architecture {
            cfg["k"] = json!(k);
            cfg["rescale_acts_by_decoder_norm"] = json!(false);
        }
        let bias_name = if c.architecture == Architecture::Gated { "b_gate" } else { "b_enc" };
        let mut named = vec![("W_enc", &self.w_enc), (bias_name, &self.b_enc), ("W_dec", &self.w_dec), ("b_dec", &self.b_dec)];
        for (name, t) in [("threshold", &self.threshold), ("r_mag", &self.r_mag), ("b_mag", &self.b_mag), ("W_skip", &self.w_skip)] {
            if let Some(t) = t {
                named.push((name, t));
            }
        }
        write_safetensors(&named, &dir.join(SAELENS_WEIGHTS))?;
        if let Some(d) = log10_density {
            write_safetensors(&[("sparsity", d)], &dir.join(SAELENS_SPARSITY))?;
        }
        let path = dir.join(SAELENS_CFG);
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::format(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(Error::io(&path))
    }

    /// Reads a SAELens folder (v6, or v5 with the hook fields at the top level of `cfg.json`),
    /// inference folders and training checkpoints alike, as the function SAELens computes:
    /// - `rescale_acts_by_decoder_norm` (TopK training) is folded in: `W_enc` and `b_enc` times
    ///   each decoder row's norm, `W_dec` divided by it, as SAELens's `fold_W_dec_norm`;
    /// - `normalize_activations: expected_average_only_in` folds the scaling factor that a
    ///   training checkpoint keeps in `activation_scaler.json` (an error without it);
    /// - `batchtopk` and `matryoshka_batchtopk` checkpoints load in their inference form, a
    ///   JumpReLU at the trained threshold (`topk_threshold`), as `save_inference_model` writes;
    /// - v5's `activation_fn_str: topk` with `activation_fn_kwargs.k` is a TopK SAE.
    ///
    /// Every other field is either read (widths, hooks, context, BOS), known not to change the
    /// function (`device`, provenance in `metadata`, training-only coefficients: see
    /// [`SAELENS_TRAINING_FIELDS`]), or refused with its name. Weights in f16/bf16 are converted
    /// to f32 and computed in f32.
    pub fn load_saelens(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(SAELENS_CFG);
        let cfg = read_json(&cfg_path)?;
        let obj = cfg.as_object().ok_or_else(|| Error::format(&cfg_path, "not a JSON object"))?;
        let refuse = |field: &str, why: String| Error::format(&cfg_path, format!("field `{field}`: {why}"));
        for key in obj.keys() {
            if !SAELENS_READ_FIELDS.contains(&key.as_str())
                && !SAELENS_TRAINING_FIELDS.contains(&key.as_str())
                && !SAELENS_PROVENANCE_FIELDS.contains(&key.as_str())
            {
                return Err(refuse(key, "not a field this reader knows, so it cannot tell whether it changes the dictionary's function".into()));
            }
        }
        let field = |name: &str| cfg.get("metadata").and_then(|m| m.get(name)).filter(|v| !v.is_null()).or_else(|| cfg.get(name).filter(|v| !v.is_null()));
        let int = |name: &str| -> Result<i64> { field(name).and_then(Value::as_i64).ok_or_else(|| Error::format(&cfg_path, format!("no integer `{name}`"))) };
        if let Some(head) = field("hook_head_index").or_else(|| field("hook_point_head_index")) {
            return Err(refuse("hook_head_index", format!("{head}: SAEs of one attention head's output are not supported")));
        }
        if field("finetuning_scaling_factor").is_some_and(|v| v != &Value::Bool(false)) {
            return Err(refuse("finetuning_scaling_factor", "a fine-tuned scaling factor (SAELens v5) is not supported".into()));
        }
        let v5_fn = field("activation_fn_str").or_else(|| field("activation_fn")).and_then(Value::as_str);
        let mut name = cfg.get("architecture").and_then(Value::as_str).unwrap_or("standard").to_string();
        let mut k_field = cfg.get("k").cloned();
        match v5_fn {
            None | Some("relu") => {}
            Some("topk") if name == "standard" || name == "topk" => {
                name = "topk".into();
                k_field = k_field.or_else(|| field("activation_fn_kwargs").and_then(|kw| kw.get("k")).cloned());
            }
            Some(other) => return Err(refuse("activation_fn_str", format!("activation `{other}` is not supported"))),
        }
        let batch_topk_trained = matches!(name.as_str(), "batchtopk" | "matryoshka_batchtopk");
        let k = || -> Result<i64> {
            k_field
                .as_ref()
                .and_then(Value::as_f64)
                .filter(|k| k.fract() == 0.0 && k.abs() < 1e15)
                .map(|k| k as i64)
                .ok_or_else(|| Error::format(&cfg_path, format!("architecture `{name}` needs a whole number `k`")))
        };
        let (architecture, kind) = if batch_topk_trained { (Architecture::JumpRelu, DictionaryKind::Sae) } else { parse_architecture(&name, k)? };
        let rescale = match cfg.get("rescale_acts_by_decoder_norm") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(refuse("rescale_acts_by_decoder_norm", format!("{other} is not true or false"))),
        };
        if rescale && !matches!(architecture, Architecture::TopK { .. }) && !batch_topk_trained {
            return Err(refuse("rescale_acts_by_decoder_norm", format!("SAELens defines it only for TopK dictionaries, not `{name}`")));
        }
        let scaling_factor = match cfg.get("normalize_activations").and_then(Value::as_str).unwrap_or("none") {
            "none" => None,
            "expected_average_only_in" => {
                let path = dir.join("activation_scaler.json");
                let s = if path.exists() { read_json(&path)?.get("scaling_factor").and_then(Value::as_f64) } else { None };
                match s {
                    Some(s) if s.is_finite() && s > 0.0 => Some(s),
                    _ => {
                        return Err(refuse(
                            "normalize_activations",
                            "`expected_average_only_in`: the weights expect activations scaled by a factor this folder does not hold (a SAELens training checkpoint keeps it in activation_scaler.json)".into(),
                        ))
                    }
                }
            }
            other => return Err(refuse("normalize_activations", format!("`{other}` is not supported (fold it into the weights first)"))),
        };
        if cfg.get("reshape_activations").and_then(Value::as_str).is_some_and(|r| r != "none") {
            return Err(refuse("reshape_activations", "reshaped activations (hook_z SAEs) are not supported".into()));
        }
        let (d_in, d_sae) = (int("d_in")?, int("d_sae")?);
        let d_out = if kind == DictionaryKind::Sae { d_in } else { int("d_out")? };
        let hook_name =
            field("hook_name").or_else(|| field("hook_point")).and_then(Value::as_str).ok_or_else(|| Error::format(&cfg_path, "no `hook_name`"))?.to_string();
        let dcfg = DictionaryConfig {
            architecture,
            kind,
            d_in,
            d_sae,
            d_out,
            hook_name_out: field("hook_name_out").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| hook_name.clone()),
            hook_name,
            model_name: field("model_name").and_then(Value::as_str).unwrap_or_default().to_string(),
            context_size: field("context_size").and_then(Value::as_i64).unwrap_or(128),
            prepend_bos: field("prepend_bos").and_then(Value::as_bool).unwrap_or(true),
            apply_b_dec_to_input: cfg.get("apply_b_dec_to_input").and_then(Value::as_bool).unwrap_or(kind == DictionaryKind::Sae),
            matryoshka_widths: Vec::new(),
        }
        .validated()
        .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        let weights_path = dir.join(SAELENS_WEIGHTS);
        let mut w = Weights { map: read_tensors(&weights_path, device)?, path: weights_path };
        let gated = architecture == Architecture::Gated;
        let threshold = match (architecture, batch_topk_trained) {
            (Architecture::JumpRelu, false) => Some(w.take("threshold", &[d_sae])?),
            (_, true) => Some(w.take("topk_threshold", &[])?.f_expand([d_sae], false)?.f_contiguous()?),
            _ => None,
        };
        let mut dict = SparseDictionary {
            w_enc: w.take("W_enc", &[d_in, d_sae])?,
            b_enc: w.take(if gated { "b_gate" } else { "b_enc" }, &[d_sae])?,
            w_dec: w.take("W_dec", &[d_sae, d_out])?,
            b_dec: w.take("b_dec", &[d_out])?,
            threshold,
            r_mag: if gated { Some(w.take("r_mag", &[d_sae])?) } else { None },
            b_mag: if gated { Some(w.take("b_mag", &[d_sae])?) } else { None },
            w_skip: if kind == DictionaryKind::SkipTranscoder { Some(w.take("W_skip", &[d_out, d_in])?) } else { None },
            cfg: dcfg,
        };
        if rescale {
            let norms = dict.w_dec.f_norm_scalaropt_dim(2.0, [1], false)?;
            if norms.f_le(0.0)?.f_any()?.f_int64_value(&[])? != 0 {
                return Err(refuse("rescale_acts_by_decoder_norm", "a decoder row of norm 0 cannot be folded".into()));
            }
            dict.w_enc = dict.w_enc.f_mul(&norms)?;
            dict.b_enc = dict.b_enc.f_mul(&norms)?;
            dict.w_dec = dict.w_dec.f_div(&norms.f_unsqueeze(1)?)?;
        }
        if let Some(s) = scaling_factor {
            dict.fold_scales(s, s)?;
        }
        Ok(dict)
    }

    /// Reads an EleutherAI sparsify folder (`cfg.json`, `sae.safetensors`: `encoder.weight`
    /// [n, d_in], `encoder.bias`, `W_dec` [n, d], `b_dec`, optional `W_skip`). Sparsify names
    /// hooks by HF module, so the TransformerLens hook names it reads and writes are given.
    pub fn load_sparsify(dir: impl AsRef<Path>, hook_name: &str, hook_name_out: &str, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("cfg.json");
        let cfg = read_json(&cfg_path)?;
        if let Some(act) = cfg.get("activation").and_then(Value::as_str).filter(|a| *a != "topk") {
            return Err(Error::UnknownArchitecture { found: format!("sparsify activation `{act}`"), supported: SAELENS_ARCHITECTURES });
        }
        let int = |name: &str| cfg.get(name).and_then(Value::as_i64).ok_or_else(|| Error::format(&cfg_path, format!("no integer `{name}`")));
        let (d_in, k) = (int("d_in")?, int("k")?);
        let transcode = cfg.get("transcode").and_then(Value::as_bool).unwrap_or(false);
        let weights_path = dir.join("sae.safetensors");
        let mut w = Weights { map: read_tensors(&weights_path, device)?, path: weights_path };
        let n = w.vector_len("encoder.bias")?;
        let w_dec = w.take("W_dec", &[n, d_in])?;
        let w_skip = w.take_opt("W_skip", &[d_in, d_in])?;
        let kind = match (transcode, w_skip.is_some()) {
            (_, true) => DictionaryKind::SkipTranscoder,
            (true, false) => DictionaryKind::Transcoder,
            (false, false) => DictionaryKind::Sae,
        };
        let cfg = DictionaryConfig {
            architecture: Architecture::TopK { k },
            kind,
            d_in,
            d_sae: n,
            d_out: d_in,
            hook_name: hook_name.to_string(),
            hook_name_out: hook_name_out.to_string(),
            model_name: String::new(),
            context_size: 128,
            prepend_bos: false,
            apply_b_dec_to_input: !transcode,
            matryoshka_widths: Vec::new(),
        };
        Ok(SparseDictionary {
            w_enc: w.take("encoder.weight", &[n, d_in])?.f_tr()?.f_contiguous()?,
            b_enc: w.take("encoder.bias", &[n])?,
            w_dec,
            b_dec: w.take("b_dec", &[d_in])?,
            threshold: None,
            r_mag: None,
            b_mag: None,
            w_skip,
            cfg: cfg.validated()?,
        })
    }
}

/// Reads a circuit-tracer transcoder set: a folder with `config.yaml` (keys `model_name`,
/// `feature_input_hook`, `feature_output_hook`, optional `model_kind: transcoder_set`, and a
/// `transcoders:` list of per-layer files) and `layer_{i}.safetensors` files (`W_enc` [d_tc, d],
/// `W_dec` [d_tc, d], `b_enc`, `b_dec`, optional `activation_function.threshold`, `W_skip`).
/// Returns one transcoder per layer, in order, with hooks `blocks.{i}.{feature_input_hook}` and
/// `blocks.{i}.{feature_output_hook}`.
///
/// The activation is JumpReLU where a layer has a threshold. Without one, circuit-tracer
/// assumes ReLU, but a TopK set saved without its `k` looks the same (and gives several times
/// the active features), so the set must say: `activation_function: relu`, or
/// `activation_function: topk` with `k: K`, in `config.yaml` ([`save_circuit_tracer`] writes it;
/// a legacy `k` tensor in the layer files counts too). Otherwise it is an error that says so.
pub fn load_circuit_tracer(dir: impl AsRef<Path>, device: Device) -> Result<Vec<SparseDictionary>> {
    let dir = dir.as_ref();
    let cfg_path = dir.join("config.yaml");
    let text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
    let (keys, files) = parse_flat_yaml(&text);
    let key = |name: &str| keys.get(name).cloned().ok_or_else(|| Error::format(&cfg_path, format!("no `{name}`")));
    let (hook_in, hook_out) = (key("feature_input_hook")?, key("feature_output_hook")?);
    if let Some(kind) = keys.get("model_kind").filter(|k| *k != "transcoder_set") {
        return Err(Error::format(&cfg_path, format!("model_kind `{kind}`: only per-layer transcoder sets (`transcoder_set`) are supported")));
    }
    let declared = declared_activation(&keys, &cfg_path)?;
    if files.is_empty() {
        return Err(Error::format(&cfg_path, "no `transcoders:` list of layer files"));
    }
    files
        .iter()
        .enumerate()
        .map(|(layer, file)| {
            let path = dir.join(file.strip_prefix("file://").unwrap_or(file));
            let mut w = Weights { map: read_tensors(&path, device)?, path: path.clone() };
            let (d_tc, d) = (w.vector_len("b_enc")?, w.vector_len("b_dec")?);
            let threshold = w.take_opt("activation_function.threshold", &[d_tc])?;
            let k = w.map.remove("k").map(|k| k.f_int64_value(&[])).transpose()?;
            let architecture = match (&threshold, k, declared) {
                (Some(_), None, None | Some(Architecture::JumpRelu)) => Architecture::JumpRelu,
                (None, Some(k), None) => Architecture::TopK { k },
                (None, None, Some(a @ (Architecture::ReluL1 | Architecture::TopK { .. }))) => a,
                (None, None, None) => {
                    return Err(Error::format(
                        &path,
                        "no `activation_function.threshold` and config.yaml names no activation: circuit-tracer would read ReLU, but a TopK set \
                         saved without `k` looks the same. Add `activation_function: relu` (or `activation_function: topk` and `k: K`) to config.yaml",
                    ))
                }
                (t, k, d) => {
                    return Err(Error::format(
                        &path,
                        format!(
                            "the activation is ambiguous: threshold {}, k tensor {k:?}, config.yaml's activation {d:?}",
                            if t.is_some() { "present" } else { "absent" }
                        ),
                    ))
                }
            };
            let w_skip = w.take_opt("W_skip", &[d, d])?;
            let block = |hook: &str| if hook.starts_with("blocks.") { hook.to_string() } else { format!("blocks.{layer}.{hook}") };
            let cfg = DictionaryConfig {
                architecture,
                kind: if w_skip.is_some() { DictionaryKind::SkipTranscoder } else { DictionaryKind::Transcoder },
                d_in: d,
                d_sae: d_tc,
                d_out: d,
                hook_name: block(&hook_in),
                hook_name_out: block(&hook_out),
                model_name: keys.get("model_name").cloned().unwrap_or_default(),
                context_size: 128,
                prepend_bos: true,
                apply_b_dec_to_input: false,
                matryoshka_widths: Vec::new(),
            };
            Ok(SparseDictionary {
                w_enc: w.take("W_enc", &[d_tc, d])?.f_tr()?.f_contiguous()?,
                b_enc: w.take("b_enc", &[d_tc])?,
                w_dec: w.take("W_dec", &[d_tc, d])?,
                b_dec: w.take("b_dec", &[d])?,
                threshold,
                r_mag: None,
                b_mag: None,
                w_skip,
                cfg: cfg.validated()?,
            })
        })
        .collect()
}

/// The activation a circuit-tracer `config.yaml` (at `cfg_path`, keys `keys`) declares:
/// `activation_function: relu`, `jumprelu`, or `topk` with an integer `k`; `None` without one.
pub(crate) fn declared_activation(keys: &HashMap<String, String>, cfg_path: &Path) -> Result<Option<Architecture>> {
    Ok(match keys.get("activation_function").map(String::as_str) {
        None => None,
        Some("relu") => Some(Architecture::ReluL1),
        Some("jumprelu") => Some(Architecture::JumpRelu),
        Some("topk") => {
            let k =
                keys.get("k").and_then(|k| k.parse::<i64>().ok()).ok_or_else(|| Error::format(cfg_path, "`activation_function: topk` needs an integer `k`"))?;
            Some(Architecture::TopK { k })
        }
        Some(other) => return Err(Error::format(cfg_path, format!("activation_function `{other}`: expected relu, jumprelu or topk"))),
    })
}

/// Writes `transcoders` (one per layer, in order) as a circuit-tracer transcoder set that
/// circuit-tracer 0.5.0's `load_transcoder_set` reads as the same functions: `config.yaml`
/// (`model_kind: transcoder_set`, the hooks without their `blocks.{i}.` prefix, `scan`, the
/// `transcoders:` list of layer files relative to `dir`, and `activation_function` so that
/// [`load_circuit_tracer`] knows it) and `layer_{i}.safetensors`. circuit-tracer knows ReLU and
/// JumpReLU transcoders only (BatchTopK saves as its JumpReLU form); TopK and gated transcoders,
/// SAEs, dictionaries that subtract `b_dec` from their input, and sets whose layers read other
/// hooks are refused with the reason.
pub fn save_circuit_tracer(transcoders: &[SparseDictionary], scan: &str, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let first = transcoders.first().ok_or_else(|| Error::Input("no transcoders to save".into()))?;
    let suffix = |hook: &str, layer: usize| hook.strip_prefix(&format!("blocks.{layer}.")).map(str::to_string);
    let hooks = |t: &SparseDictionary, l: usize| (suffix(&t.cfg.hook_name, l), suffix(&t.cfg.hook_name_out, l));
    let (hook_in, hook_out) = match hooks(first, 0) {
        (Some(i), Some(o)) => (i, o),
        _ => return Err(Error::Input(format!("layer 0's hooks `{}` -> `{}` are not `blocks.0.*` hooks", first.cfg.hook_name, first.cfg.hook_name_out))),
    };
    let activation = match first.cfg.architecture {
        Architecture::ReluL1 => "relu",
        Architecture::JumpRelu | Architecture::BatchTopK { .. } => "jumprelu",
        Architecture::TopK { .. } => {
            return Err(Error::Input("circuit-tracer 0.5.0 has no TopK transcoders (it would read them as ReLU); save them as SAELens folders".into()))
        }
        Architecture::Gated => return Err(Error::Input("circuit-tracer has no gated transcoders; save them as SAELens folders".into())),
    };
    for (l, t) in transcoders.iter().enumerate() {
        let c = &t.cfg;
        let why = if c.kind == DictionaryKind::Sae {
            Some("an SAE, not a transcoder".to_string())
        } else if c.apply_b_dec_to_input {
            Some("subtracts b_dec from its input, which circuit-tracer's encoder does not".into())
        } else if c.d_in != c.d_out {
            Some(format!("reads width {} and writes {}; circuit-tracer's transcoders read and write d_model", c.d_in, c.d_out))
        } else if hooks(t, l) != (Some(hook_in.clone()), Some(hook_out.clone())) {
            Some(format!("reads `{}` -> `{}`, not blocks.{l}.{hook_in} -> blocks.{l}.{hook_out}", c.hook_name, c.hook_name_out))
        } else if std::mem::discriminant(&c.architecture) != std::mem::discriminant(&first.cfg.architecture) {
            Some(format!("is {:?} while layer 0 is {:?}", c.architecture, first.cfg.architecture))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::Input(format!("cannot save as a circuit-tracer set: layer {l} {why}")));
        }
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut yaml = format!(
        "# A per-layer transcoder set (interp); circuit-tracer 0.5.0 loads it with load_transcoder_set.\nmodel_kind: transcoder_set\nmodel_name: \"{}\"\nscan: \"{scan}\"\nfeature_input_hook: \"{hook_in}\"\nfeature_output_hook: \"{hook_out}\"\nactivation_function: {activation}\ntranscoders:\n",
        first.cfg.model_name
    );
    for (l, t) in transcoders.iter().enumerate() {
        let file = format!("layer_{l}.safetensors");
        yaml.push_str(&format!("  - \"{file}\"\n"));
        let w_enc = t.w_enc.f_tr()?;
        let mut named = vec![("W_enc", &w_enc), ("W_dec", &t.w_dec), ("b_enc", &t.b_enc), ("b_dec", &t.b_dec)];
        if let Some(th) = &t.threshold {
            named.push(("activation_function.threshold", th));
        }
        if let Some(skip) = &t.w_skip {
            named.push(("W_skip", skip));
        }
        write_safetensors(&named, &dir.join(&file))?;
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).map_err(Error::io(&path))
}

/// One transcoder per layer from `dir`, in layer order (see [`crate::load_transcoder_set`]).
pub(crate) fn load_per_layer_set(dir: impl AsRef<Path>, device: Device) -> Result<Vec<SparseDictionary>> {
    let dir = dir.as_ref();
    if dir.join("config.yaml").exists() {
        return load_circuit_tracer(dir, device);
    }
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    let mut set = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(dir))?.path();
        if !path.join(SAELENS_CFG).exists() {
            continue;
        }
        let tc = SparseDictionary::load_saelens(&path, device)?;
        if tc.cfg.kind == DictionaryKind::Sae {
            return Err(Error::format(&path, "an SAE, not a transcoder"));
        }
        let layer = tc.cfg.hook_name.strip_prefix("blocks.").and_then(|r| r.split('.').next()).and_then(|l| l.parse::<usize>().ok());
        let layer = layer.ok_or_else(|| Error::format(&path, format!("hook `{}` names no layer", tc.cfg.hook_name)))?;
        set.push((layer, tc));
    }
    if set.is_empty() {
        return Err(Error::format(dir, "neither a circuit-tracer set (config.yaml) nor a folder of SAELens transcoder folders"));
    }
    set.sort_by_key(|(l, _)| *l);
    for (i, (l, _)) in set.iter().enumerate() {
        if *l != i {
            return Err(Error::format(
                dir,
                format!("transcoders for layers {:?}: each layer from 0 needs exactly one", set.iter().map(|(l, _)| *l).collect::<Vec<_>>()),
            ));
        }
    }
    Ok(set.into_iter().map(|(_, tc)| tc).collect())
}

/// The top-level `key: value` pairs and the `- item` entries under `transcoders:` of a flat YAML
/// file (what circuit-tracer's configs hold), quotes removed.
pub(crate) fn parse_flat_yaml(text: &str) -> (HashMap<String, String>, Vec<String>) {
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    let (mut keys, mut items, mut in_list) = (HashMap::new(), Vec::new(), false);
    for line in text.lines().map(|l| l.split(" #").next().unwrap_or_default()) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(item) = trimmed.strip_prefix("- ") {
            if in_list {
                items.push(unquote(item));
            }
            continue;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            if !line.starts_with(' ') {
                in_list = k.trim() == "transcoders";
                if !v.trim().is_empty() {
                    keys.insert(k.trim().to_string(), unquote(v));
                }
            }
        }
    }
    (keys, items)
}

impl SparseDictionary {
    /// [`SparseDictionary::load_saelens`] on `model`'s device, refused
    /// ([`Error::OtherModel`]) when a hook it reads or writes is not one of `model`'s.
    pub fn load_saelens_for(model: &HookedTransformer, dir: &Path) -> Result<Self> {
        let dict = SparseDictionary::load_saelens(dir, model.device())?;
        for hook in [&dict.cfg().hook_name, &dict.cfg().hook_name_out] {
            model.hook_point(hook).map_err(|source| Error::OtherModel { path: dir.to_path_buf(), hook: hook.clone(), source: Box::new(source) })?;
        }
        Ok(dict)
    }
}
