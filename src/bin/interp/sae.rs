//! `interp sae ...`: train, evaluate and inspect sparse dictionaries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::{
    evaluate, latent_dashboards, train_dictionaries, ActivationSource, ActivationStore, Architecture, CachedActivations,
    DictionaryConfig, DictionaryMetrics, SaeTrainConfig, SparseDictionary, StoreConfig,
};
use interp::circuits::write_dashboards;
use tch::Tensor;

use super::{corpus, load, ModelArgs};

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    /// ReLU with an L1 penalty (SAELens "standard").
    Relu,
    Topk,
    Batchtopk,
    Jumprelu,
    Gated,
}

#[derive(Subcommand)]
pub enum SaeCommand {
    /// Train an SAE (one hook) or a transcoder (--hook-out) on activations streamed from a model
    /// over a corpus, evaluate it, and save it as a SAELens folder (cfg.json,
    /// sae_weights.safetensors, sparsity.safetensors) plus metrics.json. Resumes from
    /// OUT/checkpoints if a run was interrupted.
    Train(TrainArgs),
    /// Evaluate a saved dictionary (SAELens folder) on held-out text: L0, FVU, CE loss recovered,
    /// delta loss, KL, dead and dense fractions, shrinkage.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// SAELens folder of the dictionary.
        sae: PathBuf,
        /// shakespeare, a folder of .txt files or a .jsonl file; its held-out part is used.
        #[arg(long, default_value = "shakespeare")]
        data: String,
        /// Number of held-out contexts.
        #[arg(long, default_value_t = 64)]
        contexts: i64,
    },
    /// Write feature dashboards (JSON and HTML): top-activating contexts, activation histogram,
    /// promoted/suppressed logits, direct token inputs.
    Dashboard {
        #[command(flatten)]
        model: ModelArgs,
        sae: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Latents to show, comma separated; default: the --top most frequently active ones.
        #[arg(long, value_delimiter = ',')]
        latents: Vec<i64>,
        #[arg(long, default_value_t = 12)]
        top: usize,
        #[arg(long, default_value = "shakespeare")]
        data: String,
        #[arg(long, default_value_t = 64)]
        contexts: i64,
    },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Hook the dictionary reads, e.g. blocks.1.hook_resid_pre or blocks.0.ln2.hook_normalized.
    #[arg(long)]
    hook: String,
    /// Hook it predicts (a transcoder: blocks.L.hook_mlp_out); default: --hook (an SAE).
    #[arg(long)]
    hook_out: Option<String>,
    /// Add a linear skip path (skip transcoder).
    #[arg(long)]
    skip: bool,
    #[arg(long, value_enum, default_value = "topk")]
    arch: Arch,
    /// Active latents per token (TopK, BatchTopK).
    #[arg(long, default_value_t = 32)]
    k: i64,
    /// Number of latents; default: 8 x the input width.
    #[arg(long)]
    d_sae: Option<i64>,
    #[arg(long, default_value_t = 4000)]
    steps: usize,
    #[arg(long, default_value_t = 4096)]
    batch_tokens: i64,
    #[arg(long, default_value_t = 128)]
    context: i64,
    #[arg(long, default_value_t = 4e-4)]
    lr: f64,
    /// L1 coefficient (relu, gated).
    #[arg(long, default_value_t = 5.0)]
    l1: f64,
    /// L0 coefficient (jumprelu).
    #[arg(long, default_value_t = 0.01)]
    l0: f64,
    #[arg(long, default_value = "shakespeare")]
    data: String,
    /// Write the activations to this folder first (sharded safetensors and a manifest) and train
    /// from it; an existing cache there is reused, so several dictionaries train from one pass.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Output folder (SAELens layout).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out contexts for the final evaluation.
    #[arg(long, default_value_t = 64)]
    eval_contexts: i64,
}

/// The token stream of a document list, documents joined by BOS.
fn tokens(model: &HookedTransformer, docs: &[interp::interp_core::data::Document]) -> Result<Tensor> {
    let mut ids = Vec::new();
    for d in docs {
        ids.extend(model.tokenizer().context("the model has no tokenizer.json")?.encode(&d.text, true)?);
    }
    Ok(Tensor::from_slice(&ids))
}

/// The first `n` held-out contexts of `context` tokens of `data`.
pub fn eval_contexts(model: &HookedTransformer, data: &str, n: i64, context: i64) -> Result<Tensor> {
    let stream = tokens(model, &corpus(data)?.1)?;
    let available = stream.size()[0] / context;
    if available < 1 {
        bail!("the held-out text has fewer than {context} tokens");
    }
    Ok(stream.narrow(0, 0, n.min(available) * context).reshape([-1, context]))
}

fn print_metrics(m: &DictionaryMetrics) {
    println!("tokens            {}", m.n_tokens);
    println!("L0                {:.2}", m.l0);
    println!("FVU               {:.4} (explained variance {:.4})", m.fvu, m.explained_variance);
    println!("CE loss recovered {:.4} (clean {:.4}, spliced {:.4}, zero-ablated {:.4})", m.ce_loss_recovered, m.ce_clean, m.ce_spliced, m.ce_zero_ablation);
    println!("delta loss        {:.4} nats; KL {:.4}", m.delta_loss, m.kl_spliced);
    println!("dead / dense      {:.2}% / {:.2}%", 100.0 * m.dead_fraction, 100.0 * m.dense_fraction);
    println!("shrinkage         {:.4}", m.shrinkage);
}

