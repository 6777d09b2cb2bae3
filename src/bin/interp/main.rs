//! The `interp` command line: inspect models, cache activations, train models and dictionaries,
//! find circuits, print a logit-lens summary.

mod circuit;
mod features;
mod report;
mod sae;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use interp::interp_core::{tch, CacheSpec, HookedTransformer, NamesFilter};
use interp::report::Output;
use tch::{Device, Kind, Tensor};

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
    /// Checkpoint directory (config.json, model.safetensors or sharded with an index,
    /// tokenizer.json), or a GGUF file (llama.cpp's format), or a folder holding one.
    model_dir: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    /// Dtype the weights are converted to.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DType,
}

#[derive(Subcommand)]
enum Command {
    /// Print the architecture, sizes, parameter count and every hook point of a model (of a GGUF
    /// file also its tensor types and the metadata that matters).
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Write a model (a GGUF file, or any folder this toolkit loads) as an HF checkpoint folder:
    /// config.json, model.safetensors (the --dtype asked for) and tokenizer.json, which HF
    /// transformers loads as the same function.
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a model and write hook activations (f32) and `logits` (unless --no-logits) to a
    /// safetensors file.
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
        /// Leave out the logits ([batch, pos, d_vocab] f32: 200 KB per token at GPT-2's
        /// vocabulary).
        #[arg(long)]
        no_logits: bool,
    },
    /// Train a language model from scratch on text and save it as an HF checkpoint directory.
    ///
    /// Resumes from OUT/checkpoints if a run was interrupted. Writes config.json,
    /// model.safetensors, tokenizer.json and train_report.json (eval loss next to unigram and
    /// bigram baselines) to OUT.
    Train(train::TrainArgs),
    /// Sparse dictionaries: train, evaluate and inspect SAEs and transcoders.
    #[command(subcommand)]
    Sae(sae::SaeCommand),
    /// Activation patching on a built-in task or a prompt file (--prompts): each activation of the clean run patched into the
    /// corrupted run, per (layer, position), per head, per head and position, and per expert
    /// (mixtures of experts), all indices of a layer in one batched forward. Writes
    /// OUT/patching.csv (site, layer, pos, head, expert, metric, normalized; -1 where an axis does
    /// not apply) and one heatmap per site (SVG and PNG).
    Patch(circuit::PatchArgs),
    /// Causal tracing (ROME) on the facts task or a prompt file (--prompts: prompt, subject,
    /// answer, label per line): Gaussian noise on the subject's embeddings, then
    /// the clean residual, MLP outputs and attention outputs restored at each (token, layer).
    /// Writes OUT/traces.csv, OUT/aie.csv (average indirect effects by label, token role and
    /// layer) and heatmaps per prompt and per label.
    Trace(circuit::TraceArgs),
    /// A model studied end to end on an IOI-style pair file (--ioi: answer = the indirect
    /// object, wrong = the subject) and facts (--facts, as for `trace`): behaviour per template,
    /// logit lens, EAP and EAP-IG with faithfulness curves and MIB's CPR/CMD, every head's direct
    /// logit attribution, attention, z patching and role, causal tracing of the facts, and each
    /// step's time and peak memory. Writes OUT/report.html with its tables and charts
    /// (`interp study models/real/SmolLM2-135M-Instruct.Q4_1.gguf --ioi
    /// prompts/smollm2-135m/ioi.jsonl --facts prompts/smollm2-135m/facts.jsonl --out study`).
    Study(circuit::StudyArgs),
    /// ACDC circuit discovery on a built-in task or a prompt file (--prompts), next to EAP and EAP-IG: writes
    /// OUT/circuit.json (kept edges, nodes, faithfulness), OUT/acdc_edges.csv, edge scores
    /// (OUT/eap_scores.csv, OUT/eap_ig_scores.csv) and faithfulness curves (CSV, SVG, PNG).
    Acdc(circuit::AcdcArgs),
    /// EAP and EAP-IG edge scores on a built-in task or a prompt file (--prompts), with faithfulness curves of their top-k
    /// circuits: OUT/eap_scores.csv, OUT/eap_ig_scores.csv, OUT/faithfulness.{csv,svg,png}.
    Eap(circuit::EapArgs),
    /// Circuit discovery against known circuits: EAP, EAP-IG and ACDC on each InterpBench case
    /// folder (ll_model.pth, ll_model_cfg.pkl, edges.pkl; prompts.jsonl or --prompts), scored by
    /// edge and node AUROC against the true circuit and MIB's CPR and CMD. Writes
    /// OUT/benchmark.{parquet,csv}, OUT/report.html and per case its scores, circuits and
    /// faithfulness curves.
    Benchmark(circuit::BenchmarkArgs),
    /// Routing of a mixture of experts trained on the built-in tasks (default: models/tasks-moe):
    /// the share of routing choices each expert gets per task and layer and over all tasks (the
    /// load), the tokens most often sent to each expert, and each task's score change with each
    /// expert ablated. Writes OUT/routing.{parquet,csv}, OUT/routing_tokens.{parquet,csv},
    /// heatmaps OUT/routing_usage.{svg,png} and OUT/routing_ablation.{svg,png}, OUT/report.html.
    Routing(circuit::RoutingArgs),
    /// Writes a built-in task's clean/corrupted pairs as a JSONL prompt file (token ids, answer,
    /// wrong, label): the format --prompts reads, giving the same numbers as --task.
    Prompts(circuit::PromptsArgs),
    /// Bilinear-MLP eigendecomposition: for output directions (unembeddings of --tokens), the
    /// interaction matrix Q(u) over blocks.L.ln2.hook_normalized, its eigenvalues (OUT/spectra.{svg,png}),
    /// the tokens its top eigenvectors favour and disfavour (OUT/eigenvectors.csv), and modular-addition
    /// accuracy with each answer logit's MLP term truncated to k eigenpairs (OUT/truncation.{csv,svg,png}).
    Bilinear(features::BilinearArgs),
    /// Attribution graph of a prompt through transcoders that replace every MLP: direct effects
    /// between active features, transcoder errors, token embeddings and top logits in a linearised
    /// replacement model, pruned by influence; features and errors at position 0 are left out, as
    /// circuit-tracer does (--keep-position-0 keeps them). Writes what circuit-tracer's viewer
    /// reads (OUT/SLUG.json, OUT/graph-metadata.json, which collects every graph written to OUT,
    /// and OUT/features/*.json for the kept features), OUT/graph.html and OUT/nodes.csv.
    Graph(features::GraphArgs),
    /// Why a head attends where it does, on any model: its score from a query position to a key
    /// position split exactly into pairs of sources (the embedding, every earlier head's output,
    /// every earlier MLP's output, or with --transcoders each transcoder's active features and its
    /// error), norm scales frozen as in attribution graphs. Prints the top pairs and each side's
    /// sources by their total; writes OUT/qk.json, OUT/qk_pairs.csv (every pair),
    /// OUT/qk_query_sources.csv and OUT/qk_key_sources.csv, and OUT/report.html.
    Qk(features::QkArgs),
    /// The main job (also `interp` alone): one HTML report of every analysis that applies to each
    /// model (default: the built-in text model and the two task models): model card and logit
    /// lens, SAE and transcoder dashboards, a transcoder attribution graph, causal tracing on
    /// facts, ACDC and EAP-IG circuits of IOI and greater-than, bilinear-MLP spectra, the routing
    /// of a mixture of experts. Writes OUT/report.html and,
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

