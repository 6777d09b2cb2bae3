//! Causal tracing (ROME) of a set of prompts, with traces per prompt, average indirect effects per
//! label and token role, tables and heatmaps.

use interp_core::tasks::Task;
use interp_core::HookedTransformer;
use tch::{Kind, Tensor};

use crate::chart::{heatmaps, Heatmap};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;
use circuits::budget::MemoryBudget;
use circuits::causal_tracing::{
    causal_trace, estimate_sigma_of, summarize, token_role, CausalTrace, Corruption, TraceConfig, TracePrompt, TraceSummary, TOKEN_ROLES,
};
use circuits::prompts::TaskPrompts;

/// How [`causal_tracing`] corrupts and restores.
#[derive(Clone, Debug)]
pub struct CausalTracingConfig {
    /// Noise samples per prompt.
    pub samples: usize,
    /// Noise standard deviation in units of sigma (ROME: 3).
    pub scale: f64,
    /// Sigma; `None`: the standard deviation of the prompts' token embeddings.
    pub sigma: Option<f64>,
    /// Layers restored together for the MLP and attention grids (ROME: 10).
    pub window: usize,
    /// Also trace with the later MLPs frozen at their corrupted outputs.
    pub severed: bool,
    /// Heatmaps for this many prompts.
    pub charts: usize,
    /// Prompt `i`'s noise is drawn from `seed + i`.
    pub seed: u64,
    /// Working memory beyond the weights: restored runs per forward are sized to fit.
    pub budget: MemoryBudget,
}

impl Default for CausalTracingConfig {
    fn default() -> Self {
        CausalTracingConfig { samples: 10, scale: 3.0, sigma: None, window: 10, severed: false, charts: 4, seed: 0, budget: MemoryBudget::DEFAULT }
    }
}

/// Every prompt's trace and the average indirect effects per label.
pub struct CausalTracing {
    /// What the prompts are (a task name, a file name).
    pub name: String,
    /// The config it ran with.
    pub config: CausalTracingConfig,
    /// The noise level used.
    pub sigma: f64,
    /// Layers of the model traced.
    pub n_layers: usize,
    /// One trace per prompt, in order.
    pub traces: Vec<CausalTrace>,
    /// Each traced prompt's tokens as text, for the charts.
    pub words: Vec<Vec<String>>,
    /// Average indirect effects per label, labels in order of first appearance.
    pub summaries: Vec<TraceSummary>,
}

/// The prompts of a built-in task with a subject: facts (the three subject tokens after BOS) and
/// modular addition (the first operand).
pub fn task_trace_prompts(task: Task, prompts: &TaskPrompts) -> Result<Vec<TracePrompt>> {
    let subject = match task {
        Task::Facts => 1..4,
        Task::ModularAddition => 1..2,
        _ => {
            return Err(Error::Input(
                "causal tracing needs prompts with a subject: use the facts task (or modular-addition, whose first operand is the subject)".into(),
            ))
        }
    };
    let answers = Vec::<i64>::try_from(&prompts.answer()?)?;
    (0..prompts.clean.size()[0])
        .map(|i| {
            let tokens = Vec::<i64>::try_from(&prompts.clean.f_get(i)?)?;
            let subj = tokens.get(subject.clone()).ok_or_else(|| Error::Input(format!("prompt {i} is too short for its subject")))?.to_vec();
            Ok(TracePrompt::new(tokens, &subj, answers[i as usize], prompts.labels[i as usize].clone())?)
        })
        .collect()
}

