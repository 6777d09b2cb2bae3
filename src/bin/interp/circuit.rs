//! `interp patch | trace | acdc | eap`: circuit analysis on the built-in tasks. The analyses are
//! `circuits::analysis`; this file maps flags onto their configs (whose `Default`s are the flags'
//! defaults) and prints a summary.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use interp::circuits::analysis::{
    causal_tracing, circuit_discovery, patching_sweep, task_trace_prompts, CausalTracingConfig, CircuitDiscoveryConfig, PatchingSweepConfig,
};
use interp::circuits::{Ablation, Output, PatchSite, TaskPrompts};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer};
use tch::Kind;

/// The model the circuit commands run on when none is given: the committed task model.
pub const TASK_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tasks-bilinear");

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
    /// Checkpoint directory of a model trained on the built-in tasks (default: models/tasks-bilinear).
    pub model_dir: Option<PathBuf>,
    /// Built-in task whose clean and corrupted prompts are compared.
    #[arg(long, value_enum, default_value = "ioi")]
    pub task: TaskName,
    /// Number of prompts.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

struct Setup {
    model: HookedTransformer,
    vocab: TaskVocab,
    prompts: TaskPrompts,
}

fn setup(args: &TaskArgs) -> Result<Setup> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(TASK_MODEL));
    let model = HookedTransformer::from_pretrained_dir(&dir, args.device.get(), Kind::Float)?;
    let vocab = TaskVocab::of_model(&model).with_context(|| format!("{}: these commands need a model trained on the built-in tasks", dir.display()))?;
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let prompts = TaskPrompts::new(args.task.task(), &vocab, args.n, args.seed)?;
    Ok(Setup { model, vocab, prompts })
}

#[derive(clap::Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Sites to patch (z: each head's output); default: every site the model has.
    #[arg(long, value_enum, num_args = 1..)]
    pub sites: Vec<PatchSite>,
}

pub fn patch(args: &PatchArgs, out: &mut Output) -> Result<()> {
    let s = setup(&args.task)?;
    let cfg = PatchingSweepConfig { sites: args.sites.clone(), ..PatchingSweepConfig::default() };
    let sweep = patching_sweep(&s.model, &s.prompts, Task::name(args.task.task.task()), &|t| s.vocab.word(t).to_string(), &cfg)?;
    for r in &sweep.results {
        println!("{:<10} clean {:.4} corrupted {:.4} ({} forwards)", r.site.name(), r.clean, r.corrupted, r.forwards);
    }
    Ok(sweep.write(out)?)
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
}

impl TraceArgs {
    /// The analysis config; prompt i's noise comes from the task seed + i.
    pub fn config(&self) -> CausalTracingConfig {
        let (samples, scale, sigma, window, severed, charts) = (self.samples, self.scale, self.sigma, self.window, self.severed, self.charts);
        CausalTracingConfig { samples, scale, sigma, window, severed, charts, seed: self.task.seed, ..CausalTracingConfig::default() }
    }
}

pub fn trace(task: &TaskArgs, cfg: &CausalTracingConfig, out: &mut Output) -> Result<()> {
    let s = setup(task)?;
    let name = Task::name(task.task.task());
    let prompts = task_trace_prompts(task.task.task(), &s.prompts)?;
    let traced = causal_tracing(&s.model, &prompts, name, &|t| s.vocab.word(t).to_string(), cfg)?;
    println!("noise: {} x sigma {:.4}, {} samples", cfg.scale, traced.sigma, cfg.samples);
    for sm in &traced.summaries {
        println!("{:<8} {} prompts, mean total effect {:.4}", sm.label, sm.n_prompts, sm.total_effect);
    }
    Ok(traced.write(out)?)
}

#[derive(clap::Args)]
pub struct EapArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// What an ablated edge carries.
    #[arg(long, value_enum, default_value_t = CircuitDiscoveryConfig::default().ablation)]
    pub ablation: Ablation,
    /// EAP-IG interpolation steps.
    #[arg(long, default_value_t = CircuitDiscoveryConfig::default().steps)]
    pub steps: usize,
}

#[derive(clap::Args)]
pub struct AcdcArgs {
    #[command(flatten)]
    pub eap: EapArgs,
    /// Keep an edge if removing it worsens the metric by tau or more (default: 1.5% of the
    /// clean - corrupted gap). The curve also runs tau x 1/4, 1/2, 2 and 4.
    #[arg(long)]
    pub tau: Option<f64>,
    /// Prune by KL divergence to the clean output instead of the task metric.
    #[arg(long)]
    pub kl: bool,
}

impl EapArgs {
    pub fn config(&self) -> CircuitDiscoveryConfig {
        CircuitDiscoveryConfig { ablation: self.ablation, steps: self.steps, acdc: false, ..CircuitDiscoveryConfig::default() }
    }
}

impl AcdcArgs {
    pub fn config(&self) -> CircuitDiscoveryConfig {
        CircuitDiscoveryConfig { acdc: true, tau: self.tau, kl: self.kl, ..self.eap.config() }
    }
}

/// EAP and EAP-IG edge scores with faithfulness curves of their top-k circuits, the EAP-IG
/// circuit drawn; with `cfg.acdc` also ACDC at tau x 1/4 .. 4, its circuit drawn.
pub fn discover(task: &TaskArgs, cfg: &CircuitDiscoveryConfig, out: &mut Output) -> Result<()> {
    let s = setup(task)?;
    let found = circuit_discovery(&s.model, &s.prompts, Task::name(task.task.task()), cfg)?;
    println!("{} edges; {} clean {:.4}, corrupted {:.4}", found.graph.n_edges(), found.metric, found.clean, found.corrupted);
    let mid = found.counts.len() / 2;
    for m in &found.methods {
        println!("{:<10} scores in {:.2}s; faithfulness at {} edges {:.3}", m.method.name(), m.seconds, found.counts[mid], m.faithfulness[mid]);
    }
    if let Some(a) = &found.acdc {
        let r = &a.result;
        println!(
            "ACDC tau {:.4}: {} of {} edges kept, faithfulness {:.3} ({} forwards, {} edge sets)",
            a.tau,
            r.n_kept(),
            found.graph.n_edges(),
            a.faithfulness,
            r.n_forwards,
            r.n_variants
        );
    }
    Ok(found.write(out)?)
}
