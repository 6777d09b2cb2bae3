//! `interp sae ...`: train, evaluate and inspect sparse dictionaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use interp::interp_core::data::{self, token_stream};
use interp::interp_core::train::Schedule;
use interp::interp_core::{tch, CacheSpec, HookedTransformer};
use interp::report::analysis::{read_training_curve, training_curve_chart, write_metrics, write_set_metrics};
use interp::report::{write_dashboards, Output};
use interp::transcoders::pipeline::{held_out_contexts, train_dictionary, train_transcoder_set, PipelineConfig, SetKind, TRAIN_LOG};
use interp::transcoders::{
    evaluate, evaluate_activations, evaluate_set, latent_dashboards, load_transcoder_set, random_latents, readable_latents, ActivationSource, Architecture,
    CachedActivations, DictionaryMetrics, InMemoryActivations, SaeTrainConfig, SetMetrics, SparseDictionary, StoreConfig,
};
use tch::{Kind, Tensor};

use super::{load, DeviceArg, ModelArgs};

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    /// ReLU with an L1 penalty (SAELens "standard").
    Relu,
    /// The k largest pre-activations of each token.
    Topk,
    /// The k x batch largest of a batch while training; a JumpReLU at the learned threshold after.
    Batchtopk,
    /// A learned threshold per latent, trained with an L0 penalty.
    Jumprelu,
    /// A gate path chooses the latents, a magnitude path sets them.
    Gated,
}

#[derive(Clone, Copy, ValueEnum)]
enum CacheDtype {
    F32,
    F16,
    Bf16,
}

