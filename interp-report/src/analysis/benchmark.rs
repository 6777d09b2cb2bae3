//! Circuit discovery scored against known circuits: EAP, EAP-IG and ACDC on an InterpBench case
//! (a model with its true circuit, see [`circuits::interpbench`]), with edge and node AUROC against
//! the truth next to MIB's CPR and CMD.

use std::path::Path;

use interp_core::HookedTransformer;

use super::circuit_discovery::{circuit_discovery, CircuitDiscovery, CircuitDiscoveryConfig};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;
use circuits::acdc::roc_auc;
use circuits::interpbench::{component_scores, component_truth, node_scores, CaseTruth};
use circuits::prompts::TaskPrompts;

/// One method's scores on one case.
#[derive(Clone, Debug)]
pub struct MethodScore {
    /// EAP, EAP-IG(n) or ACDC.
    pub method: String,
    /// AUROC of |edge score| (ACDC: its ranking, kept edges first) against the true edges, at
    /// InterpBench's granularity: edges into a head's q, k and v inputs merged (largest |score|).
    pub edge_auroc: f64,
    /// AUROC of each head's and MLP's largest |score| over the edges touching it against the
    /// true nodes (NaN when every node, or none, is in the circuit).
    pub node_auroc: f64,
    /// MIB's CPR (higher is better).
    pub cpr: f64,
    /// MIB's CMD (lower is better).
    pub cmd: f64,
}

/// What [`benchmark_case`] found on one case.
pub struct CaseResult {
    /// The case's name (its folder's).
    pub name: String,
    /// The true circuit on the edge graph.
    pub truth: CaseTruth,
    /// EAP, EAP-IG and ACDC's runs.
    pub discovery: CircuitDiscovery,
    /// Per method.
    pub scores: Vec<MethodScore>,
}

/// Runs `cfg`'s methods on `model` and `prompts` and scores them against the truth in `dir`'s
/// `edges.pkl`.
pub fn benchmark_case(dir: &Path, name: &str, model: &HookedTransformer, prompts: &TaskPrompts, cfg: &CircuitDiscoveryConfig) -> Result<CaseResult> {
    let graph = circuits::edge_graph::EdgeGraph::new(model)?;
    let truth = CaseTruth::read(dir, model, &graph)?;
    if !truth.edges.iter().any(|t| *t) {
        return Err(Error::Input(format!("{}: the true circuit has no edge of the model's graph", dir.display())));
    }
    let discovery = circuit_discovery(model, prompts, name, cfg)?;
    // The discovery's graph is built the same way, so its edges are in the same order.
    let merged_truth = component_truth(&graph, &truth.edges);
    let auroc = |scores: &[f64]| -> Result<(f64, f64)> {
        let nodes = roc_auc(&node_scores(&graph, scores), &truth.nodes).unwrap_or(f64::NAN);
        Ok((roc_auc(&component_scores(&graph, scores), &merged_truth)?, nodes))
    };
    let mut scores = Vec::new();
    for m in &discovery.methods {
        let (edge_auroc, node_auroc) = auroc(&m.scores)?;
        scores.push(MethodScore { method: m.method.name(), edge_auroc, node_auroc, cpr: m.mib.cpr, cmd: m.mib.cmd });
    }
    if let Some(a) = &discovery.acdc {
        let ranking: Vec<f64> = a.result.ranking().iter().map(|x| f64::from(*x)).collect();
        let (edge_auroc, node_auroc) = auroc(&ranking)?;
        scores.push(MethodScore { method: "ACDC".into(), edge_auroc, node_auroc, cpr: a.mib.cpr, cmd: a.mib.cmd });
    }
    Ok(CaseResult { name: name.to_string(), truth, discovery, scores })
}

impl CaseResult {
    /// The discovery's section (scores, circuits, faithfulness curves, MIB tables) and the AUROC
    /// table `auroc`.
    pub fn write(&self, out: &mut Output) -> Result<()> {
        self.discovery.write(out)?;
        let n_true = self.truth.edges.iter().filter(|t| **t).count();
        let n_nodes = self.truth.nodes.iter().filter(|t| **t).count();
        out.report.paragraph(&format!(
            "True circuit: {n_true} of {} edges ({} pairs listed in edges.pkl, q/k/v inputs promoted to whole heads), {n_nodes} of {} heads and MLPs.",
            self.truth.edges.len(),
            self.truth.n_listed,
            self.truth.nodes.len()
        ));
        out.table("auroc", "edge and node AUROC against the true circuit, with MIB's CPR and CMD", &summary_table([self]))
    }
}

/// One row per case and method: edges, true edges, edge and node AUROC, CPR, CMD.
pub fn summary_table<'a>(results: impl IntoIterator<Item = &'a CaseResult>) -> Table {
    let mut table =
        Table::new(&["case", "method", "n_edges", "true_edges", "head_level_edges", "true_head_level_edges", "edge_auroc", "node_auroc", "cpr", "cmd"]);
    for r in results {
        let n_true = r.truth.edges.iter().filter(|t| **t).count();
        let merged = component_truth(&r.discovery.graph, &r.truth.edges);
        for s in &r.scores {
            table.push(vec![
                r.name.clone().into(),
                s.method.clone().into(),
                r.truth.edges.len().into(),
                n_true.into(),
                merged.len().into(),
                merged.iter().filter(|t| **t).count().into(),
                s.edge_auroc.into(),
                s.node_auroc.into(),
                s.cpr.into(),
                s.cmd.into(),
            ]);
        }
    }
    table
}
