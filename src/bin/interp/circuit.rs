//! `interp patch | trace | acdc | eap | prompts | benchmark`: circuit analysis on the built-in tasks or a prompt file. The analyses are
//! `report::analysis`; this file maps flags onto their configs (whose `Default`s are the flags'
//! defaults) and prints a summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use interp::circuits::{trace_prompts_from_jsonl, Ablation, MemoryBudget, MetricName, PatchSite, TaskPrompts};
use interp::report::analysis::{
    benchmark_case, causal_tracing, circuit_discovery, patching_sweep, routing_analysis, summary_table, task_trace_prompts, CausalTracingConfig,
    CircuitDiscoveryConfig, PatchingSweepConfig, RoutingConfig, StudyConfig,
};
use interp::report::Output;

use super::standalone;
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer};
use tch::Kind;

/// The model the circuit commands run on when none is given: the committed task model.
pub const TASK_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tasks-bilinear");

/// The committed mixture of experts trained on the tasks (`interp routing`'s default).
pub const MOE_TASK_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tasks-moe");

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskName {
    Ioi,
    GreaterThan,
    Facts,
    ModularAddition,
    Induction,
}

impl TaskName {
    pub fn task(self) -> Task {
        match self {
            TaskName::Ioi => Task::Ioi,
            TaskName::GreaterThan => Task::GreaterThan,
            TaskName::Facts => Task::Facts,
            TaskName::ModularAddition => Task::ModularAddition,
            TaskName::Induction => Task::Induction { half: 12 },
        }
    }
}

#[derive(clap::Args)]
pub struct TaskArgs {
    /// Checkpoint directory (default: models/tasks-bilinear). With --task it must be a model
    /// trained on the built-in tasks; with --prompts, any supported model.
    pub model_dir: Option<PathBuf>,
    /// Built-in task whose clean and corrupted prompts are compared (default: ioi).
    #[arg(long, value_enum, conflicts_with = "prompts")]
    pub task: Option<TaskName>,
    /// JSONL prompt file, one pair per line: `clean`, `corrupted` (text) or `clean_ids`,
    /// `corrupted_ids`; `answer`, optional `wrong` and `label` (`interp prompts` writes one; for
    /// `trace`: `prompt`, `subject`, `answer`, `label`).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Metric (default: the task's; for a file, logit-diff when every line has one answer and one
    /// wrong token, prob-diff when lines have wrong tokens, else prob).
    #[arg(long, value_enum)]
    pub metric: Option<MetricName>,
    /// Number of prompts of a built-in task.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Seed of the built-in task's prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

impl TaskArgs {
    fn task(&self) -> Task {
        self.task.unwrap_or(TaskName::Ioi).task()
    }

    /// What the prompts are called in reports: the task, or the file's stem.
    fn name(&self) -> String {
        match &self.prompts {
            Some(path) => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "prompts".into()),
            None => self.task().name().to_string(),
        }
    }
}

/// The model, how to show its tokens, and (for pair commands) the prompt pairs.
struct Setup {
    model: HookedTransformer,
    vocab: Option<TaskVocab>,
}

impl Setup {
    fn new(args: &TaskArgs) -> Result<Setup> {
        let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(TASK_MODEL));
        let model = HookedTransformer::from_pretrained_dir(&dir, args.device.get(), Kind::Float)?;
        if args.prompts.is_some() {
            return Ok(Setup { model, vocab: None });
        }
        let vocab = TaskVocab::of_model(&model)
            .with_context(|| format!("{}: --task needs a model trained on the built-in tasks; give your own prompts with --prompts FILE", dir.display()))?;
        if args.n == 0 {
            bail!("--n must be at least 1");
        }
        Ok(Setup { model, vocab: Some(vocab) })
    }

    fn pairs(&self, args: &TaskArgs) -> Result<TaskPrompts> {
        let prompts = match (&args.prompts, &self.vocab) {
            (Some(path), _) => TaskPrompts::from_jsonl(path, &self.model)?,
            (None, Some(vocab)) => TaskPrompts::new(args.task(), vocab, args.n, args.seed)?,
            (None, None) => bail!("give --task or --prompts"),
        };
        Ok(match args.metric {
            Some(name) => prompts.with_metric(name, &self.model)?,
            None => prompts,
        })
    }

    fn token_text(&self, t: i64) -> String {
        match (&self.vocab, self.model.tokenizer()) {
            (Some(vocab), _) => vocab.word(t).to_string(),
            (None, Some(tok)) => tok.decode(&[t]).unwrap_or_else(|_| t.to_string()),
            (None, None) => t.to_string(),
        }
    }
}

