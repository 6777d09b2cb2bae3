//! A model studied end to end on an IOI-style prompt set and a set of facts: behaviour, logit
//! lens, circuits (EAP, EAP-IG, MIB's scores), the heads and their roles, and causal tracing of
//! the facts; with each step's time and the process's peak memory.

use std::time::Instant;

use interp_core::HookedTransformer;

use crate::analysis::{
    behaviour, causal_tracing, circuit_discovery, logit_lens, patching_sweep, write_heads, CausalTracingConfig, CircuitDiscoveryConfig, PatchingSweepConfig,
};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;
use circuits::causal_tracing::TracePrompt;
use circuits::edge_run::EdgeRun;
use circuits::heads::head_scores;
use circuits::patching::PatchSite;
use circuits::prompts::TaskPrompts;

/// What [`study`] runs.
#[derive(Clone, Debug)]
pub struct StudyConfig {
    /// IOI pairs the circuit analyses use (the first ones of the set; behaviour uses all).
    pub n_ioi: usize,
    /// Facts traced (the first ones).
    pub n_facts: usize,
    /// EAP and EAP-IG (and, if asked, ACDC).
    pub circuits: CircuitDiscoveryConfig,
    /// Causal tracing of the facts.
    pub tracing: CausalTracingConfig,
    /// Patch each head's `z` (one forward per head) and each head's path into the output heads'
    /// queries (one masked forward per head).
    pub patch_heads: bool,
}

impl Default for StudyConfig {
    fn default() -> Self {
        StudyConfig {
            n_ioi: 32,
            n_facts: usize::MAX,
            circuits: CircuitDiscoveryConfig { acdc: false, progress: true, ..CircuitDiscoveryConfig::default() },
            tracing: CausalTracingConfig::default(),
            patch_heads: true,
        }
    }
}

/// One step's cost.
pub struct StudyStep {
    /// What ran.
    pub name: String,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory so far (GB; NaN where the OS does not say).
    pub peak_gb: f64,
}

/// The process's peak resident set size (GB; NaN off Linux).
fn peak_rss_gb() -> f64 {
    interp_core::status_kib("VmHWM:") * 1024.0 / 1e9
}

/// Studies `model` on `ioi` (one answer and one wrong token per pair) and `facts`, writing
/// every section into `out`; `token_text` renders token ids for the charts. Returns each step's
/// cost (also written as the `steps` table).
pub fn study(
    model: &HookedTransformer,
    ioi: &TaskPrompts,
    facts: &[TracePrompt],
    token_text: &dyn Fn(i64) -> String,
    cfg: &StudyConfig,
    out: &mut Output,
) -> Result<Vec<StudyStep>> {
    if ioi.is_empty() || cfg.n_ioi == 0 {
        return Err(Error::Input("the study needs IOI pairs (and n_ioi > 0)".into()));
    }
    let mut steps = Vec::new();
    let mut step = |name: &str, t: Instant| steps.push(StudyStep { name: name.to_string(), seconds: t.elapsed().as_secs_f64(), peak_gb: peak_rss_gb() });
    let pairs = ioi.narrow(0, cfg.n_ioi.min(ioi.len()))?;
    let facts = &facts[..cfg.n_facts.min(facts.len())];

    let t = Instant::now();
    behaviour(model, ioi, "IOI", 16)?.write(out)?;
    step(&format!("behaviour ({} IOI pairs)", ioi.len()), t);

    let t = Instant::now();
    let rows = |p: &TaskPrompts| -> Result<Vec<(Vec<i64>, i64)>> {
        (0..p.len()).map(|i| Ok((Vec::<i64>::try_from(&p.clean.f_get(i as i64)?)?[..p.lengths[i] as usize].to_vec(), p.answers[i][0]))).collect()
    };
    let mut sets = vec![("IOI", rows(&pairs)?)];
    if !facts.is_empty() {
        sets.push(("facts", facts.iter().map(|f| (f.tokens.clone(), f.answer)).collect()));
    }
    logit_lens(model, &sets)?.write(out)?;
    step("logit lens", t);

    let t = Instant::now();
    let found = circuit_discovery(model, &pairs, "IOI", &cfg.circuits)?;
    found.write(out)?;
    let acdc = if cfg.circuits.acdc { ", ACDC" } else { "" };
    step(&format!("EAP, EAP-IG({}) and faithfulness curves{acdc} ({} pairs, {} edges)", cfg.circuits.steps, pairs.len(), found.graph.n_edges()), t);

    let t = Instant::now();
    let edges = found.methods.last().map(|m| (&found.graph, m.scores.as_slice()));
    let mut heads = head_scores(model, &pairs, "IOI", cfg.patch_heads, edges)?;
    step(if cfg.patch_heads { "heads: DLA, attention, z patching" } else { "heads: DLA, attention" }, t);
    if cfg.patch_heads {
        let t = Instant::now();
        heads.path_patch(&EdgeRun::new(model, &found.graph, &pairs, cfg.circuits.ablation, cfg.circuits.budget)?)?;
        step("heads: path patching into the output heads' queries", t);
    }
    write_heads(&heads, out)?;

    // Positions line up within one template and order: the first pair's.
    let t = Instant::now();
    let label = &ioi.labels[0];
    let same: Vec<usize> = (0..ioi.len()).filter(|&i| ioi.labels[i] == *label && ioi.lengths[i] == ioi.lengths[0]).collect();
    let sites = vec![PatchSite::ResidPre, PatchSite::AttnOut, PatchSite::MlpOut].into_iter().filter(|s| s.applies_to(model)).collect();
    let name = format!("IOI, the {} pairs of template {label}", same.len());
    // A few short prompts make a small forward: every position of a layer in one is faster.
    let rows = Some(same.len() as i64 * ioi.lengths[0]);
    patching_sweep(model, &ioi.select(&same)?, &name, token_text, &PatchingSweepConfig { sites, max_rows: rows })?.write(out)?;
    step(&format!("patching by (layer, position): residual, attention and MLP outputs ({} pairs)", same.len()), t);

    if !facts.is_empty() {
        let t = Instant::now();
        causal_tracing(model, facts, "facts", token_text, &cfg.tracing)?.write(out)?;
        step(&format!("causal tracing ({} facts, {} noise samples)", facts.len(), cfg.tracing.samples), t);
    }

    out.report.section("Cost of each step");
    let mut table = Table::new(&["step", "seconds", "peak_rss_gb"]);
    for s in &steps {
        table.push(vec![s.name.clone().into(), s.seconds.into(), s.peak_gb.into()]);
    }
    out.table("steps", "wall time and the process's peak memory so far", &table)?;
    Ok(steps)
}