#[derive(Subcommand)]
pub enum SaeCommand {
    /// Train an SAE (one hook) or a transcoder (--hook-out) on activations streamed from a model
    /// over a corpus, evaluate it, and save it as a SAELens folder (cfg.json,
    /// sae_weights.safetensors, sparsity.safetensors) plus metrics.json, the training curve
    /// (train_log.jsonl, training_curve.svg/png) and report.html. Resumes from OUT/checkpoints if
    /// a run was interrupted.
    Train(Box<TrainArgs>),
    /// Evaluate a saved dictionary (SAELens folder): with a model, on its held-out text (L0, FVU,
    /// CE loss recovered, delta loss, KL, dead and dense fractions, shrinkage); with
    /// --activations alone (no model), on cached activations (L0, FVU, shrinkage, dead and
    /// dense). Prints the table and writes the metrics as JSON (--json).
    Eval(EvalArgs),
    /// Feature activations of a dictionary, to a safetensors file: for --text run through the
    /// model (writes `input_ids`, `sae_in` [batch, pos, d_in] and `feature_acts` [batch, pos,
    /// d_sae]), or for the activations in a safetensors file (--activations, the tensor named
    /// after the dictionary's hook or --tensor; writes `sae_in` and `feature_acts`).
    Encode(EncodeArgs),
    /// Reconstructions from feature activations: reads `feature_acts` [.., d_sae] (and `sae_in`,
    /// which a skip transcoder needs) from a file `interp sae encode` wrote, writes `sae_out`
    /// [.., d_out].
    Decode {
        /// SAELens folder of the dictionary.
        sae: PathBuf,
        /// safetensors file with `feature_acts` (and `sae_in` for skip transcoders).
        #[arg(long)]
        features: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
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
        /// Latents to show, comma separated; default: --top readable ones (firing on about 0.3%
        /// of tokens: sparse enough to mean something, frequent enough to have examples).
        #[arg(long, value_delimiter = ',')]
        latents: Vec<i64>,
        /// How many latents to show when --latents is not given.
        #[arg(long, default_value_t = 12)]
        top: usize,
        /// Draw the --top latents uniformly at random (seeded by this) from those that fire on
        /// the contexts, instead of the readable ones: a sample that is not cherry-picked.
        #[arg(long)]
        random: Option<u64>,
        /// Text whose held-out part gives the contexts (shakespeare, a folder of .txt files, a
        /// .jsonl file, or several separated by commas).
        #[arg(long, default_value = "shakespeare")]
        data: String,
        /// Held-out contexts (of the dictionary's context size) searched for top activations.
        #[arg(long, default_value_t = 64)]
        contexts: i64,
    },
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// MODEL_DIR SAE, or SAE alone with --activations.
    #[arg(num_args = 1..=2, value_name = "[MODEL_DIR] SAE", required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    /// Evaluate on these activations instead of running a model: an activation cache folder
    /// (manifest.json, as `sae train --cache-dir` writes) or a safetensors file of `interp cache`
    /// ([batch, pos, d] per hook; position 0 left out, as in training).
    #[arg(long)]
    activations: Option<PathBuf>,
    /// Batches of a cache folder to evaluate on (default: all of one epoch).
    #[arg(long)]
    batches: Option<usize>,
    /// shakespeare, a folder of .txt files, a .jsonl file, or several separated by commas; its
    /// held-out part is used.
    #[arg(long, default_value = "shakespeare")]
    data: String,
    /// Number of held-out contexts.
    #[arg(long, default_value_t = 64)]
    contexts: i64,
    /// Where the metrics go as JSON; default SAE/eval.json.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// MODEL_DIR SAE (with --text), or SAE alone with --activations.
    #[arg(num_args = 1..=2, value_name = "[MODEL_DIR] SAE", required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    /// Text to run through the model (tokenized with BOS).
    #[arg(long, conflicts_with = "activations", required_unless_present = "activations")]
    text: Option<String>,
    /// safetensors file with the activations to encode [.., d_in].
    #[arg(long)]
    activations: Option<PathBuf>,
    /// Name of the tensor in --activations; default: the dictionary's hook.
    #[arg(long, requires = "activations")]
    tensor: Option<String>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Hook the dictionary reads, e.g. blocks.1.hook_resid_pre or blocks.0.ln2.hook_normalized.
    #[arg(long, required_unless_present_any = ["clt", "every_layer"])]
    hook: Option<String>,
    /// Train a cross-layer transcoder over every layer instead (encoders read each layer's
    /// ln2.hook_normalized, decoders write every later layer's hook_mlp_out; --d-sae latents per
    /// layer; relu, topk or jumprelu). Saved in circuit-tracer's CLT layout.
    #[arg(long, conflicts_with_all = ["hook", "hook_out", "skip", "matryoshka", "from", "every_layer"])]
    clt: bool,
    /// Train one transcoder per layer instead, every layer's in the same pass over the model (each
    /// reads its layer's ln2.hook_normalized and predicts its hook_mlp_out; --d-sae latents each,
    /// --skip for skip transcoders). Saved as OUT/layer_L SAELens folders, the set `interp graph
    /// --transcoders OUT` reads. The shuffle buffer is cut to hold at most 1 GiB.
    #[arg(long, conflicts_with_all = ["hook", "hook_out", "matryoshka", "from"])]
    every_layer: bool,
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
    /// Number of latents; default: 8 x the input width (the last --matryoshka width if given).
    #[arg(long)]
    d_sae: Option<i64>,
    /// Matryoshka BatchTopK: nested prefix widths, comma separated, the last the number of
    /// latents (e.g. 128,512,2048); each prefix reconstructs on its own. Needs --arch batchtopk.
    #[arg(long, value_delimiter = ',')]
    matryoshka: Vec<i64>,
    /// Fine-tune this SAELens folder instead of starting fresh (its architecture and widths are
    /// used; they must fit the hooks).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Optimiser steps [default: 4000].
    #[arg(long, conflicts_with = "tokens")]
    steps: Option<usize>,
    /// Train on this many activation tokens instead of a number of steps (at least one batch).
    #[arg(long)]
    tokens: Option<u64>,
    /// Activation tokens per training batch (from many contexts, shuffled).
    #[arg(long, default_value_t = PipelineConfig::default().store.batch_tokens)]
    batch_tokens: i64,
    /// Tokens per context fed to the model (position 0 and BOS tokens are not trained on).
    #[arg(long, default_value_t = PipelineConfig::default().store.context_size)]
    context: i64,
    /// Peak learning rate.
    #[arg(long, default_value_t = PipelineConfig::default().train.lr)]
    lr: f64,
    /// Steps of linear learning-rate warmup.
    #[arg(long, default_value_t = PipelineConfig::default().train.warmup_steps)]
    warmup_steps: usize,
    /// The learning rate decays to 0 over these last steps [default: 20% of the steps; 0: none].
    #[arg(long)]
    decay_steps: Option<usize>,
    /// Shape of the decay.
    #[arg(long, value_enum, default_value = "linear")]
    schedule: Schedule,
    /// L1 coefficient (relu, gated).
    #[arg(long, default_value_t = PipelineConfig::default().train.l1_coefficient)]
    l1: f64,
    /// L0 coefficient (jumprelu).
    #[arg(long, default_value_t = PipelineConfig::default().train.l0_coefficient)]
    l0: f64,
    /// Weight of the AuxK loss that revives dead latents (TopK, BatchTopK); 0 turns it off.
    #[arg(long, default_value_t = PipelineConfig::default().train.aux_k_coefficient)]
    aux_k: f64,
    /// A latent that has not fired for this many tokens is dead (AuxK's window and the dead %).
    #[arg(long, default_value_t = PipelineConfig::default().train.dead_tokens)]
    dead_tokens: usize,
    /// Train on raw activations (by default they are scaled so E||x|| = sqrt(d), and the scale
    /// is folded into the saved weights).
    #[arg(long)]
    no_normalize: bool,
    /// Batches that estimate the normalisation's E||x||.
    #[arg(long, default_value_t = PipelineConfig::default().train.norm_batches)]
    norm_batches: usize,
    /// Keep the dictionaries of the last N checkpoints as SAELens folders (OUT/checkpoints/step_S).
    #[arg(long, default_value_t = 0)]
    keep_checkpoints: usize,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = PipelineConfig::default().train.checkpoint_every)]
    checkpoint_every: usize,
    /// Text to train on: shakespeare, a folder of .txt files, a .jsonl file with a `text` field,
    /// or several separated by commas (e.g. shakespeare,data/docs); every eighth document is held
    /// out for the evaluation.
    #[arg(long, default_value = "shakespeare")]
    data: String,
    /// Write the activations to this folder first (sharded safetensors and a manifest that
    /// records the model, corpus and settings) and train from it. An existing cache there is
    /// reused when it was written by the same model, corpus and settings; otherwise an error
    /// lists the differences.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// How a new cache stores activations (read back as f32).
    #[arg(long, value_enum, default_value = "f32")]
    cache_dtype: CacheDtype,
    /// Train on an existing cache although its provenance differs (its context, batch size and
    /// seed replace the flags; each difference is printed).
    #[arg(long, requires = "cache_dir")]
    reuse_cache: bool,
    /// Passes allowed over an existing cache that holds fewer batches than the steps.
    #[arg(long, default_value_t = 1, requires = "cache_dir")]
    epochs: usize,
    /// Output folder (SAELens layout).
    #[arg(long)]
    out: PathBuf,
    /// Seeds where contexts are cut, how batches are shuffled and the dictionary's initialisation.
    #[arg(long, default_value_t = PipelineConfig::default().store.seed)]
    seed: u64,
    /// Held-out contexts for the final evaluation.
    #[arg(long, default_value_t = PipelineConfig::default().eval_contexts)]
    eval_contexts: i64,
    /// Torch threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn print_metrics(m: &DictionaryMetrics) {
    println!("tokens            {}", m.n_tokens);
    println!("L0                {:.2}", m.l0);
    println!("FVU               {:.4} (explained variance {:.4})", m.fvu, m.explained_variance);
    if let Some(d) = &m.downstream {
        println!("CE loss recovered {:.4} (clean {:.4}, spliced {:.4}, zero-ablated {:.4})", d.ce_loss_recovered, d.ce_clean, d.ce_spliced, d.ce_zero_ablation);
        println!("delta loss        {:.4} nats; KL {:.4}", d.delta_loss, d.kl_spliced);
    }
    println!("dead / dense      {:.2}% / {:.2}%", 100.0 * m.dead_fraction, 100.0 * m.dense_fraction);
    println!("shrinkage         {:.4}", m.shrinkage);
}

