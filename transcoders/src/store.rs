//! Activations for training: streamed from a model over a token corpus, or read from an on-disk
//! cache written by one pass of the model.
//!
//! Every batch is a pure function of its step, so a resumed run sees exactly the batches it would
//! have seen. The shuffle works per buffer: a buffer holds `buffer_contexts` contexts drawn at
//! random positions of the corpus (seeded by the buffer's index), and its tokens are served in a
//! seeded random order. Tokens of a batch therefore come from many contexts, as with SAELens's
//! mixing buffer, without a buffer state that a resume would have to replay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use interp_core::splitmix as mix;
use interp_core::train::{fingerprint_bytes, fingerprint_of};
use interp_core::{CacheSpec, HookedTransformer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::formats::write_safetensors;

/// Batches of activations: one [batch_tokens, width] tensor per hook of `hook_names`, the same
/// for the same `step`.
pub trait ActivationSource {
    /// The hooks served, in the order `batch` returns them.
    fn hook_names(&self) -> &[String];
    /// The activations of step `step`: one [batch_tokens, width] tensor per hook.
    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>>;
}

/// Settings of an [`ActivationStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Tokens per context fed to the model.
    pub context_size: i64,
    /// Tokens per training batch.
    pub batch_tokens: i64,
    /// Contexts per shuffle buffer (one buffer serves `buffer_contexts * (context_size - 1) /
    /// batch_tokens` batches).
    pub buffer_contexts: i64,
    /// Contexts per model forward while filling a buffer.
    pub forward_batch: i64,
    /// Seeds where contexts are cut and how buffers are shuffled.
    pub seed: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { context_size: 128, batch_tokens: 4096, buffer_contexts: 512, forward_batch: 32, seed: 0 }
    }
}

/// Streams activations of several hooks from one model pass over a token stream.
///
/// Position 0 of each context and every BOS token are left out: their activations (attention
/// sinks) are outliers that no dictionary should spend latents on.
pub struct ActivationStore<'m> {
    pub(crate) model: &'m HookedTransformer,
    tokens: Tensor,
    hooks: Vec<String>,
    stop_at: Option<usize>,
    /// Its settings.
    pub cfg: StoreConfig,
    /// The model's folder or name and the corpus's name, recorded in a cache's manifest.
    labels: (String, String),
    buffer: Option<(usize, Vec<Tensor>)>,
}

/// A hook in an activation cache and the width of its activations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedHook {
    /// The hook's name.
    pub name: String,
    /// Activations per token.
    pub width: i64,
}

/// What produced an activation cache, as its manifest records it: the model (a hash of its
/// config and of 4,096 evenly spaced values of every parameter), the corpus (a hash of its token
/// ids), the store's settings, the hooks and the storage dtype. A cache is reused only by a run
/// that would write the same activations ([`CacheProvenance::differences`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheProvenance {
    /// The model's folder or name (shown, not compared).
    pub model: String,
    /// Hash of the model's config and weights, hex.
    pub model_fingerprint: String,
    /// The corpus's name (shown, not compared).
    pub corpus: String,
    /// Hash of the token stream, hex.
    pub corpus_fingerprint: String,
    /// Tokens in the stream.
    pub corpus_tokens: i64,
    /// Tokens per context.
    pub context_size: i64,
    /// Tokens per batch.
    pub batch_tokens: i64,
    /// Contexts per shuffle buffer.
    pub buffer_contexts: i64,
    /// The store's seed.
    pub seed: u64,
    /// How activations are stored (`float32`, `float16`, `bfloat16`); read back as f32.
    pub dtype: String,
    /// The hooks cached, in shard order.
    pub hooks: Vec<CachedHook>,
}