fn load(args: &ModelArgs) -> Result<HookedTransformer> {
    let kind = match args.dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    };
    Ok(HookedTransformer::from_pretrained_dir(&args.model_dir, args.device.get(), kind)?)
}

/// What a GGUF file holds beyond the config: its tensor types and count, and its metadata (arrays
/// such as the vocabulary by their length).
fn inspect_gguf(file: &interp::interp_core::gguf::GgufFile) {
    println!("GGUF file      {} (version {})", file.path().display(), file.version);
    let types: Vec<String> = file.type_counts().iter().map(|(t, n)| format!("{n} {}", t.name())).collect();
    println!("tensors        {} ({})", file.tensors.len(), types.join(", "));
    println!("metadata       {} keys", file.metadata.len());
    for (key, value) in &file.metadata {
        println!("  {key:<40} {}", value.summary());
    }
}

fn inspect(model: &HookedTransformer) {
    let c = &model.cfg;
    println!("model_type     {} ({:?})", c.model_type, c.family);
    println!("layers         {}", c.n_layers);
    println!("d_model        {}", c.d_model);
    println!("heads          {} (kv heads {}), d_head {}", c.n_heads, c.n_kv_heads, c.d_head);
    println!("d_mlp          {} ({:?}{})", c.d_mlp, c.act, if c.gated_mlp { ", gated" } else { "" });
    if let Some(m) = &c.moe {
        let layers = (0..c.n_layers).filter(|l| c.is_moe_layer(*l)).count();
        let shared = m.d_shared_expert.map_or(String::new(), |d| format!(", a shared expert of {d} units"));
        let norm = if m.norm_topk_prob { "renormalised" } else { "as they are" };
        println!(
            "experts        {} of {} experts x {} units per token in {layers} of {} layers, weights {norm}{shared}",
            m.top_k, m.n_experts, m.d_expert, c.n_layers
        );
    }
    match c.d_vocab_out == c.d_vocab {
        true => println!("vocab          {}", c.d_vocab),
        false => println!("vocab          {} in, {} out", c.d_vocab, c.d_vocab_out),
    }
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

fn cache(model: &HookedTransformer, ids_file: Option<&Path>, text: Option<&str>, out: &Path, hooks: &[String], logits: bool) -> Result<()> {
    let ids = match (ids_file, text) {
        (Some(path), _) => {
            let tensors = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
            let (_, ids) = tensors.into_iter().find(|(n, _)| n == "input_ids").with_context(|| format!("{} has no tensor `input_ids`", path.display()))?;
            ids
        }
        (None, Some(text)) => model.to_tokens(text, true)?,
        (None, None) => bail!("give --ids-file or --text"),
    };
    let filter = if hooks.is_empty() { NamesFilter::All } else { NamesFilter::names(hooks) };
    let spec = CacheSpec::new(filter).dtype(Kind::Float).device(Device::Cpu);
    let (output, cache) = model.run_with_cache(&ids.to_device(model.device()), spec)?;
    let mut named: Vec<(String, Tensor)> = cache.iter().map(|(n, t)| (n, t.contiguous())).collect();
    if logits {
        named.push(("logits".into(), output.to_kind(Kind::Float).to_device(Device::Cpu).contiguous()));
    }
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
    let (labels, probs) = interp::report::lens_probabilities(&model, &tokens, false)?;
    let probs = probs.select(2, -1).select(1, 0); // [n, vocab]
    println!("logit lens at the last position (final prediction {:?}):", model.to_string(&Tensor::from_slice(&[final_top]))?);
    println!("  {:<12} {:<16} {:>8} {:>14}", "residual", "top token", "p(top)", "p(final top)");
    for (i, label) in labels.iter().enumerate() {
        let row = probs.get(i as i64);
        let top = row.argmax(-1, false).int64_value(&[]);
        let tok = model.to_string(&Tensor::from_slice(&[top]))?;
        println!("  {:<12} {:<16} {:>8.4} {:>14.4}", label, format!("{tok:?}"), row.double_value(&[top]), row.double_value(&[final_top]));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Inspect { model }) => {
            if let Some(file) = interp::interp_core::gguf::find(&model.model_dir)? {
                inspect_gguf(&interp::interp_core::gguf::GgufFile::open(file)?);
            }
            inspect(&load(&model)?)
        }
        Some(Command::Convert { model, out }) => {
            load(&model)?.save_pretrained(&out)?;
            println!("wrote {}", out.display());
        }
        Some(Command::Cache { model, ids_file, text, out, hooks, no_logits }) => {
            cache(&load(&model)?, ids_file.as_deref(), text.as_deref(), &out, &hooks, !no_logits)?
        }
        Some(Command::Train(args)) => train::train(&args)?,
        Some(Command::Sae(cmd)) => sae::run(cmd)?,
        Some(Command::Patch(args)) => circuit::patch(&args)?,
        Some(Command::Trace(args)) => circuit::trace(&args.task, &args.config(), args.max_memory)?,
        Some(Command::Study(args)) => circuit::study(&args)?,
        Some(Command::Acdc(args)) => circuit::discover(&args.eap, args.config(), "ACDC and EAP-IG")?,
        Some(Command::Eap(args)) => circuit::discover(&args, args.config(), "EAP and EAP-IG")?,
        Some(Command::Benchmark(args)) => circuit::benchmark(&args)?,
        Some(Command::Prompts(args)) => circuit::export_prompts(&args)?,
        Some(Command::Routing(args)) => standalone(&args.out, "Mixture-of-experts routing", |out| circuit::routing(&args, out))?,
        Some(Command::Bilinear(args)) => standalone(&args.out, "Bilinear MLP", |out| features::run_bilinear(&args, out))?,
        Some(Command::Graph(args)) => standalone(&args.out, "Attribution graph", |out| features::run_graph(&args, out))?,
        Some(Command::Qk(args)) => standalone(&args.out, "QK attribution", |out| features::run_qk(&args, out))?,
        Some(Command::Report(args)) => report::run(&args)?,
        Some(Command::Summary { model_dir, text }) => summary(model_dir.as_deref().unwrap_or(Path::new(DEFAULT_MODEL)), &text)?,
        None => return run(Cli::parse_from(["interp", "report"])),
    }
    Ok(())
}

fn main() -> ExitCode {
    // Piped into `head`, stop quietly as Unix tools do (Rust ignores SIGPIPE, so a print to the
    // closed pipe would panic).
    // SAFETY: restoring a signal's default action before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
