//! The `interp` command line: inspect models, cache activations, train models and dictionaries,
//! find circuits, print a logit-lens summary.

mod circuit;
mod features;
mod report;
mod sae;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use interp::circuits::Output;
use interp::interp_core::data;
use interp::interp_core::pretrain::{pretrain, PretrainConfig, PretrainData};
use interp::interp_core::train::{Schedule, TrainConfig};
use interp::interp_core::{tch, BlockStyle, CacheSpec, HookedTransformer, MlpKind, NamesFilter, Tokenizer};
use tch::{Device, Kind, Tensor};

/// The Shakespeare corpus that scripts/setup.sh fetches.
const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare");

/// The prompt the main job runs when none is given.
const DEFAULT_PROMPT: &str = "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the";

/// The model the main job runs on when none is given: the committed Shakespeare model.
const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shakespeare-gpt2");

#[derive(Parser)]
#[command(name = "interp", version, about = "Mechanistic interpretability on hooked transformers (HF checkpoints, TransformerLens hook names)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    F32,
    F16,
    Bf16,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Checkpoint directory: config.json, model.safetensors (or sharded with an index), tokenizer.json.
    model_dir: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    /// Dtype the weights are converted to.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DType,
}

#[derive(Subcommand)]
enum Command {
    /// Print the architecture, sizes, parameter count and every hook point of a model.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run a model and write hook activations (f32) and `logits` to a safetensors file.
    Cache {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors file holding an int64 tensor `input_ids` [batch, pos].
        #[arg(long, conflicts_with = "text", required_unless_present = "text")]
        ids_file: Option<PathBuf>,
        /// Text to tokenize with the model's tokenizer.json (BOS prepended) instead of --ids-file.
        #[arg(long)]
        text: Option<String>,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Hook names or glob patterns (e.g. 'blocks.*.attn.hook_pattern'); default: every
        /// standard hook point. Opt-in points (attn.hook_result, hook_q_input, ...) only by name.
        #[arg(long, num_args = 1..)]
        hooks: Vec<String>,
    },
    /// Train a language model from scratch on text and save it as an HF checkpoint directory.
    ///
    /// Resumes from OUT/checkpoints if a run was interrupted. Writes config.json,
    /// model.safetensors, tokenizer.json and train_report.json (eval loss next to unigram and
    /// bigram baselines) to OUT.
    Train(TrainArgs),
    /// Sparse dictionaries: train, evaluate and inspect SAEs and transcoders.
    #[command(subcommand)]
    Sae(sae::SaeCommand),
    /// Activation patching on a built-in task: each activation of the clean run patched into the
    /// corrupted run, per (layer, position), per head, and per head and position, all indices of
    /// a layer in one batched forward. Writes OUT/patching.csv (site, layer, pos, head, metric,
    /// normalized; -1 where an axis does not apply) and one heatmap per site (SVG and PNG).
    Patch(circuit::PatchArgs),
    /// Causal tracing (ROME) on the facts task: Gaussian noise on the subject's embeddings, then
    /// the clean residual, MLP outputs and attention outputs restored at each (token, layer).
    /// Writes OUT/traces.csv, OUT/aie.csv (average indirect effects by label, token role and
    /// layer) and heatmaps per prompt and per label.
    Trace(circuit::TraceArgs),
    /// ACDC circuit discovery on a built-in task, next to EAP and EAP-IG: writes
    /// OUT/circuit.json (kept edges, nodes, faithfulness), OUT/acdc_edges.csv, edge scores
    /// (OUT/eap_scores.csv, OUT/eap_ig_scores.csv) and faithfulness curves (CSV, SVG, PNG).
    Acdc(circuit::AcdcArgs),
    /// EAP and EAP-IG edge scores on a built-in task, with faithfulness curves of their top-k
    /// circuits: OUT/eap_scores.csv, OUT/eap_ig_scores.csv, OUT/faithfulness.{csv,svg,png}.
    Eap(circuit::EapArgs),
    /// Bilinear-MLP eigendecomposition: for output directions (unembeddings of --tokens), the
    /// interaction matrix Q(u) over blocks.L.ln2.hook_normalized, its eigenvalues (OUT/spectra.{svg,png}),
    /// the tokens its top eigenvectors favour and disfavour (OUT/eigenvectors.csv), and modular-addition
    /// accuracy with each answer logit's MLP term truncated to k eigenpairs (OUT/truncation.{csv,svg,png}).
    Bilinear(features::BilinearArgs),
    /// Attribution graph of a prompt through transcoders that replace every MLP: direct effects
    /// between active features, transcoder errors, token embeddings and top logits in a linearised
    /// replacement model, pruned by influence. Writes OUT/graph.json (circuit-tracer's graph viewer
    /// reads it), OUT/graph.html and OUT/nodes.csv.
    Graph(features::GraphArgs),
    /// The main job (also `interp` alone): one HTML report of every analysis that applies to each
    /// model (default: the built-in text and task models): model card and logit lens, SAE and
    /// transcoder dashboards, a transcoder attribution graph, causal tracing on facts, ACDC and
    /// EAP-IG circuits of IOI and greater-than, bilinear-MLP spectra. Writes OUT/report.html and,
    /// per model, a folder of tables (parquet + CSV), charts (SVG + PNG) and graphs (JSON).
    Report(report::ReportArgs),
    /// Load a model, run a prompt with a cache, print a logit-lens summary.
    Summary {
        /// Checkpoint directory (default: the built-in GPT-2-style model).
        model_dir: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PROMPT)]
        text: String,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Output directory for the trained model.
    #[arg(long)]
    out: PathBuf,
    /// `shakespeare`, a folder of .txt files (every eighth file held out for eval), a .jsonl file
    /// with a `text` field (every eighth line held out), `tasks` (the mixture of every built-in
    /// task) or `induction` (repeated random sequences only).
    #[arg(long, default_value = "shakespeare")]
    data: String,
    /// An existing tokenizer.json; default: train a byte-level BPE tokenizer of --vocab entries.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    vocab: usize,
    /// Block style.
    #[arg(long, value_enum, default_value_t = PretrainConfig::default().style)]
    style: BlockStyle,
    /// MLP kind; none: attention-only.
    #[arg(long, default_value = "gelu", value_parser = mlp_names())]
    mlp: String,
    #[arg(long, default_value_t = PretrainConfig::default().n_layers)]
    layers: usize,
    #[arg(long, default_value_t = PretrainConfig::default().d_model)]
    d_model: i64,
    #[arg(long, default_value_t = PretrainConfig::default().n_heads)]
    heads: i64,
    /// MLP width (default 4 x d_model).
    #[arg(long)]
    d_mlp: Option<i64>,
    /// Context length trained on (and the model's n_ctx).
    #[arg(long, default_value_t = PretrainConfig::default().n_ctx)]
    ctx: i64,
    #[arg(long, default_value_t = PretrainConfig::default().train.steps)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = PretrainConfig::default().batch)]
    batch: i64,
    #[arg(long, default_value_t = PretrainConfig::default().train.lr)]
    lr: f64,
    #[arg(long, default_value_t = PretrainConfig::default().train.warmup_steps)]
    warmup: usize,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value_t = PretrainConfig::default().train.schedule)]
    schedule: Schedule,
    #[arg(long, default_value_t = PretrainConfig::default().train.weight_decay)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = PretrainConfig::default().train.grad_clip.unwrap_or(0.0))]
    clip: f64,
    #[arg(long, default_value_t = PretrainConfig::default().train.eval_every)]
    eval_every: usize,
    #[arg(long, default_value_t = PretrainConfig::default().train.checkpoint_every)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = PretrainConfig::default().seed)]
    seed: i64,
    /// Modulus of the modular-addition task (with --data tasks).
    #[arg(long, default_value_t = 31)]
    modulus: usize,
    /// Torch threads (runs are bitwise repeatable for a fixed count).
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