impl CacheProvenance {
    /// How a run described by `wanted` differs from this cache, one `field: cache vs wanted` line
    /// per difference; empty when the cache holds exactly the activations `wanted` would write
    /// (its hooks may be a superset, and the storage dtype may differ).
    pub fn differences(&self, wanted: &CacheProvenance) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, have: String, want: String| {
            if have != want {
                out.push(format!("{what}: {have} in the cache, {want} in this run"));
            }
        };
        check("model", format!("{} ({})", self.model_fingerprint, self.model), format!("{} ({})", wanted.model_fingerprint, wanted.model));
        check(
            "corpus",
            format!("{} ({}, {} tokens)", self.corpus_fingerprint, self.corpus, self.corpus_tokens),
            format!("{} ({}, {} tokens)", wanted.corpus_fingerprint, wanted.corpus, wanted.corpus_tokens),
        );
        check("context_size", self.context_size.to_string(), wanted.context_size.to_string());
        check("batch_tokens", self.batch_tokens.to_string(), wanted.batch_tokens.to_string());
        check("buffer_contexts", self.buffer_contexts.to_string(), wanted.buffer_contexts.to_string());
        check("seed", self.seed.to_string(), wanted.seed.to_string());
        for h in &wanted.hooks {
            match self.hooks.iter().find(|c| c.name == h.name) {
                Some(c) => check(&format!("width of `{}`", h.name), c.width.to_string(), h.width.to_string()),
                None => check(
                    &format!("hook `{}`", h.name),
                    "absent".into(),
                    format!("needed (the cache has {})", self.hooks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")),
                ),
            }
        }
        out
    }
}

/// The name a manifest gives a storage dtype.
fn dtype_name(kind: Kind) -> Result<&'static str> {
    match kind {
        Kind::Float => Ok("float32"),
        Kind::Half => Ok("float16"),
        Kind::BFloat16 => Ok("bfloat16"),
        other => Err(Error::setting("cache_dtype", format!("{other:?}"), "float32, float16 or bfloat16")),
    }
}

/// A hash of the model's config and of up to 4,096 evenly spaced values of each parameter
/// (exact bits): another checkpoint, or the same architecture with other weights, differs.
fn model_fingerprint(model: &HookedTransformer) -> Result<String> {
    let mut text = model.cfg.hf_json.to_string();
    for p in model.parameters() {
        let flat = p.f_detach()?.f_flatten(0, -1)?;
        let n = flat.numel() as i64;
        let step = (n / 4096).max(1);
        let sample = flat.f_slice(0, 0, n, step)?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
        let bits: Vec<f32> = Vec::try_from(&sample)?;
        text.push_str(&format!("{:?}", p.size()));
        text.extend(bits.iter().map(|b| format!("{:08x}", b.to_bits())));
    }
    Ok(format!("{:016x}", fingerprint_of(&text)))
}

/// A hash of a token stream's ids.
fn tokens_fingerprint(tokens: &Tensor) -> Result<String> {
    let ids: Vec<i64> = Vec::try_from(&tokens.f_to_device(Device::Cpu)?)?;
    Ok(format!("{:016x}", fingerprint_bytes(ids.iter().flat_map(|t| t.to_le_bytes()))))
}

impl<'m> ActivationStore<'m> {
    /// A store over `tokens` [n] (documents joined by BOS) reading `hooks` from `model`.
    pub fn new(model: &'m HookedTransformer, tokens: &Tensor, hooks: &[&str], cfg: StoreConfig) -> Result<Self> {
        let n = tokens.size().first().copied().unwrap_or(0);
        if tokens.dim() != 1 || n <= cfg.context_size {
            return Err(Error::Input(format!(
                "the token stream must be 1-D and longer than one context ({}), found shape {:?}",
                cfg.context_size,
                tokens.size()
            )));
        }
        if cfg.context_size < 2 {
            return Err(Error::setting("context_size", cfg.context_size, "at least 2 tokens (position 0 is not trained on)"));
        }
        if cfg.batch_tokens < 1 {
            return Err(Error::setting("batch_tokens", cfg.batch_tokens, "at least 1"));
        }
        if cfg.forward_batch < 1 {
            return Err(Error::setting("forward_batch", cfg.forward_batch, "at least 1 context per forward"));
        }
        if cfg.buffer_contexts * (cfg.context_size - 1) < cfg.batch_tokens {
            return Err(Error::Input(format!(
                "a buffer of {} contexts of {} tokens holds fewer tokens than one batch ({})",
                cfg.buffer_contexts, cfg.context_size, cfg.batch_tokens
            )));
        }
        let mut layers = Vec::new();
        for h in hooks {
            layers.push(model.hook_point(h)?.layer());
        }
        // Stop the forward after the last block a hook reads; hooks after the blocks need them all.
        let stop_at = layers.iter().try_fold(0, |acc, l| l.map(|l| acc.max(l + 1))).filter(|&l| l < model.cfg.n_layers);
        Ok(ActivationStore {
            model,
            tokens: tokens.f_to_kind(Kind::Int64)?,
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
            stop_at,
            cfg,
            labels: (model.cfg.model_type.clone(), String::new()),
            buffer: None,
        })
    }