/// Traces each prompt (see [`causal_trace`]) with Gaussian noise on its subject; `token_text`
/// renders token ids for the charts.
pub fn causal_tracing(
    model: &HookedTransformer,
    prompts: &[TracePrompt],
    name: &str,
    token_text: &dyn Fn(i64) -> String,
    cfg: &CausalTracingConfig,
) -> Result<CausalTracing> {
    let sigma = match cfg.sigma {
        Some(s) => s,
        None => estimate_sigma_of(model, prompts)?,
    };
    let bar = interp_core::train::progress_bar(prompts.len() as u64, "prompts", true);
    let mut traces = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let samples = cfg.samples.max(1) as i64;
        let (fixed, per_variant) = MemoryBudget::trace_costs(model, prompt.tokens.len() as i64, samples);
        let what = format!("causal tracing of prompt {i} ({} tokens, {samples} noise samples)", prompt.tokens.len());
        let trace_cfg = TraceConfig {
            corruption: Corruption::Noise { sigma, scale: cfg.scale, samples: cfg.samples, seed: cfg.seed + i as u64 },
            window: cfg.window,
            severed_mlp: cfg.severed,
            max_rows: samples * cfg.budget.rows(fixed, per_variant, &what)?,
        };
        traces.push(causal_trace(model, prompt, &trace_cfg)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summaries = summarize(&traces)?;
    let words = prompts.iter().take(cfg.charts).map(|p| p.tokens.iter().map(|t| token_text(*t)).collect()).collect();
    Ok(CausalTracing { name: name.to_string(), config: cfg.clone(), sigma, n_layers: model.cfg.n_layers, traces, words, summaries })
}

impl CausalTracing {
    /// A report section, heatmaps per charted prompt (`trace_<i>`) and per label (`aie_<label>`),
    /// `aie.parquet/csv` (average indirect effects by label, token role and layer) and
    /// `traces.parquet/csv` (every traced cell).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        let c = &self.config;
        out.report.section(&format!("Causal tracing: {}", self.name));
        out.report.paragraph(&format!(
            "ROME's causal tracing on {} prompts: Gaussian noise ({} x sigma {:.4}, {} samples) on the subject's embeddings, then the clean \
             residual (and MLP / attention outputs over a window of {} layers) restored at each (token, layer). Heatmaps show the probability \
             of the correct answer; average indirect effects (AIE) are grouped by prompt type (label) and ROME's token roles.",
            self.traces.len(),
            c.scale,
            self.sigma,
            c.samples,
            c.window
        ));
        let layers: Vec<String> = (0..self.n_layers).map(|l| format!("L{l}")).collect();
        let mut table = Table::default();
        for (i, tr) in self.traces.iter().enumerate() {
            table.extend(trace_table(tr)?)?;
            let Some(labels) = self.words.get(i) else { continue };
            let grid = |title: &str, t: &Tensor| Heatmap::from_tensor(title, t, labels.clone(), layers.clone(), "layer", "token");
            let mut panels = vec![
                grid("residual restored", &tr.resid)?,
                grid(&format!("MLP window {}", c.window), &tr.mlp)?,
                grid(&format!("attention window {}", c.window), &tr.attn)?,
            ];
            if let Some(sev) = &tr.severed_mlp {
                panels.push(grid("residual, later MLPs severed", sev)?);
            }
            let caption = format!("prompt {i} ({}): {}", tr.prompt.label, labels.join(" "));
            out.chart(&format!("trace_{i}"), &caption, |path| heatmaps(path, &panels))?;
        }
        let mut summary_table = Table::new(&["label", "n_prompts", "total_effect", "kind", "role", "layer", "aie"]);
        let roles: Vec<String> = TOKEN_ROLES.iter().map(|r| r.to_string()).collect();
        for sm in &self.summaries {
            let mut panels = Vec::new();
            for (kind, g) in [("resid", &sm.resid), ("mlp", &sm.mlp), ("attn", &sm.attn)] {
                for (role, role_name) in TOKEN_ROLES.iter().enumerate() {
                    for layer in 0..self.n_layers {
                        summary_table.push(vec![
                            sm.label.clone().into(),
                            sm.n_prompts.into(),
                            sm.total_effect.into(),
                            kind.into(),
                            (*role_name).into(),
                            layer.into(),
                            g.f_double_value(&[role as i64, layer as i64])?.into(),
                        ]);
                    }
                }
                let title = format!("AIE {kind} ({}, n={})", sm.label, sm.n_prompts);
                panels.push(Heatmap::from_tensor(&title, g, roles.clone(), layers.clone(), "layer", "token role")?);
            }
            let caption = format!("average indirect effects, {} prompts ({} of them), mean total effect {:.3}", sm.label, sm.n_prompts, sm.total_effect);
            out.chart(&format!("aie_{}", sm.label), &caption, |path| heatmaps(path, &panels))?;
        }
        out.table("aie", "average indirect effects", &summary_table)?;
        out.table("traces", "every traced cell", &table)
    }
}

/// `tr` as a table. Columns: label, kind, pos, token role, layer, probability, indirect_effect.
pub fn trace_table(tr: &CausalTrace) -> Result<Table> {
    let mut table = Table::new(&["label", "kind", "pos", "role", "layer", "probability", "indirect_effect"]);
    let mut grids = vec![("resid", &tr.resid), ("mlp", &tr.mlp), ("attn", &tr.attn)];
    if let Some(s) = &tr.severed_mlp {
        grids.push(("severed_mlp", s));
    }
    for (kind, grid) in grids {
        let size = grid.size();
        let vals = Vec::<f64>::try_from(&grid.f_reshape([-1])?.f_to_kind(Kind::Double)?)?;
        for (i, v) in vals.iter().enumerate() {
            let (pos, layer) = (i / size[1] as usize, i % size[1] as usize);
            let role = TOKEN_ROLES[token_role(&tr.prompt, pos)];
            table.push(vec![tr.prompt.label.clone().into(), kind.into(), pos.into(), role.into(), layer.into(), (*v).into(), (v - tr.p_corrupt).into()]);
        }
    }
    Ok(table)
}