/// `interp prompts`: a built-in task's pairs as a JSONL prompt file.
#[derive(clap::Args)]
pub struct PromptsArgs {
    /// Built-in task.
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Number of pairs.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The JSONL file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export_prompts(args: &PromptsArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let model = HookedTransformer::from_pretrained_dir(TASK_MODEL, tch::Device::Cpu, Kind::Float)?;
    let vocab = TaskVocab::of_model(&model)?;
    let prompts = TaskPrompts::new(args.task.task(), &vocab, args.n, args.seed)?;
    prompts.write_jsonl(&args.out)?;
    println!("wrote {} {} pairs to {} (metric {})", prompts.len(), args.task.task().name(), args.out.display(), prompts.metric.name());
    Ok(())
}

#[derive(clap::Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Sites to patch (z: each head's output; expert: each expert's output, mixtures of experts
    /// only); default: every site the model has.
    #[arg(long, value_enum, num_args = 1..)]
    pub sites: Vec<PatchSite>,
}

pub fn patch(args: &PatchArgs) -> Result<()> {
    let s = Setup::new(&args.task)?;
    let prompts = s.pairs(&args.task)?;
    let cfg = PatchingSweepConfig { sites: args.sites.clone(), ..PatchingSweepConfig::default() };
    let sweep = patching_sweep(&s.model, &prompts, &args.task.name(), &|t| s.token_text(t), &cfg)?;
    for r in &sweep.results {
        println!("{:<10} clean {:.4} corrupted {:.4} ({} forwards)", r.site.name(), r.clean, r.corrupted, r.forwards);
    }
    standalone(&args.task.out, "Activation patching", |out| Ok(sweep.write(out)?))
}

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Noise samples per prompt.
    #[arg(long, default_value_t = CausalTracingConfig::default().samples)]
    pub samples: usize,
    /// Noise standard deviation in units of sigma.
    #[arg(long, default_value_t = CausalTracingConfig::default().scale)]
    pub scale: f64,
    /// Sigma; default: the standard deviation of the prompts' token embeddings.
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Layers restored together for the MLP and attention grids.
    #[arg(long, default_value_t = CausalTracingConfig::default().window)]
    pub window: usize,
    /// Also trace with the later MLPs frozen at their corrupted outputs.
    #[arg(long)]
    pub severed: bool,
    /// Heatmaps for this many prompts.
    #[arg(long, default_value_t = CausalTracingConfig::default().charts)]
    pub charts: usize,
    /// Peak memory in GB (default: the weights plus 3 GB): restored runs per forward are sized
    /// to stay under it; too small for one prompt's noise samples is an error naming the minimum.
    #[arg(long)]
    pub max_memory: Option<f64>,
}

impl TraceArgs {
    /// The analysis config; prompt i's noise comes from the task seed + i.
    pub fn config(&self) -> CausalTracingConfig {
        let (samples, scale, sigma, window, severed, charts) = (self.samples, self.scale, self.sigma, self.window, self.severed, self.charts);
        CausalTracingConfig { samples, scale, sigma, window, severed, charts, seed: self.task.seed, ..CausalTracingConfig::default() }
    }
}

pub fn trace(task: &TaskArgs, cfg: &CausalTracingConfig, max_memory: Option<f64>) -> Result<()> {
    let s = Setup::new(task)?;
    let cfg = &CausalTracingConfig { budget: budget(max_memory, &s.model)?, ..cfg.clone() };
    let prompts = match &task.prompts {
        Some(path) => trace_prompts_from_jsonl(path, &s.model)?,
        None => task_trace_prompts(task.task(), &s.pairs(task)?)?,
    };
    let traced = causal_tracing(&s.model, &prompts, &task.name(), &|t| s.token_text(t), cfg)?;
    println!("noise: {} x sigma {:.4}, {} samples", cfg.scale, traced.sigma, cfg.samples);
    for sm in &traced.summaries {
        println!("{:<8} {} prompts, mean total effect {:.4}", sm.label, sm.n_prompts, sm.total_effect);
    }
    standalone(&task.out, "Causal tracing", |out| Ok(traced.write(out)?))
}

