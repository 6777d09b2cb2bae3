//! Training pipelines, as `interp sae train` runs them (SAELens's training runner; named apart
//! from interp-core's forward `Runner`): one dictionary, or a transcoder set for every layer, end
//! to end:
//! activations streamed from a model over a token stream (optionally through an on-disk cache that
//! several runs share), training with checkpoints and resume, evaluation on held-out contexts, and
//! the result saved as a SAELens folder with `metrics.json`.
//!
//! ```no_run
//! use interp_core::{data, tch::Device, HookedTransformer};
//! use transcoders::pipeline::{eval_contexts, train_dictionary, PipelineConfig};
//! let model = HookedTransformer::from_pretrained_dir("models/shakespeare-gpt2", Device::Cpu, tch::Kind::Float)?;
//! let (train, eval) = data::shakespeare("data/shakespeare".as_ref())?;
//! let tok = model.tokenizer().expect("tokenizer.json");
//! let (train, eval) = (data::token_stream(tok, &train)?, data::token_stream(tok, &eval)?);
//! let cfg = PipelineConfig::default();
//! let contexts = eval_contexts(&eval, cfg.eval_contexts, cfg.store.context_size)?;
//! let run = train_dictionary(&model, "blocks.1.hook_resid_pre", None, &train, &contexts, &cfg, "out/sae".as_ref())?;
//! println!("L0 {:.1}, FVU {:.3}", run.metrics.l0, run.metrics.fvu);
//! # Ok::<(), transcoders::Error>(())
//! ```

use std::path::{Path, PathBuf};

use interp_core::{CacheSpec, HookedTransformer};
use tch::{Kind, Tensor};

use crate::clt::{CltConfig, CrossLayerTranscoder, TranscoderSet};
use crate::clt_train::train_clt;
use crate::dictionary::{Architecture, DictionaryConfig, SparseDictionary};
use crate::error::{Error, Result};
use crate::metrics::{evaluate, evaluate_set, DictionaryMetrics, SetMetrics};
use crate::store::{ActivationSource, ActivationStore, CachedActivations, StoreConfig};
use crate::train::{train_dictionaries, SaeTrainConfig, SaeTrainReport};

/// The training curve's file in a run's folder: one JSON line per logged step.
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// What [`train_dictionary`] trains and how; `Default` holds `interp sae train`'s defaults.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The activation function (TopK with k 32 by default).
    pub architecture: Architecture,
    /// Add a linear skip path (a skip transcoder).
    pub skip: bool,
    /// Number of latents; `None`: 8 x the input width.
    pub d_sae: Option<i64>,
    /// Matryoshka prefixes (increasing widths ending at the number of latents) for BatchTopK;
    /// empty for a plain dictionary.
    pub matryoshka_widths: Vec<i64>,
    /// Fine-tune this SAELens folder instead of starting fresh: its architecture and widths are
    /// used, and they must fit the hooks.
    pub init_from: Option<PathBuf>,
    /// Contexts, batch size and seed of the activation stream.
    pub store: StoreConfig,
    /// The trainer's settings (4000 steps by default); `checkpoint_dir` `None` means
    /// `OUT/checkpoints`.
    pub train: SaeTrainConfig,
    /// Write the activations here first and train from them; an existing cache is reused when
    /// its provenance (model, corpus, store settings, hooks) equals this run's.
    pub cache_dir: Option<PathBuf>,
    /// Storage dtype of a new cache (f32, f16 or bf16; read back as f32).
    pub cache_dtype: Kind,
    /// Train on an existing cache whose provenance differs from this run's: its context, batch
    /// size and seed replace the configured ones (each override is printed).
    pub reuse_cache: bool,
    /// Passes allowed over an existing cache that holds fewer batches than the steps (1: none).
    pub epochs: usize,
    /// The corpus's name, recorded in a cache's manifest.
    pub corpus_name: String,
    /// Held-out contexts for the final evaluation.
    pub eval_contexts: i64,
    /// Contexts per forward of the evaluation.
    pub eval_batch: i64,
    /// SAELens's `model_name` in `cfg.json`: the checkpoint's name or folder.
    pub model_name: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            architecture: Architecture::TopK { k: 32 },
            skip: false,
            d_sae: None,
            matryoshka_widths: Vec::new(),
            init_from: None,
            store: StoreConfig::default(),
            train: SaeTrainConfig { steps: 4000, ..SaeTrainConfig::default() },
            cache_dir: None,
            cache_dtype: Kind::Float,
            reuse_cache: false,
            epochs: 1,
            corpus_name: String::new(),
            eval_contexts: 64,
            eval_batch: 8,
            model_name: String::new(),
        }
    }
}

