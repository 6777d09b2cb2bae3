//! `interp sae ...`: train, evaluate and inspect sparse dictionaries.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use interp::circuits::write_dashboards;
use interp::interp_core::data::token_stream;
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::runner::{eval_contexts, train_dictionary, RunnerConfig};
use interp::transcoders::{evaluate, latent_dashboards, Architecture, DictionaryMetrics, SaeTrainConfig, SparseDictionary, StoreConfig};
use tch::Tensor;

use super::train::corpus;
use super::{load, ModelArgs};

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
    #[arg(long, default_value_t = RunnerConfig::default().train.steps)]
    steps: usize,
    #[arg(long, default_value_t = RunnerConfig::default().store.batch_tokens)]
    batch_tokens: i64,
    #[arg(long, default_value_t = RunnerConfig::default().store.context_size)]
    context: i64,
    #[arg(long, default_value_t = RunnerConfig::default().train.lr)]
    lr: f64,
    /// L1 coefficient (relu, gated).
    #[arg(long, default_value_t = RunnerConfig::default().train.l1_coefficient)]
    l1: f64,
    /// L0 coefficient (jumprelu).
    #[arg(long, default_value_t = RunnerConfig::default().train.l0_coefficient)]
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
    #[arg(long, default_value_t = RunnerConfig::default().store.seed)]
    seed: u64,
    /// Held-out contexts for the final evaluation.
    #[arg(long, default_value_t = RunnerConfig::default().eval_contexts)]
    eval_contexts: i64,
}

/// The first `n` held-out contexts of `context` tokens of `data`.
pub fn held_out_contexts(model: &HookedTransformer, data: &str, n: i64, context: i64) -> Result<Tensor> {
    let tok = model.tokenizer().context("the model has no tokenizer.json")?;
    Ok(eval_contexts(&token_stream(tok, &corpus(data)?.1)?, n, context)?)
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

impl TrainArgs {
    fn config(&self) -> RunnerConfig {
        let defaults = RunnerConfig::default();
        RunnerConfig {
            architecture: match self.arch {
                Arch::Relu => Architecture::ReluL1,
                Arch::Topk => Architecture::TopK { k: self.k },
                Arch::Batchtopk => Architecture::BatchTopK { k: self.k },
                Arch::Jumprelu => Architecture::JumpRelu,
                Arch::Gated => Architecture::Gated,
            },
            skip: self.skip,
            d_sae: self.d_sae,
            store: StoreConfig { context_size: self.context, batch_tokens: self.batch_tokens, seed: self.seed, ..defaults.store },
            train: SaeTrainConfig { steps: self.steps, lr: self.lr, l1_coefficient: self.l1, l0_coefficient: self.l0, ..defaults.train },
            cache_dir: self.cache_dir.clone(),
            eval_contexts: self.eval_contexts,
            model_name: self.model.model_dir.display().to_string(),
            ..defaults
        }
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    let model = load(&a.model)?;
    let tok = model.tokenizer().context("the model has no tokenizer.json")?;
    let train_tokens = token_stream(tok, &corpus(&a.data)?.0)?;
    let contexts = held_out_contexts(&model, &a.data, a.eval_contexts, a.context)?;
    let run = train_dictionary(&model, &a.hook, a.hook_out.as_deref(), &train_tokens, &contexts, &a.config(), &a.out)?;
    print_metrics(&run.metrics);
    println!("{:.0} tokens/s; saved to {}", run.report.tokens_per_sec, a.out.display());
    Ok(())
}

pub fn load_dictionary(model: &HookedTransformer, dir: &Path) -> Result<SparseDictionary> {
    let dict = SparseDictionary::load_saelens(dir, model.device())?;
    for hook in [&dict.cfg().hook_name, &dict.cfg().hook_name_out] {
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
            let ctx = held_out_contexts(&model, &data, contexts, dict.cfg().context_size)?;
            print_metrics(&evaluate(&dict, &model, &ctx, 8)?);
        }
        SaeCommand::Dashboard { model, sae, out, latents, top, data, contexts } => {
            let model = load(&model)?;
            let dict = load_dictionary(&model, &sae)?;
            let ctx = held_out_contexts(&model, &data, contexts, dict.cfg().context_size)?;
            let latents = if latents.is_empty() {
                let m = evaluate(&dict, &model, &ctx, 8)?;
                let (_, order) = m.log10_density.topk(top as i64, 0, true, true);
                Vec::<i64>::try_from(order)?
            } else {
                latents
            };
            let boards = latent_dashboards(&dict, &model, &ctx, &latents, 8)?;
            write_dashboards(&boards, &format!("{} on {}", sae.display(), dict.cfg().hook_name), &out)?;
            println!("wrote dashboards of {} latents to {}", boards.len(), out.join("dashboards.html").display());
        }
    }
    Ok(())
}