impl TrainArgs {
    fn config(&self) -> Result<PretrainConfig> {
        Ok(PretrainConfig {
            style: self.style,
            mlp: match self.mlp.as_str() {
                "none" => None,
                name => Some(MlpKind::parse(name)?),
            },
            n_layers: self.layers,
            d_model: self.d_model,
            n_heads: self.heads,
            d_mlp: self.d_mlp,
            n_ctx: self.ctx,
            batch: self.batch,
            seed: self.seed,
            train: TrainConfig {
                steps: self.steps,
                lr: self.lr,
                warmup_steps: self.warmup,
                schedule: self.schedule,
                weight_decay: self.weight_decay,
                grad_clip: (self.clip > 0.0).then_some(self.clip),
                eval_every: self.eval_every,
                checkpoint_every: self.checkpoint_every,
                progress: true,
                ..PretrainConfig::default().train
            },
        })
    }

    fn data(&self) -> Result<PretrainData> {
        Ok(match self.data.as_str() {
            "tasks" | "induction" => PretrainData::Tasks { modulus: self.modulus, induction_only: self.data == "induction" },
            name => {
                let (train, eval) = corpus(name)?;
                PretrainData::Text { train, eval, tokenizer: self.tokenizer()?, vocab: self.vocab }
            }
        })
    }

    fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        Ok(self.tokenizer.as_ref().map(|p| Tokenizer::from_file(p, Some(0))).transpose()?)
    }
}

/// Training and eval documents of `--data`: `shakespeare`, a folder of .txt files or a .jsonl file
/// (every eighth document held out).
fn corpus(name: &str) -> Result<(Vec<data::Document>, Vec<data::Document>)> {
    if name == "shakespeare" {
        return data::shakespeare(Path::new(SHAKESPEARE)).context("run scripts/setup.sh to fetch the corpus");
    }
    let path = Path::new(name);
    let docs = if path.is_dir() { data::read_text_dir(path)? } else { data::read_jsonl(path, "text")? };
    data::hold_out(docs).with_context(|| path.display().to_string())
}

/// `interp train`: prints the eval loss next to its n-gram baselines, or each task's score.
fn train(a: &TrainArgs) -> Result<()> {
    tch::set_num_threads(a.threads);
    let (_, report) = pretrain(a.data()?, &a.config()?, &a.out)?;
    let s = &report.summary;
    let num = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
    if let Some(scores) = s["task_scores"].as_object() {
        for (task, score) in scores {
            println!("{task:<18} {:.4}", score.as_f64().unwrap_or(f64::NAN));
        }
        for (key, what) in [("previous_token_scores", "previous-token scores"), ("induction_scores", "induction scores     ")] {
            if let Some(rows) = s[key].as_array() {
                let rows: Vec<Vec<f64>> = rows.iter().map(|r| r.as_array().map(|r| r.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default()).collect();
                println!("{what} [layer][head]: {rows:.3?}");
            }
        }
        println!("{:.1} s; saved to {}", num("seconds"), a.out.display());
    } else {
        println!(
            "eval loss {:.4} nats/token (unigram {:.4}, bigram {:.4}); {:.0} tokens/s; {:.1} s; saved to {}",
            num("eval_loss"),
            num("unigram_baseline"),
            num("bigram_baseline"),
            num("tokens_per_sec"),
            num("seconds"),
            a.out.display()
        );
    }
    Ok(())
}

/// Runs a command that fills an `Output` in `dir` and writes its report.
fn standalone(dir: &Path, title: &str, run: impl FnOnce(&mut Output) -> Result<()>) -> Result<()> {
    let mut out = Output::new(dir, title)?;
    run(&mut out)?;
    out.write_report()?;
    Ok(())
}

/// `--device`, shared by every command that runs a model.
#[derive(clap::Args, Clone, Copy)]
pub struct DeviceArg {
    /// cpu, cuda, or cuda:N (a CUDA device that is present).
    #[arg(long = "device", default_value = "cpu", value_parser = parse_device)]
    device: Device,
}

impl DeviceArg {
    pub fn get(&self) -> Device {
        self.device
    }
}

fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
        },
    };
    if let Device::Cuda(n) = device {
        if n >= tch::Cuda::device_count() as usize {
            bail!("device {name} is not available ({} CUDA devices)", tch::Cuda::device_count());
        }
    }
    Ok(device)
}

/// `--mlp`'s values: the MLP kinds, or none.
fn mlp_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(MlpKind::NAMES.iter().copied().chain(["none"]))
}

fn load(args: &ModelArgs) -> Result<HookedTransformer> {
    let kind = match args.dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    };
    Ok(HookedTransformer::from_pretrained_dir(&args.model_dir, args.device.get(), kind)?)
}

fn inspect(model: &HookedTransformer) {
    let c = &model.cfg;
    println!("model_type     {} ({:?})", c.model_type, c.family);
    println!("layers         {}", c.n_layers);
    println!("d_model        {}", c.d_model);
    println!("heads          {} (kv heads {}), d_head {}", c.n_heads, c.n_kv_heads, c.d_head);
    println!("d_mlp          {} ({:?}{})", c.d_mlp, c.act, if c.gated_mlp { ", gated" } else { "" });
    println!("vocab          {}", c.d_vocab);
    println!("context        {}", c.n_ctx);
    println!("norm           {:?} (eps {})", c.norm, c.norm_eps);
    println!("positions      {:?}", c.positional);
    println!("parameters     {}", model.n_params());
    println!("dtype, device  {:?}, {:?}", model.kind(), model.device());
    let points = model.hook_points(true);
    println!("hook points    {} (opt-in marked *)", points.len());
    for p in points {
        println!("  {p}{}", if p.is_opt_in() { " *" } else { "" });
    }
}