    /// Names the model (its folder) and the corpus in the manifests of caches this store writes.
    pub fn with_labels(mut self, model: &str, corpus: &str) -> Self {
        self.labels = (model.to_string(), corpus.to_string());
        self
    }

    /// What a cache written by this store would record (`dtype` is the storage dtype). Hashes
    /// the model's weights and the token stream: about 0.1 s at GPT-2-small size.
    pub fn provenance(&self, dtype: Kind) -> Result<CacheProvenance> {
        let probe = self.fill_contexts(&self.contexts(0)?.f_narrow(0, 0, 1)?)?;
        Ok(CacheProvenance {
            model: self.labels.0.clone(),
            model_fingerprint: model_fingerprint(self.model)?,
            corpus: self.labels.1.clone(),
            corpus_fingerprint: tokens_fingerprint(&self.tokens)?,
            corpus_tokens: self.tokens.numel() as i64,
            context_size: self.cfg.context_size,
            batch_tokens: self.cfg.batch_tokens,
            buffer_contexts: self.cfg.buffer_contexts,
            seed: self.cfg.seed,
            dtype: dtype_name(dtype)?.to_string(),
            hooks: self.hooks.iter().zip(&probe).map(|(h, a)| CachedHook { name: h.clone(), width: a.size()[1] }).collect(),
        })
    }

    /// Batches one buffer serves.
    pub fn batches_per_buffer(&self) -> usize {
        (self.cfg.buffer_contexts * (self.cfg.context_size - 1) / self.cfg.batch_tokens) as usize
    }

    /// The contexts [buffer_contexts, context_size] of buffer `index`.
    pub fn contexts(&self, index: usize) -> Result<Tensor> {
        let span = (self.tokens.size()[0] - self.cfg.context_size) as u64;
        let rows: Vec<Tensor> = (0..self.cfg.buffer_contexts as u64)
            .map(|i| {
                let start = mix(self.cfg.seed ^ mix((index as u64) << 24 | i)) % span;
                self.tokens.f_narrow(0, start as i64, self.cfg.context_size)
            })
            .collect::<Result<_, _>>()?;
        Ok(Tensor::f_stack(&rows, 0)?.f_to_device(self.model.device())?)
    }

    /// Activations of `contexts` [n, context_size] at positions 1.. without BOS tokens, one
    /// [tokens, width] f32 tensor per hook, in context order.
    fn fill_contexts(&self, contexts: &Tensor) -> Result<Vec<Tensor>> {
        let bos = self.model.tokenizer().and_then(|t| t.bos_token_id());
        let mut per_hook: Vec<Vec<Tensor>> = self.hooks.iter().map(|_| Vec::new()).collect();
        for chunk in contexts.f_split(self.cfg.forward_batch, 0)? {
            let mut runner = self.model.runner(&chunk).cache(CacheSpec::names(&self.hooks));
            if let Some(l) = self.stop_at {
                runner = runner.stop_at_layer(l);
            }
            let out = runner.run()?;
            let cache = out.cache.ok_or_else(|| Error::Input("the run returned no cache".into()))?;
            let body = chunk.f_narrow(1, 1, self.cfg.context_size - 1)?;
            let keep = match bos {
                Some(b) => body.f_ne(b)?.f_flatten(0, -1)?,
                None => body.f_ones_like()?.f_to_kind(Kind::Bool)?.f_flatten(0, -1)?,
            };
            for (h, acts) in self.hooks.iter().zip(per_hook.iter_mut()) {
                let a = cache.get(h)?;
                let a = a.f_narrow(1, 1, self.cfg.context_size - 1)?.f_flatten(0, 1)?.f_to_kind(Kind::Float)?;
                acts.push(a.f_index(&[Some(keep.shallow_clone())])?);
            }
        }
        Ok(per_hook.iter().map(|a| Tensor::f_cat(a, 0)).collect::<Result<_, _>>()?)
    }