fn print_set_metrics(m: &SetMetrics) {
    println!("{}", m.set);
    println!("layer  L0       FVU");
    for (l, layer) in m.layers.iter().enumerate() {
        println!("{l:<6} {:<8.2} {:.4}", layer.l0, layer.fvu);
    }
    let d = &m.downstream;
    println!("all layers: L0 {:.2} per token, FVU {:.4}, dead {:.2}%", m.l0, m.fvu, 100.0 * m.dead_fraction);
    println!(
        "every MLP spliced: CE loss recovered {:.4} (clean {:.4}, spliced {:.4}, all zero-ablated {:.4}); KL {:.4}",
        d.ce_loss_recovered, d.ce_clean, d.ce_spliced, d.ce_zero_ablation, d.kl_spliced
    );
}

impl TrainArgs {
    fn config(&self) -> Result<PipelineConfig> {
        let defaults = PipelineConfig::default();
        let steps = match (self.steps, self.tokens) {
            (_, Some(tokens)) => SaeTrainConfig::steps_for_tokens(tokens, self.batch_tokens)?,
            (Some(steps), None) => steps,
            (None, None) => defaults.train.steps,
        };
        if !self.matryoshka.is_empty() && !matches!(self.arch, Arch::Batchtopk) {
            bail!("--matryoshka needs --arch batchtopk");
        }
        Ok(PipelineConfig {
            architecture: match self.arch {
                Arch::Relu => Architecture::ReluL1,
                Arch::Topk => Architecture::TopK { k: self.k },
                Arch::Batchtopk => Architecture::BatchTopK { k: self.k },
                Arch::Jumprelu => Architecture::JumpRelu,
                Arch::Gated => Architecture::Gated,
            },
            skip: self.skip,
            d_sae: self.d_sae.or(self.matryoshka.last().copied()),
            matryoshka_widths: self.matryoshka.clone(),
            init_from: self.from.clone(),
            store: StoreConfig { context_size: self.context, batch_tokens: self.batch_tokens, seed: self.seed, ..defaults.store },
            train: SaeTrainConfig {
                steps,
                lr: self.lr,
                warmup_steps: self.warmup_steps,
                decay_steps: self.decay_steps,
                schedule: self.schedule,
                l1_coefficient: self.l1,
                l0_coefficient: self.l0,
                aux_k_coefficient: self.aux_k,
                dead_tokens: self.dead_tokens,
                normalize_activations: !self.no_normalize,
                norm_batches: self.norm_batches,
                keep_checkpoints: self.keep_checkpoints,
                checkpoint_every: self.checkpoint_every,
                ..defaults.train
            },
            cache_dir: self.cache_dir.clone(),
            cache_dtype: match self.cache_dtype {
                CacheDtype::F32 => Kind::Float,
                CacheDtype::F16 => Kind::Half,
                CacheDtype::Bf16 => Kind::BFloat16,
            },
            reuse_cache: self.reuse_cache,
            epochs: self.epochs,
            corpus_name: self.data.clone(),
            eval_contexts: self.eval_contexts,
            model_name: self.model.model_dir.display().to_string(),
            ..defaults
        })
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    tch::set_num_threads(a.threads);
    let cfg = a.config()?;
    let model = load(&a.model)?;
    let tok = model.require_tokenizer("to tokenize the training text")?;
    let train_tokens = token_stream(tok, &data::corpus(&a.data)?.0)?;
    let contexts = held_out_contexts(&model, &a.data, a.eval_contexts, a.context)?;
    let Some(hook) = &a.hook else {
        let kind = if a.clt { SetKind::CrossLayer } else { SetKind::PerLayer };
        let run = train_transcoder_set(&model, kind, &train_tokens, &contexts, &cfg, &a.out)?;
        print_set_metrics(&run.metrics);
        println!("{:.0} tokens/s ({} contexts per shuffle buffer); saved to {}", run.tokens_per_sec, run.buffer_contexts, a.out.display());
        let mut out = Output::new(&a.out, &run.set.describe())?;
        out.report.paragraph(&format!(
            "Trained {} steps on {} from {}; evaluated on {} held-out tokens.",
            cfg.train.steps,
            a.data,
            a.model.model_dir.display(),
            run.metrics.n_tokens
        ));
        write_set_metrics(&mut out, "evaluation", &run.metrics)?;
        training_curve_chart(&mut out, "training_curve", &read_training_curve(&a.out.join(TRAIN_LOG))?)?;
        out.write_report()?;
        return Ok(());
    };
    let run = train_dictionary(&model, hook, a.hook_out.as_deref(), &train_tokens, &contexts, &cfg, &a.out)?;
    print_metrics(&run.metrics);
    let epochs = run.epochs.map(|e| format!(", {e:.2} epochs over the cache")).unwrap_or_default();
    println!("{:.0} tokens/s{epochs}; saved to {}", run.report.tokens_per_sec, a.out.display());
    let c = run.dictionary.cfg();
    let hooks = if c.hook_name == c.hook_name_out { c.hook_name.clone() } else { format!("{} -> {}", c.hook_name, c.hook_name_out) };
    let mut out = Output::new(&a.out, &format!("{} on {hooks}", c.describe()))?;
    out.report.paragraph(&format!(
        "{} latents, trained {} steps on {} from {}; evaluated on {} held-out tokens.",
        c.d_sae,
        cfg.train.steps,
        a.data,
        a.model.model_dir.display(),
        run.metrics.n_tokens
    ));
    write_metrics(&mut out, "evaluation", &a.out.display().to_string(), &run.metrics)?;
    training_curve_chart(&mut out, "training_curve", &read_training_curve(&a.out.join(TRAIN_LOG))?)?;
    out.write_report()?;
    Ok(())
}

/// Activations of `hooks` from a cache folder or an `interp cache` safetensors file (3-D tensors
/// lose position 0, as training does), as a source of batches and their number.
fn activation_source(path: &Path, hooks: &[&str], batches: Option<usize>) -> Result<(Box<dyn ActivationSource>, usize)> {
    if path.is_dir() {
        let cache = CachedActivations::open(path, tch::Device::Cpu)?;
        let n = batches.unwrap_or(cache.n_batches()).min(cache.n_batches());
        return Ok((Box::new(cache), n));
    }
    let mut tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?.into_iter().collect();
    let mut named = Vec::new();
    for hook in hooks {
        let t = tensors
            .remove(*hook)
            .with_context(|| format!("{} has no tensor `{hook}` (it has: {})", path.display(), tensors.keys().cloned().collect::<Vec<_>>().join(", ")))?;
        let t = match t.dim() {
            3 => t.narrow(1, 1, t.size()[1] - 1).flatten(0, 1),
            2 => t,
            _ => bail!("{}: `{hook}` must be [n, d] or [batch, pos, d], found {:?}", path.display(), t.size()),
        };
        named.push((hook.to_string(), t.to_kind(Kind::Float)));
    }
    let rows = named[0].1.size()[0];
    Ok((Box::new(InMemoryActivations::new(named, rows)?), 1))
}

/// `[MODEL_DIR] SAE` positional arguments: the model folder, if given, and the dictionary's.
fn model_and_sae(paths: &[PathBuf]) -> Result<(Option<&PathBuf>, &PathBuf)> {
    match paths {
        [model, sae] => Ok((Some(model), sae)),
        [sae] => Ok((None, sae)),
        _ => bail!("give MODEL_DIR SAE, or SAE alone with --activations"),
    }
}

fn eval(a: &EvalArgs) -> Result<()> {
    let (model_dir, sae) = model_and_sae(&a.paths)?;
    let metrics = match (model_dir, &a.activations) {
        (_, Some(path)) => {
            let dict = SparseDictionary::load_saelens(sae, a.device.get())?;
            let (hook_in, hook_out) = (dict.cfg().hook_name.clone(), dict.cfg().hook_name_out.clone());
            let hooks: Vec<&str> = if hook_in == hook_out { vec![&hook_in] } else { vec![&hook_in, &hook_out] };
            let (mut source, n) = activation_source(path, &hooks, a.batches)?;
            evaluate_activations(&dict, source.as_mut(), n)?
        }
        (Some(model_dir), None) if !sae.join("cfg.json").exists() => {
            // A transcoder set (per-layer or a CLT): every layer spliced in at once.
            let model = HookedTransformer::from_pretrained_dir(model_dir, a.device.get(), Kind::Float)?;
            let set = load_transcoder_set(sae, model.device())?;
            let ctx = held_out_contexts(&model, &a.data, a.contexts, 128)?;
            let metrics = evaluate_set(&set, &model, &ctx, 8)?;
            print_set_metrics(&metrics);
            let json = a.json.clone().unwrap_or_else(|| sae.join("eval.json"));
            std::fs::write(&json, serde_json::to_string_pretty(&metrics)?).with_context(|| format!("writing {}", json.display()))?;
            println!("wrote {}", json.display());
            return Ok(());
        }
        (Some(model_dir), None) => {
            let model = HookedTransformer::from_pretrained_dir(model_dir, a.device.get(), Kind::Float)?;
            let dict = SparseDictionary::load_saelens_for(&model, sae)?;
            let ctx = held_out_contexts(&model, &a.data, a.contexts, dict.cfg().context_size)?;
            evaluate(&dict, &model, &ctx, 8)?
        }
        (None, None) => bail!("without a model, give --activations (a cache folder or an `interp cache` file)"),
    };
    print_metrics(&metrics);
    let json = a.json.clone().unwrap_or_else(|| sae.join("eval.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&metrics)?).with_context(|| format!("writing {}", json.display()))?;
    println!("wrote {}", json.display());
    Ok(())
}

fn encode(a: &EncodeArgs) -> Result<()> {
    let (model_dir, sae) = model_and_sae(&a.paths)?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let (dict, x) = match (model_dir, &a.text, &a.activations) {
        (Some(model_dir), Some(text), _) => {
            let model = HookedTransformer::from_pretrained_dir(model_dir, a.device.get(), Kind::Float)?;
            let dict = SparseDictionary::load_saelens_for(&model, sae)?;
            let ids = model.to_tokens(text, true)?;
            let (_, cache) = model.run_with_cache(&ids, CacheSpec::names([dict.cfg().hook_name.as_str()]))?;
            let x = cache.get(&dict.cfg().hook_name)?.to_kind(Kind::Float);
            named.push(("input_ids".into(), ids.to_device(tch::Device::Cpu)));
            (dict, x)
        }
        (None, Some(_), _) => bail!("--text needs MODEL_DIR before SAE"),
        (_, None, Some(path)) => {
            let dict = SparseDictionary::load_saelens(sae, a.device.get())?;
            let name = a.tensor.clone().unwrap_or_else(|| dict.cfg().hook_name.clone());
            let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?.into_iter().collect();
            let x = tensors.get(&name).with_context(|| format!("{} has no tensor `{name}` (name it with --tensor)", path.display()))?;
            (dict, x.to_kind(Kind::Float).to_device(a.device.get()))
        }
        (_, None, None) => bail!("give --text or --activations"),
    };
    let f = dict.encode(&x)?;
    let active = f.gt(0.0).sum(Kind::Float).double_value(&[]) / (f.numel() as f64 / dict.cfg().d_sae as f64);
    named.push(("sae_in".into(), x.to_device(tch::Device::Cpu).contiguous()));
    named.push(("feature_acts".into(), f.to_device(tch::Device::Cpu).contiguous()));
    Tensor::write_safetensors(&named, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!("encoded {:?} activations: feature_acts {:?}, {active:.1} active latents per token; wrote {}", x.size(), f.size(), a.out.display());
    Ok(())
}

fn decode(sae: &Path, features: &Path, out: &Path) -> Result<()> {
    let dict = SparseDictionary::load_saelens(sae, tch::Device::Cpu)?;
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(features).with_context(|| format!("reading {}", features.display()))?.into_iter().collect();
    let f = tensors.get("feature_acts").with_context(|| format!("{} has no tensor `feature_acts`", features.display()))?.to_kind(Kind::Float);
    if f.size().last() != Some(&dict.cfg().d_sae) {
        bail!("{}: feature_acts has shape {:?}, but the dictionary has {} latents", features.display(), f.size(), dict.cfg().d_sae);
    }
    let x = tensors.get("sae_in").map(|t| t.to_kind(Kind::Float));
    let y = dict.decode(&f, x.as_ref())?;
    Tensor::write_safetensors(&[("sae_out", y.contiguous())], out).with_context(|| format!("writing {}", out.display()))?;
    println!("decoded feature_acts {:?} to sae_out {:?}; wrote {}", f.size(), y.size(), out.display());
    Ok(())
}

pub fn run(cmd: SaeCommand) -> Result<()> {
    match cmd {
        SaeCommand::Train(a) => train(&a)?,
        SaeCommand::Eval(a) => eval(&a)?,
        SaeCommand::Encode(a) => encode(&a)?,
        SaeCommand::Decode { sae, features, out } => decode(&sae, &features, &out)?,
        SaeCommand::Dashboard { model, sae, out, latents, top, random, data, contexts } => {
            let model = load(&model)?;
            let dict = SparseDictionary::load_saelens_for(&model, &sae)?;
            let ctx = held_out_contexts(&model, &data, contexts, dict.cfg().context_size)?;
            let latents = match (latents.is_empty(), random) {
                (false, _) => latents,
                (true, None) => readable_latents(&evaluate(&dict, &model, &ctx, 8)?.log10_density, top)?,
                (true, Some(seed)) => random_latents(&evaluate(&dict, &model, &ctx, 8)?.log10_density, top, seed)?,
            };
            let boards = latent_dashboards(&dict, &model, &ctx, &latents, 8)?;
            write_dashboards(&boards, &format!("{} on {}", sae.display(), dict.cfg().hook_name), &out)?;
            println!("wrote dashboards of {} latents to {}", boards.len(), out.join("dashboards.html").display());
        }
    }
    Ok(())
}
