//! Training one dictionary end to end, as `interp sae train` does (SAELens's training runner):
//! activations streamed from a model over a token stream (optionally through an on-disk cache that
//! several runs share), training with checkpoints and resume, evaluation on held-out contexts, and
//! the result saved as a SAELens folder with `metrics.json`.
//!
//! ```no_run
//! use interp_core::{data, tch::Device, HookedTransformer};
//! use transcoders::runner::{eval_contexts, train_dictionary, RunnerConfig};
//! let model = HookedTransformer::from_pretrained_dir("models/shakespeare-gpt2", Device::Cpu, tch::Kind::Float)?;
//! let (train, eval) = data::shakespeare("data/shakespeare".as_ref())?;
//! let tok = model.tokenizer().expect("tokenizer.json");
//! let (train, eval) = (data::token_stream(tok, &train)?, data::token_stream(tok, &eval)?);
//! let cfg = RunnerConfig::default();
//! let contexts = eval_contexts(&eval, cfg.eval_contexts, cfg.store.context_size)?;
//! let run = train_dictionary(&model, "blocks.1.hook_resid_pre", None, &train, &contexts, &cfg, "out/sae".as_ref())?;
//! println!("L0 {:.1}, FVU {:.3}", run.metrics.l0, run.metrics.fvu);
//! # Ok::<(), transcoders::Error>(())
//! ```

use std::path::{Path, PathBuf};

use interp_core::{CacheSpec, HookedTransformer};
use tch::{Kind, Tensor};

use crate::dictionary::{Architecture, DictionaryConfig, SparseDictionary};
use crate::error::{Error, Result};
use crate::metrics::{evaluate, DictionaryMetrics};
use crate::store::{ActivationSource, ActivationStore, CachedActivations, StoreConfig};
use crate::train::{train_dictionaries, SaeTrainConfig, SaeTrainReport};

/// What [`train_dictionary`] trains and how; `Default` holds `interp sae train`'s defaults.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The activation function (TopK with k 32 by default).
    pub architecture: Architecture,
    /// Add a linear skip path (a skip transcoder).
    pub skip: bool,
    /// Number of latents; `None`: 8 x the input width.
    pub d_sae: Option<i64>,
    /// Contexts, batch size and seed of the activation stream.
    pub store: StoreConfig,
    /// The trainer's settings (4000 steps by default); `checkpoint_dir` `None` means
    /// `OUT/checkpoints`.
    pub train: SaeTrainConfig,
    /// Write the activations here first and train from them; an existing cache is reused.
    pub cache_dir: Option<PathBuf>,
    /// Held-out contexts for the final evaluation.
    pub eval_contexts: i64,
    /// Contexts per forward of the evaluation.
    pub eval_batch: i64,
    /// SAELens's `model_name` in `cfg.json`: the checkpoint's name or folder.
    pub model_name: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            architecture: Architecture::TopK { k: 32 },
            skip: false,
            d_sae: None,
            store: StoreConfig::default(),
            train: SaeTrainConfig { steps: 4000, ..SaeTrainConfig::default() },
            cache_dir: None,
            eval_contexts: 64,
            eval_batch: 8,
            model_name: String::new(),
        }
    }
}

/// A trained dictionary, its metrics on the held-out contexts and the trainer's report.
pub struct RunnerOutput {
    /// The dictionary, as saved.
    pub dictionary: SparseDictionary,
    /// Its metrics on the held-out contexts.
    pub metrics: DictionaryMetrics,
    /// What training measured.
    pub report: SaeTrainReport,
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
    cfg: &RunnerConfig,
    out: &Path,
) -> Result<RunnerOutput> {
    let hook_out = hook_out.unwrap_or(hook);
    let (d_in, d_out) = widths(model, hook, hook_out)?;
    let d_sae = cfg.d_sae.unwrap_or(8 * d_in);
    let mut dcfg = match hook_out == hook && !cfg.skip {
        true => DictionaryConfig::sae(cfg.architecture, hook, d_in, d_sae),
        false => DictionaryConfig::transcoder(cfg.architecture, cfg.skip, hook, hook_out, d_in, d_out, d_sae),
    };
    dcfg.model_name = cfg.model_name.clone();
    dcfg.context_size = cfg.store.context_size;
    let mut dict = SparseDictionary::init(dcfg, cfg.store.seed as i64, model.device())?;
    let hooks: Vec<&str> = if hook_out == hook { vec![hook] } else { vec![hook, hook_out] };
    let store = ActivationStore::new(model, train_tokens, &hooks, cfg.store.clone())?;
    let mut train = cfg.train.clone();
    train.checkpoint_dir.get_or_insert_with(|| out.join("checkpoints"));
    if train.progress {
        eprintln!("training a {d_sae}-latent dictionary on `{hook}` -> `{hook_out}` from {} corpus tokens", train_tokens.numel());
    }
    let mut source: Box<dyn ActivationSource + '_> = match &cfg.cache_dir {
        Some(dir) if dir.join("manifest.json").exists() => Box::new(CachedActivations::open(dir, model.device())?),
        Some(dir) => {
            let buffers = train.steps.div_ceil(store.batches_per_buffer());
            if train.progress {
                eprintln!("caching {buffers} buffers of activations to {}", dir.display());
            }
            Box::new(store.write_cache(dir, buffers, train.progress)?)
        }
        None => Box::new(store),
    };
    let mut report = train_dictionaries(std::slice::from_mut(&mut dict), source.as_mut(), &train)?;
    let metrics = evaluate(&dict, model, eval_contexts, cfg.eval_batch)?;
    dict.save_saelens(out, Some(&metrics.log10_density))?;
    let report = report.swap_remove(0);
    let json = serde_json::json!({ "metrics": metrics, "tokens_per_sec": report.tokens_per_sec, "steps": train.steps, "normalisation_scales": report.scales });
    let path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::format(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(RunnerOutput { dictionary: dict, metrics, report })
}