/// A trained dictionary, its metrics on the held-out contexts and the trainer's report.
pub struct PipelineOutput {
    /// The dictionary, as saved.
    pub dictionary: SparseDictionary,
    /// Its metrics on the held-out contexts.
    pub metrics: DictionaryMetrics,
    /// What training measured.
    pub report: SaeTrainReport,
    /// Passes over the cached activations (above 1 only when an existing cache is reused with
    /// more epochs allowed); `None` when streamed from the model.
    pub epochs: Option<f64>,
}

/// The first `n` held-out contexts of `context` tokens of the corpus `data` (named as
/// [`interp_core::data::corpus`] names it), tokenized by `model`: [n, context].
pub fn held_out_contexts(model: &HookedTransformer, data: &str, n: i64, context: i64) -> Result<Tensor> {
    let tok = model.require_tokenizer("to tokenize held-out text")?;
    eval_contexts(&interp_core::data::token_stream(tok, &interp_core::data::corpus(data)?.1)?, n, context)
}

/// The first `n` contexts of `context` tokens of a token stream [n_tokens]: [n, context].
pub fn eval_contexts(stream: &Tensor, n: i64, context: i64) -> Result<Tensor> {
    let available = stream.size().first().copied().unwrap_or(0) / context.max(1);
    if available < 1 || n < 1 {
        return Err(Error::Input(format!("the held-out text has fewer than {context} tokens, or no context was asked for")));
    }
    Ok(stream.f_narrow(0, 0, n.min(available) * context)?.f_reshape([-1, context])?)
}

/// The widths of the activations at `hook` and `hook_out` in `model`, from one short forward.
fn widths(model: &HookedTransformer, hook: &str, hook_out: &str) -> Result<(i64, i64)> {
    let probe = Tensor::f_zeros([1, 2], (Kind::Int64, model.device()))?;
    let (_, cache) = model.run_with_cache(&probe, CacheSpec::names([hook, hook_out]))?;
    let width = |h: &str| -> Result<i64> { Ok(cache.get(h)?.size().last().copied().unwrap_or(0)) };
    Ok((width(hook)?, width(hook_out)?))
}

