//! `interp report`: the main job, `report::run`; this file maps flags onto its config.

use std::path::PathBuf;

use anyhow::Result;
use interp::report::ReportConfig;

use super::circuit;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Checkpoint directories (default: models/shakespeare-gpt2, models/tasks-bilinear and
    /// models/tasks-moe).
    pub models: Vec<PathBuf>,
    /// Output folder: report.html, and a subfolder of tables, charts and JSON per model.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// Prompt for the logit lens and the attribution graph of text models.
    #[arg(long, default_value = super::DEFAULT_PROMPT)]
    pub prompt: String,
    /// Prompts per task for causal tracing and circuit discovery.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// A JSONL prompt file (see `interp eap --help`): every model it fits also gets EAP, EAP-IG,
    /// MIB scores and ACDC on these pairs.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Latents per dictionary shown as dashboards (readable ones: firing on about 0.3% of tokens).
    #[arg(long, default_value_t = 3)]
    pub latents: usize,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        vec![PathBuf::from(super::DEFAULT_MODEL), PathBuf::from(circuit::TASK_MODEL), PathBuf::from(circuit::MOE_TASK_MODEL)]
    } else {
        args.models.clone()
    };
    let cfg = ReportConfig {
        models,
        out: args.out.clone(),
        prompt: args.prompt.clone(),
        n: args.n,
        prompts: args.prompts.clone(),
        latents: args.latents,
        device: args.device.get(),
    };
    Ok(interp::report::run(&cfg)?)
}
