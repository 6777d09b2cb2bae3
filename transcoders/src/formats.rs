//! Dictionary files other tools write and read: SAELens v6 folders (read and write), sparsify
//! folders and circuit-tracer transcoder sets (read).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::dictionary::{Architecture, DictionaryConfig, DictionaryKind, SparseDictionary};
use crate::error::{Error, Result};

/// File names of a SAELens folder.
pub const SAELENS_CFG: &str = "cfg.json";
pub const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";
pub const SAELENS_SPARSITY: &str = "sparsity.safetensors";

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("malformed JSON: {e}")))
}

/// Every tensor of a safetensors file, as f32 on `device`.
fn read_tensors(path: &Path, device: Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::Io { path: path.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) });
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| Error::format(path, format!("unreadable safetensors: {}", e.to_string().lines().next().unwrap_or_default())))?;
    tensors.into_iter().map(|(name, t)| Ok((name, t.f_to_kind(Kind::Float)?.f_to_device(device)?))).collect()
}

struct Weights {
    path: PathBuf,
    map: HashMap<String, Tensor>,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| Error::format(&self.path, format!("no tensor `{name}` (expected shape {shape:?})")))?;
        if t.size() != shape {
            return Err(Error::format(&self.path, format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t)
    }

    /// The length of the vector `name`, which sizes the rest of the file.
    fn vector_len(&self, name: &str) -> Result<i64> {
        match self.map.get(name).map(Tensor::size).as_deref() {
            Some([n]) => Ok(*n),
            Some(shape) => Err(Error::format(&self.path, format!("tensor `{name}` must be a vector, found shape {shape:?}"))),
            None => Err(Error::format(&self.path, format!("no tensor `{name}`"))),
        }
    }

    fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.map.contains_key(name) { self.take(name, shape).map(Some) } else { Ok(None) }
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

fn parse_architecture(name: &str, cfg: &Value, path: &Path) -> Result<(Architecture, DictionaryKind)> {
    let (base, kind) = match name {
        "transcoder" => ("standard", DictionaryKind::Transcoder),
        "skip_transcoder" => ("standard", DictionaryKind::SkipTranscoder),
        _ => match (name.strip_suffix("_skip_transcoder"), name.strip_suffix("_transcoder")) {
            (Some(b), _) => (b, DictionaryKind::SkipTranscoder),
            (None, Some(b)) => (b, DictionaryKind::Transcoder),
            (None, None) => (name, DictionaryKind::Sae),
        },
    };
    let k = || -> Result<i64> {
        cfg.get("k").and_then(|k| k.as_f64()).map(|k| k as i64).ok_or_else(|| Error::format(path, format!("architecture `{name}` needs a numeric `k`")))
    };
    let arch = match base {
        "standard" => Architecture::ReluL1,
        "topk" => Architecture::TopK { k: k()? },
        "jumprelu" => Architecture::JumpRelu,
        "gated" => Architecture::Gated,
        _ => return Err(Error::UnknownArchitecture { found: name.to_string() }),
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
        if let Architecture::TopK { k } = c.architecture {
            cfg["k"] = json!(k);
            cfg["rescale_acts_by_decoder_norm"] = json!(false);
        }
        let cpu = |t: &Tensor| t.f_detach().and_then(|t| t.f_to_device(Device::Cpu)).and_then(|t| t.f_contiguous());
        let bias_name = if c.architecture == Architecture::Gated { "b_gate" } else { "b_enc" };
        let mut named = vec![("W_enc", cpu(&self.w_enc)?), (bias_name, cpu(&self.b_enc)?), ("W_dec", cpu(&self.w_dec)?), ("b_dec", cpu(&self.b_dec)?)];
        for (name, t) in [("threshold", &self.threshold), ("r_mag", &self.r_mag), ("b_mag", &self.b_mag), ("W_skip", &self.w_skip)] {
            if let Some(t) = t {
                named.push((name, cpu(t)?));
            }
        }
        let write = |named: &[(&str, Tensor)], path: PathBuf| -> Result<()> {
            Tensor::write_safetensors(named, &path).map_err(|e| Error::format(&path, format!("cannot write: {}", e.to_string().lines().next().unwrap_or_default())))
        };
        write(&named, dir.join(SAELENS_WEIGHTS))?;
        if let Some(d) = log10_density {
            write(&[("sparsity", cpu(d)?)], dir.join(SAELENS_SPARSITY))?;
        }
        let path = dir.join(SAELENS_CFG);
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::format(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(Error::io(&path))
    }

    /// Reads a SAELens folder (v6, or v5 with the hook fields at the top level of `cfg.json`).
    /// Weights in f16/bf16 are converted to f32.
    pub fn load_saelens(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(SAELENS_CFG);
        let cfg = read_json(&cfg_path)?;
        let field = |name: &str| cfg.get("metadata").and_then(|m| m.get(name)).filter(|v| !v.is_null()).or_else(|| cfg.get(name));
        let int = |name: &str| -> Result<i64> { field(name).and_then(Value::as_i64).ok_or_else(|| Error::format(&cfg_path, format!("no integer `{name}`"))) };
        let name = cfg.get("architecture").and_then(Value::as_str).unwrap_or("standard");
        let (architecture, kind) = parse_architecture(name, &cfg, &cfg_path)?;
        match cfg.get("normalize_activations").and_then(Value::as_str).unwrap_or("none") {
            // SAELens applies no run-time normalisation for these two either.
            "none" | "expected_average_only_in" => {}
            other => return Err(Error::format(&cfg_path, format!("normalize_activations `{other}` is not supported (fold it into the weights first)"))),
        }
        if cfg.get("reshape_activations").and_then(Value::as_str).is_some_and(|r| r != "none") {
            return Err(Error::format(&cfg_path, "reshape_activations (hook_z SAEs) is not supported"));
        }
        let (d_in, d_sae) = (int("d_in")?, int("d_sae")?);
        let d_out = if kind == DictionaryKind::Sae { d_in } else { int("d_out")? };
        let hook_name = field("hook_name").and_then(Value::as_str).ok_or_else(|| Error::format(&cfg_path, "no `hook_name`"))?.to_string();
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
        }
        .validated()
        .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        let weights_path = dir.join(SAELENS_WEIGHTS);
        let mut w = Weights { map: read_tensors(&weights_path, device)?, path: weights_path };
        let gated = architecture == Architecture::Gated;
        Ok(SparseDictionary {
            w_enc: w.take("W_enc", &[d_in, d_sae])?,
            b_enc: w.take(if gated { "b_gate" } else { "b_enc" }, &[d_sae])?,
            w_dec: w.take("W_dec", &[d_sae, d_out])?,
            b_dec: w.take("b_dec", &[d_out])?,
            threshold: if architecture == Architecture::JumpRelu { Some(w.take("threshold", &[d_sae])?) } else { None },
            r_mag: if gated { Some(w.take("r_mag", &[d_sae])?) } else { None },
            b_mag: if gated { Some(w.take("b_mag", &[d_sae])?) } else { None },
            w_skip: if kind == DictionaryKind::SkipTranscoder { Some(w.take("W_skip", &[d_out, d_in])?) } else { None },
            cfg: dcfg,
        })
    }

    /// Reads an EleutherAI sparsify folder (`cfg.json`, `sae.safetensors`: `encoder.weight`
    /// [n, d_in], `encoder.bias`, `W_dec` [n, d], `b_dec`, optional `W_skip`). Sparsify names
    /// hooks by HF module, so the TransformerLens hook names it reads and writes are given.
    pub fn load_sparsify(dir: impl AsRef<Path>, hook_name: &str, hook_name_out: &str, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("cfg.json");
        let cfg = read_json(&cfg_path)?;
        if let Some(act) = cfg.get("activation").and_then(Value::as_str).filter(|a| *a != "topk") {
            return Err(Error::UnknownArchitecture { found: format!("sparsify activation `{act}`") });
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
/// `feature_input_hook`, `feature_output_hook` and a `transcoders:` list of per-layer files) and
/// `layer_{i}.safetensors` files (`W_enc` [d_tc, d], `W_dec` [d_tc, d], `b_enc`, `b_dec`, optional
/// `activation_function.threshold`, `k`, `W_skip`). Returns one transcoder per layer, in order,
/// with hooks `blocks.{i}.{feature_input_hook}` and `blocks.{i}.{feature_output_hook}`.
pub fn load_circuit_tracer(dir: impl AsRef<Path>, device: Device) -> Result<Vec<SparseDictionary>> {
    let dir = dir.as_ref();
    let cfg_path = dir.join("config.yaml");
    let text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
    let (keys, files) = parse_flat_yaml(&text);
    let key = |name: &str| keys.get(name).cloned().ok_or_else(|| Error::format(&cfg_path, format!("no `{name}`")));
    let (hook_in, hook_out) = (key("feature_input_hook")?, key("feature_output_hook")?);
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
            let architecture = match (&threshold, k) {
                (Some(_), _) => Architecture::JumpRelu,
                (None, Some(k)) => Architecture::TopK { k },
                (None, None) => Architecture::ReluL1,
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

/// One transcoder per layer from `dir`, in layer order: a circuit-tracer set (`config.yaml`), or a
/// folder of SAELens transcoder folders (any names), ordered by the layer of the hook each reads
/// (`blocks.{L}.`). Errors name a folder that is not a transcoder and a layer missing or repeated.
pub fn load_transcoder_set(dir: impl AsRef<Path>, device: Device) -> Result<Vec<SparseDictionary>> {
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
            return Err(Error::format(dir, format!("transcoders for layers {:?}: each layer from 0 needs exactly one", set.iter().map(|(l, _)| *l).collect::<Vec<_>>())));
        }
    }
    Ok(set.into_iter().map(|(_, tc)| tc).collect())
}

/// The top-level `key: value` pairs and the `- item` entries under `transcoders:` of a flat YAML
/// file (what circuit-tracer's configs hold), quotes removed.
fn parse_flat_yaml(text: &str) -> (HashMap<String, String>, Vec<String>) {
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