/// Trains a dictionary reading `hook` (an SAE, or with `hook_out` a transcoder predicting it) on
/// activations of `model` over `train_tokens` [n_tokens], evaluates it on `eval_contexts`
/// [n, ctx], and saves it to `out` as a SAELens folder plus `metrics.json`. An interrupted run
/// resumes from its checkpoints.
pub fn train_dictionary(
    model: &HookedTransformer,
    hook: &str,
    hook_out: Option<&str>,
    train_tokens: &Tensor,
    eval_contexts: &Tensor,
    cfg: &PipelineConfig,
    out: &Path,
) -> Result<PipelineOutput> {
    let hook_out = hook_out.unwrap_or(hook);
    let (d_in, d_out) = widths(model, hook, hook_out)?;
    let d_sae = cfg.d_sae.unwrap_or(8 * d_in);
    let hooks: Vec<&str> = if hook_out == hook { vec![hook] } else { vec![hook, hook_out] };
    let store = ActivationStore::new(model, train_tokens, &hooks, cfg.store.clone())?.with_labels(&cfg.model_name, &cfg.corpus_name);
    let mut train = run_settings(cfg, out)?;
    let say = |msg: String| {
        if train.progress {
            eprintln!("{msg}");
        }
    };
    let mut dict = match &cfg.init_from {
        Some(from) => {
            let dict = SparseDictionary::load_saelens(from, model.device())?;
            let c = dict.cfg();
            if (c.d_in, c.d_out) != (d_in, d_out) || cfg.d_sae.is_some_and(|n| n != c.d_sae) {
                return Err(Error::Input(format!(
                    "{}: cannot fine-tune a dictionary of widths {} -> {} latents -> {} on `{hook}` -> `{hook_out}` ({d_in} -> {} -> {d_out})",
                    from.display(),
                    c.d_in,
                    c.d_sae,
                    c.d_out,
                    cfg.d_sae.map_or("any".to_string(), |n| n.to_string())
                )));
            }
            say(format!("fine-tuning {} ({:?}, {} latents)", from.display(), c.architecture, c.d_sae));
            train.fine_tune = true;
            dict
        }
        None => {
            let mut dcfg = match hook_out == hook && !cfg.skip {
                true => DictionaryConfig::sae(cfg.architecture, hook, d_in, d_sae),
                false => DictionaryConfig::transcoder(cfg.architecture, cfg.skip, hook, hook_out, d_in, d_out, d_sae),
            };
            dcfg.matryoshka_widths = cfg.matryoshka_widths.clone();
            dcfg.model_name = cfg.model_name.clone();
            SparseDictionary::init(dcfg, cfg.store.seed as i64, model.device())?
        }
    };
    let d_sae = dict.cfg().d_sae;
    say(format!("training a {d_sae}-latent dictionary on `{hook}` -> `{hook_out}` from {} corpus tokens", train_tokens.numel()));
    let (mut source, context_size, epochs) = training_source(store, cfg, &train, &say)?;
    dict.cfg.context_size = context_size;
    let mut report = train_dictionaries(std::slice::from_mut(&mut dict), source.as_mut(), &train)?;
    let metrics = evaluate(&dict, model, eval_contexts, cfg.eval_batch)?;
    dict.save_saelens(out, Some(&metrics.log10_density))?;
    let report = report.swap_remove(0);
    let json = serde_json::json!({ "metrics": metrics, "tokens_per_sec": report.tokens_per_sec, "steps": train.steps, "epochs": epochs, "normalisation_scales": report.scales });
    write_metrics_json(out, &json)?;
    Ok(PipelineOutput { dictionary: dict, metrics, report, epochs })
}

/// The trainer's settings of a run into `out` (created): checkpoints in `out/checkpoints` and the
/// training curve in `out/train_log.jsonl` unless configured elsewhere.
fn run_settings(cfg: &PipelineConfig, out: &Path) -> Result<SaeTrainConfig> {
    let mut train = cfg.train.clone();
    train.checkpoint_dir.get_or_insert_with(|| out.join("checkpoints"));
    train.log_path.get_or_insert_with(|| out.join(TRAIN_LOG));
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    Ok(train)
}