#[derive(clap::Args)]
pub struct StudyArgs {
    /// The model: a GGUF file or a checkpoint folder.
    pub model: PathBuf,
    /// IOI-style pair file: `clean`, `corrupted`, `answer` (the indirect object), `wrong` (the
    /// subject), `label` (the template).
    #[arg(long)]
    pub ioi: PathBuf,
    /// Facts to trace: `prompt`, `subject`, `answer`, `label`.
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// IOI pairs the circuit analyses use (the file's first ones; behaviour uses every pair).
    #[arg(long, default_value_t = StudyConfig::default().n_ioi)]
    pub n_ioi: usize,
    /// Facts traced (the file's first ones; default: all).
    #[arg(long)]
    pub n_facts: Option<usize>,
    /// Noise samples per traced fact.
    #[arg(long, default_value_t = CausalTracingConfig::default().samples)]
    pub samples: usize,
    /// EAP-IG interpolation steps.
    #[arg(long, default_value_t = CircuitDiscoveryConfig::default().steps)]
    pub steps: usize,
    /// Skip patching each head's z and each head's path into the output heads' queries (one
    /// forward per head each).
    #[arg(long)]
    pub no_head_patching: bool,
    /// Also run ACDC on the IOI pairs, stopping after this long (with a unit: 90s, 10m, 2h).
    /// Its decisions are saved in OUT/acdc_checkpoint.json as they are made: the same command
    /// again resumes where it stopped. The report says how many receivers it decided.
    #[arg(long, value_parser = parse_duration)]
    pub acdc_time_limit: Option<std::time::Duration>,
    /// Peak memory in GB (default: the weights plus 3 GB).
    #[arg(long)]
    pub max_memory: Option<f64>,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `interp study`: the whole study of one model, in one report.
pub fn study(args: &StudyArgs) -> Result<()> {
    let model = HookedTransformer::from_pretrained_dir(&args.model, args.device.get(), Kind::Float)?;
    let ioi = TaskPrompts::from_jsonl(&args.ioi, &model)?;
    let facts = match &args.facts {
        Some(path) => trace_prompts_from_jsonl(path, &model)?,
        None => Vec::new(),
    };
    let budget = budget(args.max_memory, &model)?;
    let defaults = StudyConfig::default();
    let cfg = StudyConfig {
        n_ioi: args.n_ioi,
        n_facts: args.n_facts.unwrap_or(usize::MAX),
        circuits: CircuitDiscoveryConfig {
            steps: args.steps,
            budget,
            acdc: args.acdc_time_limit.is_some(),
            tau_sweep: false,
            time_limit: args.acdc_time_limit,
            checkpoint: Some(args.out.join("acdc_checkpoint.json")),
            ..defaults.circuits
        },
        tracing: CausalTracingConfig { samples: args.samples, budget, ..defaults.tracing },
        patch_heads: !args.no_head_patching,
    };
    let setup = Setup { model, vocab: None };
    let title = format!("Study of {}", args.model.file_name().map_or(args.model.display().to_string(), |n| n.to_string_lossy().into_owned()));
    standalone(&args.out, &title, |out| {
        for s in interp::report::analysis::study(&setup.model, &ioi, &facts, &|t| setup.token_text(t), &cfg, out)? {
            println!("{:<70} {:>8.1} s  peak RSS {:.2} GB", s.name, s.seconds, s.peak_gb);
        }
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct EapArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Also write each method's edge scores in MIB's submission layout under this folder
    /// (DIR/<method>/<prompts>_<model>/importances.json).
    #[arg(long)]
    pub export_mib: Option<PathBuf>,
    /// Torch threads.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// The settings every circuit-discovery command shares.
#[derive(clap::Args)]
pub struct DiscoveryArgs {
    /// What an ablated edge carries.
    #[arg(long, value_enum, default_value_t = CircuitDiscoveryConfig::default().ablation)]
    pub ablation: Ablation,
    /// EAP-IG interpolation steps.
    #[arg(long, default_value_t = CircuitDiscoveryConfig::default().steps)]
    pub steps: usize,
    /// Peak memory in GB (default: the weights plus 3 GB): prompts and edge sets per forward
    /// are chunked to stay under it; too small for one prompt is an error naming the minimum.
    #[arg(long)]
    pub max_memory: Option<f64>,
}

impl DiscoveryArgs {
    /// The defaults with these settings, the budget sized for `model`.
    fn config(&self, model: &HookedTransformer) -> Result<CircuitDiscoveryConfig> {
        Ok(CircuitDiscoveryConfig { ablation: self.ablation, steps: self.steps, budget: budget(self.max_memory, model)?, ..CircuitDiscoveryConfig::default() })
    }
}

/// ACDC's threshold, as `interp acdc` and `interp benchmark` take it.
#[derive(clap::Args)]
pub struct ThresholdArgs {
    /// Keep an edge if removing it worsens the metric by tau or more (default: 1.5% of the
    /// clean - corrupted gap of the prompts, each case's own in a benchmark).
    #[arg(long)]
    pub tau: Option<f64>,
    /// Prune by KL divergence to the clean output instead of the task metric.
    #[arg(long)]
    pub kl: bool,
}

#[derive(clap::Args)]
pub struct AcdcArgs {
    #[command(flatten)]
    pub eap: EapArgs,
    #[command(flatten)]
    pub threshold: ThresholdArgs,
    /// ACDC alone at one tau: no EAP, EAP-IG or runs at tau x 1/4, 1/2, 2 and 4.
    #[arg(long)]
    pub only: bool,
    /// Candidate removals per forward (default: 1 on a CPU, 16 on a GPU).
    #[arg(long)]
    pub variants: Option<usize>,
    /// Save ACDC's decisions to this file as they are made; rerunning with the same file
    /// resumes an interrupted run.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Stop ACDC after this long, with a unit: 90s, 5m, 1.5h (it stops within one forward of
    /// the limit; resume with the same --checkpoint).
    #[arg(long, value_parser = parse_duration)]
    pub time_limit: Option<std::time::Duration>,
    /// Approximate, opt-in: remove untested every edge whose |EAP-IG score| is below this
    /// fraction of tau (one extra forward per receiver re-measures the circuit). Not ACDC's exact
    /// decisions: see the README for its agreement with exact ACDC; not with --kl.
    #[arg(long)]
    pub prune_by_attribution: Option<f64>,
}

impl EapArgs {
    /// What `interp eap` runs: EAP and EAP-IG, with a progress bar.
    pub fn config(&self) -> CircuitDiscoveryConfig {
        CircuitDiscoveryConfig { acdc: false, progress: true, ..CircuitDiscoveryConfig::default() }
    }
}

impl AcdcArgs {
    pub fn config(&self) -> CircuitDiscoveryConfig {
        CircuitDiscoveryConfig {
            acdc: true,
            attribution: !self.only,
            tau_sweep: !self.only,
            tau: self.threshold.tau,
            kl: self.threshold.kl,
            max_variants: self.variants,
            checkpoint: self.checkpoint.clone(),
            time_limit: self.time_limit,
            prune_by_attribution: self.prune_by_attribution,
            ..self.eap.config()
        }
    }
}

/// EAP and EAP-IG edge scores with faithfulness curves of their top-k circuits, the EAP-IG
/// circuit drawn; with `cfg.acdc` also ACDC at tau x 1/4 .. 4, its circuit drawn.
pub fn discover(args: &EapArgs, mut cfg: CircuitDiscoveryConfig, title: &str) -> Result<()> {
    let task = &args.task;
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    if let Some(dir) = &args.export_mib {
        if dir.exists() && !dir.is_dir() {
            bail!("--export-mib {}: not a folder", dir.display());
        }
    }
    let s = Setup::new(task)?;
    let shared = args.discovery.config(&s.model)?;
    (cfg.ablation, cfg.steps, cfg.budget) = (shared.ablation, shared.steps, shared.budget);
    let prompts = s.pairs(task)?;
    let found = circuit_discovery(&s.model, &prompts, &task.name(), &cfg)?;
    println!("{} edges; {} clean {:.4}, corrupted {:.4}", found.graph.n_edges(), found.metric, found.clean, found.corrupted);
    let mid = found.counts.len() / 2;
    for m in &found.methods {
        println!("{:<10} scores in {:.2}s; faithfulness at {} edges {:.3}", m.method.name(), m.seconds, found.counts[mid], m.faithfulness[mid]);
    }
    if let Some(a) = &found.acdc {
        let r = &a.result;
        let done = if r.finished(&found.graph) {
            String::new()
        } else {
            format!(
                " (stopped at the time limit: {} of {} receivers decided, {} tests into the next; rerun with the same --checkpoint to resume)",
                r.receivers_done,
                found.graph.receivers.len(),
                r.tested_in_receiver
            )
        };
        // Small thresholds (a tiny metric gap) in scientific notation, not as 0.0000.
        let tau = if a.tau >= 1e-3 { format!("{:.4}", a.tau) } else { format!("{:.3e}", a.tau) };
        println!(
            "ACDC tau {tau}: {} of {} edges kept, faithfulness {:.3}; {} forwards, {:.0} full-forward equivalents, {:.1}s; {}{done}",
            r.n_kept(),
            found.graph.n_edges(),
            a.faithfulness,
            r.n_forwards,
            r.forward_equivalents,
            a.seconds,
            a.strategy
        );
    }
    for (method, mib) in found.mib_scores() {
        println!("{method:<10} MIB CPR {:.3}  CMD {:.3}", mib.cpr, mib.cmd);
    }
    if let Some(dir) = &args.export_mib {
        // MIB's name for a model it benchmarks, else the folder's (or file's) name.
        let model_name = match circuits::mib_model_name(&s.model.cfg) {
            Some(name) => name.to_string(),
            None => task.model_dir.as_ref().and_then(|d| d.file_stem()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tasks-bilinear".into()),
        };
        for path in found.export_mib(dir, &s.model, &model_name)? {
            println!("wrote {}", path.display());
        }
    }
    standalone(&task.out, title, |out| Ok(found.write(out)?))
}

/// A duration with its unit: `90s`, `5m`, `1.5h`.
fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let (number, unit) = text.trim().split_at(text.trim().find(|c: char| c.is_alphabetic()).unwrap_or(text.trim().len()));
    let seconds = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{text}` has no unit: write 300s, 5m or 2h")),
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use s, m or h")),
    };
    match number.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(std::time::Duration::from_secs_f64(x * seconds)),
        _ => Err(format!("`{text}` is not a duration: write 300s, 5m or 2h")),
    }
}

/// `--max-memory` (GB of peak memory) as a budget for `model`; the default without it.
fn budget(max_memory: Option<f64>, model: &HookedTransformer) -> Result<MemoryBudget> {
    Ok(match max_memory {
        Some(gb) if !(gb.is_finite() && gb > 0.0) => bail!("--max-memory must be a positive number of GB, found {gb}"),
        Some(gb) => MemoryBudget::for_peak((gb * 1e9) as u64, model)?,
        None => MemoryBudget::DEFAULT,
    })
}

/// `interp benchmark`: circuit discovery scored against known circuits.
#[derive(clap::Args)]
pub struct BenchmarkArgs {
    /// InterpBench case folders (ll_model.pth, ll_model_cfg.pkl, edges.pkl, meta.json, and the
    /// prompts as prompts.jsonl unless --prompts gives them), or folders of such folders.
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
    /// JSONL prompt file for cases without their own prompts.jsonl (InterpBench publishes none).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub threshold: ThresholdArgs,
    /// Output directory (created): OUT/benchmark.{parquet,csv}, OUT/report.html and a folder per case.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// Case folders under `paths`: each path that has `edges.pkl`, else its subfolders that do.
fn case_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut cases = Vec::new();
    for path in paths {
        if !path.is_dir() {
            bail!("{}: not a folder", path.display());
        }
        if path.join("edges.pkl").exists() {
            cases.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("edges.pkl").exists())
            .collect();
        if found.is_empty() {
            bail!("{}: no InterpBench case here (a folder with edges.pkl, ll_model.pth and ll_model_cfg.pkl, or folders of them)", path.display());
        }
        found.sort();
        cases.extend(found);
    }
    Ok(cases)
}

/// Runs EAP, EAP-IG and ACDC on every case and tabulates edge and node AUROC, CPR and CMD.
pub fn benchmark(args: &BenchmarkArgs) -> Result<()> {
    let cases = case_folders(&args.cases)?;
    let mut results = Vec::new();
    let mut out = interp::report::Output::new(&args.out, "Circuit discovery against known circuits")?;
    for dir in &cases {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "case".into());
        let model = HookedTransformer::from_pretrained_dir(dir, args.device.get(), Kind::Float).with_context(|| format!("case {}", dir.display()))?;
        let prompts = case_prompts(dir, args.prompts.as_deref(), &model)?;
        let cfg = CircuitDiscoveryConfig { tau: args.threshold.tau, kl: args.threshold.kl, tau_sweep: false, ..args.discovery.config(&model)? };
        println!("case {name}: {} prompts", prompts.clean.size()[0]);
        let result = benchmark_case(dir, &name, &model, &prompts, &cfg).with_context(|| format!("case {}", dir.display()))?;
        for s in &result.scores {
            println!("  {:<10} edge AUROC {:.3}  node AUROC {:.3}  CPR {:.3}  CMD {:.3}", s.method, s.edge_auroc, s.node_auroc, s.cpr, s.cmd);
        }
        let mut part = interp::report::Output::nested(&args.out, &name, "")?;
        result.write(&mut part)?;
        results.push((result, part.report));
    }
    out.report.paragraph(
        "Each method's edge scores against the case's true circuit, at InterpBench's granularity: edge AUROC over head-level edges \
         (a sender's edges into a head's q, k and v inputs merged, with the largest |score|; the truth promoted to whole heads alike; \
         ACDC ranked by its decisions, kept edges first), node AUROC over heads and MLPs (a node's score is the largest |score| of the \
         edges touching it), and MIB's CPR (higher is better) and CMD (lower is better) over every edge.",
    );
    let table = summary_table(results.iter().map(|(r, _)| r));
    out.table("benchmark", "every case and method", &table)?;
    for (_, report) in results {
        out.report.append(report);
    }
    out.write_report()?;
    Ok(())
}

/// A case's prompts: its own prompts.jsonl, else `fallback`.
fn case_prompts(dir: &Path, fallback: Option<&Path>, model: &HookedTransformer) -> Result<TaskPrompts> {
    let own = dir.join("prompts.jsonl");
    let path = match (own.exists(), fallback) {
        (true, _) => own.as_path(),
        (false, Some(path)) => path,
        (false, None) => bail!("{}: no prompts.jsonl in the case folder; give a prompt file with --prompts", dir.display()),
    };
    Ok(TaskPrompts::from_jsonl(path, model)?)
}

#[derive(clap::Args)]
pub struct RoutingArgs {
    /// Checkpoint of a mixture of experts trained on the built-in tasks (default:
    /// models/tasks-moe).
    pub model_dir: Option<PathBuf>,
    /// Prompts per task.
    #[arg(long, default_value_t = RoutingConfig::default().n)]
    pub n: usize,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `interp routing`: which experts each task and token uses, and each expert's ablation effect.
pub fn routing(args: &RoutingArgs, out: &mut Output) -> Result<()> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(MOE_TASK_MODEL));
    let model = HookedTransformer::from_pretrained_dir(&dir, args.device.get(), Kind::Float)?;
    let vocab = TaskVocab::of_model(&model)?;
    let found = routing_analysis(&model, &vocab, &RoutingConfig { n: args.n, ..RoutingConfig::default() })?;
    for (task, score) in found.tasks.iter().zip(&found.scores) {
        println!("{task:18} score {score:.3}");
    }
    found.write(out)?;
    Ok(())
}