    /// Activations of buffer `index`, one [batches_per_buffer * batch_tokens, width] f32 tensor
    /// per hook, shuffled.
    pub fn fill(&self, index: usize) -> Result<Vec<Tensor>> {
        let acts = self.fill_contexts(&self.contexts(index)?)?;
        let m = acts[0].size()[0] as u64;
        let needed = self.batches_per_buffer() as u64 * self.cfg.batch_tokens as u64;
        // A seeded permutation of the buffer's tokens; if BOS tokens left it short, it wraps.
        let mut order: Vec<(u64, i64)> = (0..m).map(|i| (mix(self.cfg.seed.rotate_left(17) ^ mix((index as u64) << 32 | i)), i as i64)).collect();
        order.sort_unstable();
        let idx: Vec<i64> = (0..needed).map(|j| order[(j % m) as usize].1).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(acts[0].device())?;
        acts.iter().map(|a| Ok(a.f_index_select(0, &idx)?)).collect()
    }

    /// Writes `n_buffers` buffers to `dir` as `shard_NNNNN.safetensors` (activations stored as
    /// `dtype`: f32, f16 or bf16) plus `manifest.json` with the cache's [`CacheProvenance`], so
    /// that several dictionaries can train from one pass of the model, without the model.
    pub fn write_cache(&self, dir: impl AsRef<Path>, n_buffers: usize, dtype: Kind, progress: bool) -> Result<CachedActivations> {
        let dir = dir.as_ref();
        let provenance = self.provenance(dtype)?;
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let bar = interp_core::train::progress_bar(n_buffers as u64, "buffers", progress);
        let mut shards = Vec::new();
        for index in 0..n_buffers {
            let acts = self.fill(index)?.iter().map(|a| a.f_to_kind(dtype)).collect::<Result<Vec<_>, _>>()?;
            let name = format!("shard_{index:05}.safetensors");
            let named: Vec<(&str, &Tensor)> = self.hooks.iter().map(String::as_str).zip(&acts).collect();
            write_safetensors(&named, &dir.join(&name))?;
            shards.push(name);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut manifest = serde_json::to_value(&provenance).map_err(|e| Error::Input(e.to_string()))?;
        manifest["format"] = json!(CACHE_FORMAT);
        manifest["batches_per_shard"] = json!(self.batches_per_buffer());
        manifest["shards"] = json!(shards);
        let path = dir.join("manifest.json");
        std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap_or_default()).map_err(Error::io(&path))?;
        CachedActivations::open(dir, self.model.device())
    }
}

impl ActivationSource for ActivationStore<'_> {
    fn hook_names(&self) -> &[String] {
        &self.hooks
    }

    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>> {
        let per = self.batches_per_buffer();
        let index = step / per;
        if self.buffer.as_ref().is_none_or(|(i, _)| *i != index) {
            self.buffer = Some((index, self.fill(index)?));
        }
        let (_, acts) = self.buffer.as_ref().ok_or_else(|| Error::Input("no buffer".into()))?;
        let start = (step % per) as i64 * self.cfg.batch_tokens;
        acts.iter().map(|a| Ok(a.f_narrow(0, start, self.cfg.batch_tokens)?)).collect()
    }
}

const CACHE_FORMAT: &str = "interp-activation-cache-v2";