fn write_metrics_json(out: &Path, json: &serde_json::Value) -> Result<()> {
    let path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(json).map_err(|e| Error::format(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(Error::io(&path))
}

/// Which set [`train_transcoder_set`] trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// One transcoder per layer, from `blocks.{l}.ln2.hook_normalized` to `blocks.{l}.hook_mlp_out`,
    /// saved as SAELens folders `OUT/layer_{l}`.
    PerLayer,
    /// A cross-layer transcoder (decoders writing every later layer), saved in circuit-tracer's
    /// CLT layout.
    CrossLayer,
}

/// A trained transcoder set, its metrics on the held-out contexts and the training throughput.
pub struct SetRunOutput {
    /// The set, as saved.
    pub set: TranscoderSet,
    /// Its metrics on the held-out contexts (every layer spliced at once).
    pub metrics: SetMetrics,
    /// Activation tokens per second while training.
    pub tokens_per_sec: f64,
    /// Contexts per shuffle buffer used (cut from the configured number so that every layer's
    /// activations of one buffer fit in [`SET_BUFFER_BYTES`]).
    pub buffer_contexts: i64,
}

/// At most this many bytes of activations in a set's shuffle buffer: a buffer holds two hooks
/// per layer, 60 for a 30-layer model, so SAELens's 512 contexts of 128 tokens would take 9 GB
/// at width 576.
pub const SET_BUFFER_BYTES: i64 = 1 << 30;

/// Trains transcoders that replace every MLP of `model` in one streaming pass over
/// `train_tokens` [n_tokens] (every layer's input and output cached by the same forward): one per
/// layer, or a cross-layer transcoder (encoders reading `blocks.{l}.ln2.hook_normalized`, decoders
/// predicting every later `blocks.{l'}.hook_mlp_out`). `cfg.architecture` and `cfg.d_sae` (per
/// layer, default 8 x d_model) size them; the shuffle buffer is cut to [`SET_BUFFER_BYTES`]. The
/// set is evaluated with [`evaluate_set`] (every layer spliced in at once) and saved to `out` (per
/// layer: SAELens folders `layer_{l}`, which [`crate::load_transcoder_set`] reads back) with
/// `metrics.json`. Resumes from `out/checkpoints`.
pub fn train_transcoder_set(
    model: &HookedTransformer,
    kind: SetKind,
    train_tokens: &Tensor,
    eval_contexts: &Tensor,
    cfg: &PipelineConfig,
    out: &Path,
) -> Result<SetRunOutput> {
    if !cfg.matryoshka_widths.is_empty() || cfg.init_from.is_some() || (cfg.skip && kind == SetKind::CrossLayer) {
        return Err(Error::Input("a transcoder set is trained from scratch, without Matryoshka prefixes (and a CLT without a skip path)".into()));
    }
    let n_layers = model.cfg.n_layers;
    let d = model.cfg.d_model;
    let d_sae = cfg.d_sae.unwrap_or(8 * d);
    let clt_cfg = CltConfig::new(cfg.architecture, n_layers, d, d_sae);
    let hooks: Vec<String> = (0..n_layers).map(|l| clt_cfg.hook_in(l)).chain((0..n_layers).map(|l| clt_cfg.hook_out(l))).collect();
    let hook_refs: Vec<&str> = hooks.iter().map(String::as_str).collect();
    let mut store_cfg = cfg.store.clone();
    let per_context = store_cfg.context_size.max(1) * 2 * n_layers as i64 * d * 4;
    store_cfg.buffer_contexts = store_cfg
        .buffer_contexts
        .min(SET_BUFFER_BYTES / per_context)
        .max((store_cfg.batch_tokens + store_cfg.context_size.max(2) - 2) / (store_cfg.context_size.max(2) - 1));
    let buffer_contexts = store_cfg.buffer_contexts;
    let store = ActivationStore::new(model, train_tokens, &hook_refs, store_cfg)?.with_labels(&cfg.model_name, &cfg.corpus_name);
    let train = run_settings(cfg, out)?;
    let say = |msg: String| {
        if train.progress {
            eprintln!("{msg}");
        }
    };
    let (set, tokens_per_sec) = match kind {
        SetKind::CrossLayer => {
            let mut clt_cfg = clt_cfg;
            clt_cfg.model_name = cfg.model_name.clone();
            let mut clt = CrossLayerTranscoder::init(clt_cfg, cfg.store.seed as i64, model.device())?;
            say(format!("training a {} on {n_layers} layers from {} corpus tokens", clt.cfg().describe(), train_tokens.numel()));
            let (mut source, _, _) = training_source(store, cfg, &train, &say)?;
            let report = train_clt(&mut clt, source.as_mut(), &train)?;
            (TranscoderSet::CrossLayer(clt), report.tokens_per_sec)
        }
        SetKind::PerLayer => {
            let mut dicts = (0..n_layers)
                .map(|l| {
                    let mut dcfg = DictionaryConfig::transcoder(cfg.architecture, cfg.skip, &hooks[l], &hooks[n_layers + l], d, d, d_sae);
                    dcfg.model_name = cfg.model_name.clone();
                    SparseDictionary::init(dcfg, cfg.store.seed as i64 + l as i64, model.device())
                })
                .collect::<Result<Vec<_>>>()?;
            say(format!("training {n_layers} transcoders of {d_sae} latents, one per layer, from {} corpus tokens", train_tokens.numel()));
            let (mut source, context_size, _) = training_source(store, cfg, &train, &say)?;
            let reports = train_dictionaries(&mut dicts, source.as_mut(), &train)?;
            for dict in &mut dicts {
                dict.cfg.context_size = context_size;
            }
            (TranscoderSet::PerLayer(dicts), reports.first().map_or(0.0, |r| r.tokens_per_sec))
        }
    };
    let metrics = evaluate_set(&set, model, eval_contexts, cfg.eval_batch)?;
    match &set {
        TranscoderSet::CrossLayer(clt) => clt.save(out, &cfg.model_name)?,
        TranscoderSet::PerLayer(dicts) => {
            for (l, (dict, m)) in dicts.iter().zip(&metrics.layers).enumerate() {
                dict.save_saelens(out.join(format!("layer_{l}")), Some(&m.log10_density))?;
            }
        }
    }
    write_metrics_json(
        out,
        &serde_json::json!({ "metrics": metrics, "tokens_per_sec": tokens_per_sec, "steps": train.steps, "buffer_contexts": buffer_contexts }),
    )?;
    Ok(SetRunOutput { set, metrics, tokens_per_sec, buffer_contexts })
}

/// What a run trains on: the activations cached in `cfg.cache_dir` when they exist (their
/// provenance must equal the store's, unless `cfg.reuse_cache`), else a new cache written there
/// from `store`, else `store` streaming from the model. Returns the source, the context its
/// activations have, and the epochs the steps make over a cache.
fn training_source<'a>(
    store: ActivationStore<'a>,
    cfg: &PipelineConfig,
    train: &SaeTrainConfig,
    say: &dyn Fn(String),
) -> Result<(Box<dyn ActivationSource + 'a>, i64, Option<f64>)> {
    let mut context_size = cfg.store.context_size;
    let cache = match &cfg.cache_dir {
        Some(dir) if dir.join("manifest.json").exists() => {
            let mut cache = CachedActivations::open(dir, store.model.device())?;
            let differences = cache.provenance.differences(&store.provenance(cfg.cache_dtype)?);
            let hooks_missing = differences.iter().any(|d| d.starts_with("hook") || d.starts_with("width"));
            if !differences.is_empty() && (!cfg.reuse_cache || hooks_missing) {
                return Err(Error::CacheMismatch { path: dir.clone(), differences, reuse_allowed: !hooks_missing });
            }
            for d in &differences {
                say(format!("reusing the cache although its {d}"));
            }
            context_size = cache.provenance.context_size;
            cache.epochs = cfg.epochs.max(1);
            if train.steps > cache.n_batches() * cache.epochs {
                return Err(Error::Input(format!(
                    "{} steps need {} batches but the cache {} holds {} and {} epoch(s) are allowed: train for at most {} steps, allow {} epochs, or cache again",
                    train.steps,
                    train.steps,
                    dir.display(),
                    cache.n_batches(),
                    cache.epochs,
                    cache.n_batches() * cache.epochs,
                    train.steps.div_ceil(cache.n_batches())
                )));
            }
            Some(cache)
        }
        _ => None,
    };
    let cache = match (cache, &cfg.cache_dir) {
        (Some(cache), _) => Some(cache),
        (None, Some(dir)) => {
            let buffers = train.steps.div_ceil(store.batches_per_buffer());
            say(format!("caching {buffers} buffers of activations to {}", dir.display()));
            Some(store.write_cache(dir, buffers, cfg.cache_dtype, train.progress)?)
        }
        (None, None) => None,
    };
    let epochs = cache.as_ref().map(|c| train.steps as f64 / c.n_batches() as f64);
    if let Some(e) = epochs.filter(|e| *e > 1.0) {
        say(format!("{} steps are {e:.2} epochs over the cache", train.steps));
    }
    let source: Box<dyn ActivationSource + 'a> = match cache {
        Some(cache) => Box::new(cache),
        None => Box::new(store),
    };
    Ok((source, context_size, epochs))
}