fn train(a: &TrainArgs) -> Result<()> {
    let model = load(&a.model)?;
    let hook_out = a.hook_out.clone().unwrap_or_else(|| a.hook.clone());
    let width = |hook: &str| -> Result<i64> {
        let probe = Tensor::zeros([1, 2], (tch::Kind::Int64, model.device()));
        let (_, cache) = model.run_with_cache(&probe, interp::interp_core::CacheSpec::names([hook]))?;
        Ok(*cache.get(hook)?.size().last().unwrap_or(&0))
    };
    let (d_in, d_out) = (width(&a.hook)?, width(&hook_out)?);
    let d_sae = a.d_sae.unwrap_or(8 * d_in);
    let architecture = match a.arch {
        Arch::Relu => Architecture::ReluL1,
        Arch::Topk => Architecture::TopK { k: a.k },
        Arch::Batchtopk => Architecture::BatchTopK { k: a.k },
        Arch::Jumprelu => Architecture::JumpRelu,
        Arch::Gated => Architecture::Gated,
    };
    let mut cfg = if hook_out == a.hook && !a.skip {
        DictionaryConfig::sae(architecture, &a.hook, d_in, d_sae)
    } else {
        DictionaryConfig::transcoder(architecture, a.skip, &a.hook, &hook_out, d_in, d_out, d_sae)
    };
    cfg.model_name = a.model.model_dir.display().to_string();
    cfg.context_size = a.context;
    let mut dict = SparseDictionary::init(cfg, a.seed as i64, model.device())?;
    let stream = tokens(&model, &corpus(&a.data)?.0)?;
    let hooks: Vec<&str> = if hook_out == a.hook { vec![&a.hook] } else { vec![&a.hook, &hook_out] };
    let store_cfg = StoreConfig { context_size: a.context, batch_tokens: a.batch_tokens, seed: a.seed, ..Default::default() };
    let store = ActivationStore::new(&model, &stream, &hooks, store_cfg)?;
    let train_cfg = SaeTrainConfig {
        steps: a.steps,
        lr: a.lr,
        l1_coefficient: a.l1,
        l0_coefficient: a.l0,
        checkpoint_dir: Some(a.out.join("checkpoints")),
        ..Default::default()
    };
    eprintln!("training a {d_sae}-latent dictionary on `{}` -> `{hook_out}` from {} corpus tokens", a.hook, stream.numel());
    let mut source: Box<dyn ActivationSource + '_> = match &a.cache_dir {
        Some(dir) if dir.join("manifest.json").exists() => Box::new(CachedActivations::open(dir, model.device())?),
        Some(dir) => {
            let buffers = a.steps.div_ceil(store.batches_per_buffer());
            eprintln!("caching {buffers} buffers of activations to {}", dir.display());
            Box::new(store.write_cache(dir, buffers, true)?)
        }
        None => Box::new(store),
    };
    let report = train_dictionaries(std::slice::from_mut(&mut dict), source.as_mut(), &train_cfg)?;
    let metrics = evaluate(&dict, &model, &eval_contexts(&model, &a.data, a.eval_contexts, a.context)?, 8)?;
    dict.save_saelens(&a.out, Some(&metrics.log10_density))?;
    let json = serde_json::json!({ "metrics": metrics, "tokens_per_sec": report[0].tokens_per_sec, "steps": a.steps, "normalisation_scales": report[0].scales });
    std::fs::write(a.out.join("metrics.json"), serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", a.out.display()))?;
    print_metrics(&metrics);
    println!("{:.0} tokens/s; saved to {}", report[0].tokens_per_sec, a.out.display());
    Ok(())
}

pub fn load_dictionary(model: &HookedTransformer, dir: &Path) -> Result<SparseDictionary> {
    let dict = SparseDictionary::load_saelens(dir, model.device())?;
    for hook in [&dict.cfg.hook_name, &dict.cfg.hook_name_out] {
        model.hook_point(hook).with_context(|| format!("{}: the dictionary's hook does not fit this model", dir.display()))?;
    }
    Ok(dict)
}

pub fn run(cmd: SaeCommand) -> Result<()> {
    match cmd {
        SaeCommand::Train(a) => train(&a)?,
        SaeCommand::Eval { model, sae, data, contexts } => {
            let model = load(&model)?;
            let dict = load_dictionary(&model, &sae)?;
            let ctx = eval_contexts(&model, &data, contexts, dict.cfg.context_size)?;
            print_metrics(&evaluate(&dict, &model, &ctx, 8)?);
        }
        SaeCommand::Dashboard { model, sae, out, latents, top, data, contexts } => {
            let model = load(&model)?;
            let dict = load_dictionary(&model, &sae)?;
            let ctx = eval_contexts(&model, &data, contexts, dict.cfg.context_size)?;
            let latents = if latents.is_empty() {
                let m = evaluate(&dict, &model, &ctx, 8)?;
                let (_, order) = m.log10_density.topk(top as i64, 0, true, true);
                Vec::<i64>::try_from(order)?
            } else {
                latents
            };
            let boards = latent_dashboards(&dict, &model, &ctx, &latents, 8)?;
            write_dashboards(&boards, &format!("{} on {}", sae.display(), dict.cfg.hook_name), &out)?;
            println!("wrote dashboards of {} latents to {}", boards.len(), out.join("dashboards.html").display());
        }
    }
    Ok(())
}