/// Activations read back from a cache folder written by [`ActivationStore::write_cache`], as f32.
/// A step past the end starts another epoch over the same activations if `epochs` allows it, and
/// is an error otherwise.
pub struct CachedActivations {
    dir: PathBuf,
    /// What produced the cache.
    pub provenance: CacheProvenance,
    hooks: Vec<String>,
    shards: Vec<String>,
    /// Batches per shard file.
    pub batches_per_shard: usize,
    /// Passes over the cache allowed (1 by default).
    pub epochs: usize,
    device: Device,
    loaded: Option<(usize, Vec<Tensor>)>,
}

/// The tensor names, dtypes and shapes in a safetensors file's header, without reading its data.
fn safetensors_header(path: &Path) -> Result<HashMap<String, (String, Vec<i64>)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::format(path, "not a safetensors file (too short)"))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(Error::format(path, "not a safetensors file (header length)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|_| Error::format(path, "truncated safetensors header"))?;
    let v: Value = serde_json::from_slice(&header).map_err(|e| Error::format(path, format!("malformed safetensors header: {e}")))?;
    let obj = v.as_object().ok_or_else(|| Error::format(path, "malformed safetensors header"))?;
    Ok(obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| {
            (
                k.clone(),
                (
                    t["dtype"].as_str().unwrap_or_default().to_string(),
                    t["shape"].as_array().map(|s| s.iter().filter_map(Value::as_i64).collect()).unwrap_or_default(),
                ),
            )
        })
        .collect())
}

impl CachedActivations {
    /// Opens a cache folder, checking that every shard holds what the manifest says.
    pub fn open(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let m: Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("malformed JSON: {e}")))?;
        let bad = |msg: &str| Error::format(&path, msg.to_string());
        match m["format"].as_str() {
            Some(CACHE_FORMAT) => {}
            Some("interp-activation-cache-v1") => {
                return Err(bad(
                    "written by an older version that did not record which model, corpus and settings produced it; delete the folder and cache again",
                ))
            }
            _ => return Err(bad(&format!("not an activation cache manifest (format should be `{CACHE_FORMAT}`)"))),
        }
        let provenance: CacheProvenance = serde_json::from_value(m.clone()).map_err(|e| bad(&format!("malformed manifest: {e}")))?;
        let shards: Vec<String> =
            m["shards"].as_array().ok_or_else(|| bad("no `shards` list"))?.iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
        let batches_per_shard = m["batches_per_shard"].as_i64().filter(|b| *b > 0).ok_or_else(|| bad("no positive integer `batches_per_shard`"))?;
        if provenance.batch_tokens <= 0 || provenance.hooks.iter().any(|h| h.width <= 0) {
            return Err(bad("`batch_tokens` and every hook's `width` must be positive"));
        }
        if provenance.hooks.is_empty() || shards.is_empty() {
            return Err(bad("the manifest lists no hooks or no shards"));
        }
        let dtype = match provenance.dtype.as_str() {
            "float32" => "F32",
            "float16" => "F16",
            "bfloat16" => "BF16",
            other => return Err(bad(&format!("unknown storage dtype `{other}` (float32, float16 or bfloat16)"))),
        };
        let rows = batches_per_shard
            .checked_mul(provenance.batch_tokens)
            .ok_or_else(|| bad("`batch_tokens` times `batches_per_shard` overflows: not a cache this toolkit wrote"))?;
        for shard in &shards {
            let shard_path = dir.join(shard);
            let header = safetensors_header(&shard_path)?;
            for h in &provenance.hooks {
                match header.get(&h.name) {
                    Some((d, shape)) if shape == &[rows, h.width] && d == dtype => {}
                    Some((d, shape)) => {
                        return Err(Error::format(
                            &shard_path,
                            format!("`{}` is {d} of shape {shape:?} but the manifest says {dtype} [{rows}, {}]", h.name, h.width),
                        ));
                    }
                    None => return Err(Error::format(&shard_path, format!("no activations of `{}`, which the manifest lists", h.name))),
                }
            }
        }
        let hooks = provenance.hooks.iter().map(|h| h.name.clone()).collect();
        Ok(CachedActivations { dir, provenance, hooks, shards, batches_per_shard: batches_per_shard as usize, epochs: 1, device, loaded: None })
    }

    /// Widths of the cached hooks, in `hook_names` order.
    pub fn widths(&self) -> Vec<i64> {
        self.provenance.hooks.iter().map(|h| h.width).collect()
    }

    /// Batches in one epoch.
    pub fn n_batches(&self) -> usize {
        self.shards.len() * self.batches_per_shard
    }
}