fn cache(model: &HookedTransformer, ids_file: Option<&Path>, text: Option<&str>, out: &Path, hooks: &[String]) -> Result<()> {
    let ids = match (ids_file, text) {
        (Some(path), _) => {
            let tensors = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
            let (_, ids) = tensors
                .into_iter()
                .find(|(n, _)| n == "input_ids")
                .with_context(|| format!("{} has no tensor `input_ids`", path.display()))?;
            ids
        }
        (None, Some(text)) => model.to_tokens(text, true)?,
        (None, None) => bail!("give --ids-file or --text"),
    };
    let filter = if hooks.is_empty() { NamesFilter::All } else { NamesFilter::names(hooks) };
    let spec = CacheSpec::new(filter).dtype(Kind::Float).device(Device::Cpu);
    let (logits, cache) = model.run_with_cache(&ids.to_device(model.device()), spec)?;
    let mut named: Vec<(String, Tensor)> = cache.iter().map(|(n, t)| (n, t.contiguous())).collect();
    named.push(("logits".into(), logits.to_kind(Kind::Float).to_device(Device::Cpu).contiguous()));
    Tensor::write_safetensors(&named, out).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} tensors ({} bytes of activations) to {}", named.len(), cache.total_bytes(), out.display());
    Ok(())
}

fn summary(dir: &Path, text: &str) -> Result<()> {
    let model = HookedTransformer::from_pretrained_dir(dir, Device::Cpu, Kind::Float)?;
    let c = &model.cfg;
    println!("{} model, {} layers, d_model {}, {} parameters ({})", c.model_type, c.n_layers, c.d_model, model.n_params(), dir.display());
    let tokens = model.to_tokens(text, true)?;
    let str_tokens = model.to_str_tokens(&tokens)?;
    println!("prompt: {} tokens {:?}", str_tokens.len(), str_tokens);
    let start = std::time::Instant::now();
    let (logits, cache) = model.run_with_cache(&tokens, CacheSpec::all())?;
    println!(
        "run_with_cache: {} hook points, {:.1} KiB cached, {:.1} ms",
        cache.len(),
        cache.total_bytes() as f64 / 1024.0,
        start.elapsed().as_secs_f64() * 1e3
    );
    let final_top = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
    let lens = cache.accumulated_resid(None, false, false)?;
    let lens_logits = model.logit_lens(&lens.components)?; // [n, 1, pos, vocab]
    let probs = lens_logits.select(2, -1).select(1, 0).softmax(-1, Kind::Float); // [n, vocab]
    println!("logit lens at the last position (final prediction {:?}):", model.to_string(&Tensor::from_slice(&[final_top]))?);
    println!("  {:<12} {:<16} {:>8} {:>14}", "residual", "top token", "p(top)", "p(final top)");
    for (i, label) in lens.labels.iter().enumerate() {
        let row = probs.get(i as i64);
        let top = row.argmax(-1, false).int64_value(&[]);
        let tok = model.to_string(&Tensor::from_slice(&[top]))?;
        println!("  {:<12} {:<16} {:>8.4} {:>14.4}", label, format!("{tok:?}"), row.double_value(&[top]), row.double_value(&[final_top]));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Inspect { model }) => inspect(&load(&model)?),
        Some(Command::Cache { model, ids_file, text, out, hooks }) => {
            cache(&load(&model)?, ids_file.as_deref(), text.as_deref(), &out, &hooks)?
        }
        Some(Command::Train(args)) => train(&args)?,
        Some(Command::Sae(cmd)) => sae::run(cmd)?,
        Some(Command::Patch(args)) => standalone(&args.task.out, "Activation patching", |out| circuit::patch(&args, out))?,
        Some(Command::Trace(args)) => standalone(&args.task.out, "Causal tracing", |out| circuit::trace(&args.task, &args.config(), out))?,
        Some(Command::Acdc(args)) => standalone(&args.eap.task.out, "ACDC and EAP-IG", |out| circuit::discover(&args.eap.task, &args.config(), out))?,
        Some(Command::Eap(args)) => standalone(&args.task.out, "EAP and EAP-IG", |out| circuit::discover(&args.task, &args.config(), out))?,
        Some(Command::Bilinear(args)) => standalone(&args.out, "Bilinear MLP", |out| features::run_bilinear(&args, out))?,
        Some(Command::Graph(args)) => standalone(&args.out, "Attribution graph", |out| features::run_graph(&args, out))?,
        Some(Command::Report(args)) => report::run(&args)?,
        Some(Command::Summary { model_dir, text }) => summary(model_dir.as_deref().unwrap_or(Path::new(DEFAULT_MODEL)), &text)?,
        None => return run(Cli::parse_from(["interp", "report"])),
    }
    Ok(())
}

fn main() -> ExitCode {
    interp::interp_core::reuse_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print as clap prints them; a usage error is one line, like every other.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
            eprintln!("{}", lines.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