impl ActivationSource for CachedActivations {
    fn hook_names(&self) -> &[String] {
        &self.hooks
    }

    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>> {
        if step >= self.n_batches() * self.epochs {
            return Err(Error::Input(format!(
                "step {} is past the activation cache {} ({} batches, {} epoch(s) allowed); allow more epochs or cache more activations",
                step + 1,
                self.dir.display(),
                self.n_batches(),
                self.epochs
            )));
        }
        let step = step % self.n_batches();
        let shard = step / self.batches_per_shard;
        if self.loaded.as_ref().is_none_or(|(s, _)| *s != shard) {
            let path = self.dir.join(&self.shards[shard]);
            let map: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
                .map_err(|e| Error::format(&path, format!("unreadable: {}", e.to_string().lines().next().unwrap_or_default())))?
                .into_iter()
                .collect();
            let acts = self
                .hooks
                .iter()
                .map(|h| {
                    map.get(h).ok_or_else(|| Error::format(&path, format!("no `{h}`"))).and_then(|t| Ok(t.f_to_kind(Kind::Float)?.f_to_device(self.device)?))
                })
                .collect::<Result<_>>()?;
            self.loaded = Some((shard, acts));
        }
        let (_, acts) = self.loaded.as_ref().ok_or_else(|| Error::Input("no shard".into()))?;
        let start = (step % self.batches_per_shard) as i64 * self.provenance.batch_tokens;
        acts.iter().map(|a| Ok(a.f_narrow(0, start, self.provenance.batch_tokens)?)).collect()
    }
}

/// Activations already in memory: one [n, width] tensor per hook, served in consecutive
/// batches of `batch_tokens` rows (wrapping around).
pub struct InMemoryActivations {
    hooks: Vec<String>,
    tensors: Vec<Tensor>,
    /// Rows per batch.
    pub batch_tokens: i64,
}

impl InMemoryActivations {
    /// Serves `named` (hook name, [n, width]) in batches of `batch_tokens` rows; every tensor
    /// needs the same n >= batch_tokens.
    pub fn new(named: Vec<(String, Tensor)>, batch_tokens: i64) -> Result<Self> {
        let rows: Vec<i64> = named.iter().map(|(_, t)| t.size().first().copied().unwrap_or(0)).collect();
        if named.is_empty() || rows.iter().any(|&r| r != rows[0]) || rows[0] < batch_tokens || batch_tokens < 1 {
            return Err(Error::Input(format!("in-memory activations need equal row counts of at least one batch ({batch_tokens}); found {rows:?}")));
        }
        if let Some((name, t)) = named.iter().find(|(_, t)| t.dim() != 2) {
            return Err(Error::Input(format!("activations of `{name}` must be [n, width], found {:?}", t.size())));
        }
        let (hooks, tensors) = named.into_iter().unzip();
        Ok(InMemoryActivations { hooks, tensors, batch_tokens })
    }
}

impl ActivationSource for InMemoryActivations {
    fn hook_names(&self) -> &[String] {
        &self.hooks
    }

    fn batch(&mut self, step: usize) -> Result<Vec<Tensor>> {
        let per = self.tensors[0].size()[0] / self.batch_tokens;
        let start = (step as i64 % per) * self.batch_tokens;
        self.tensors.iter().map(|t| Ok(t.f_narrow(0, start, self.batch_tokens)?)).collect()
    }
}
