//! How the Mechanistic Interpretability Benchmark (MIB, circuit-localization track) scores a
//! circuit-discovery method, as its `evaluate_area_under_curve` does: faithfulness
//! f = (m(C) - m(empty)) / (m(full) - m(empty)) of the top `int(p * E)` edges at edge fractions
//! p = 0.001 .. 1, each circuit pruned to what is connected as MIB's `Graph.prune` does; CPR =
//! the trapezoid area under f over p (circuits chosen by signed scores, higher is better); CMD =
//! the area between f and 1 (absolute scores, lower is better). And its submission files: MIB's
//! `Graph.to_json` layout, with node scores, in the folders its `run_evaluation.py` reads.

use std::path::Path;

use interp_core::ModelConfig;
use serde_json::{json, Map};

use crate::edge_graph::{Ablation, EdgeGraph, Receiver, Sender};
use crate::error::{Error, Result};

/// MIB's edge budgets, as fractions of all edges.
pub const MIB_FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Edges kept at each budget: `int(p * n_edges)`.
pub fn mib_counts(n_edges: usize) -> Vec<usize> {
    MIB_FRACTIONS.iter().map(|p| (p * n_edges as f64) as usize).collect()
}

fn trapezoid(values: &[f64]) -> Result<f64> {
    if values.len() != MIB_FRACTIONS.len() {
        return Err(Error::Count { what: "faithfulness values for MIB's edge budgets".into(), found: values.len(), expected: MIB_FRACTIONS.len() });
    }
    Ok(MIB_FRACTIONS.windows(2).zip(values.windows(2)).map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0).sum())
}

/// CPR: the area under the faithfulness curve at [`MIB_FRACTIONS`] (of circuits chosen by
/// signed scores). A perfect method scores 0.999.
pub fn cpr(faithfulness: &[f64]) -> Result<f64> {
    trapezoid(faithfulness)
}

/// CMD: the area between the faithfulness curve at [`MIB_FRACTIONS`] and 1 (of circuits chosen
/// by absolute scores). A perfect method scores 0.
pub fn cmd(faithfulness: &[f64]) -> Result<f64> {
    trapezoid(&faithfulness.iter().map(|f| (1.0 - f).abs()).collect::<Vec<_>>())
}

/// Prunes a circuit (`keep`, one flag per edge of `graph`) as MIB's `Graph.prune` does before it
/// evaluates one: until nothing changes, a node stays only with a kept edge out and a kept edge
/// in (the input always counts as fed), and an edge only if its sender stays and its receiver's
/// node stays (the logits always do).
pub fn mib_prune(graph: &EdgeGraph, keep: &mut [bool]) {
    // A k or v input of a key/value head feeds every query head that reads it.
    let receivers: Vec<Vec<usize>> = graph.edges.iter().map(|e| graph.receiver_nodes(e.receiver)).collect();
    let logits: Vec<bool> = graph.edges.iter().map(|e| e.receiver == Receiver::Logits).collect();
    let senders: Vec<usize> = graph.edges.iter().map(|e| graph.sender_index(e.sender)).collect();
    let n = graph.senders.len();
    let mut nodes: Option<Vec<bool>> = None;
    loop {
        let (mut out, mut fed) = (vec![false; n], vec![false; n]);
        fed[graph.sender_index(Sender::Embed)] = true;
        for (e, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            out[senders[e]] = true;
            for &n in &receivers[e] {
                fed[n] = true;
            }
        }
        let now: Vec<bool> = out.iter().zip(&fed).map(|(o, f)| *o && *f).collect();
        if nodes.as_ref() == Some(&now) {
            return;
        }
        for (e, k) in keep.iter_mut().enumerate() {
            *k = *k && now[senders[e]] && (logits[e] || receivers[e].iter().any(|&n| now[n]));
        }
        nodes = Some(now);
    }
}

/// MIB's name of a sender node: `input`, `a{layer}.h{head}`, `m{layer}`.
fn node_name(s: Sender) -> String {
    match s {
        Sender::Embed => "input".into(),
        Sender::Head { layer, head } => format!("a{layer}.h{head}"),
        Sender::Mlp { layer } => format!("m{layer}"),
    }
}

/// MIB's name of an edge: `a0.h1->m2`, `input->a1.h0<k>`, `m11->logits`.
pub fn mib_edge_name(sender: Sender, receiver: Receiver) -> String {
    let from = node_name(sender);
    match receiver {
        Receiver::Head { layer, head, input } => format!("{from}->a{layer}.h{head}<{}>", input.letter()),
        Receiver::Mlp { layer } => format!("{from}->m{layer}"),
        Receiver::Logits => format!("{from}->logits"),
    }
}

/// Each sender node's score: the sum of its outgoing edges' scores. For attribution patching this
/// is the node's own score (the gradient at a node's output is the sum of the gradients at the
/// inputs it feeds), which MIB's node-level evaluation ranks nodes by.
pub fn mib_node_scores(graph: &EdgeGraph, scores: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; graph.senders.len()];
    for (e, s) in graph.edges.iter().zip(scores) {
        out[graph.sender_index(e.sender)] += s;
    }
    out
}

/// MIB's name of the model, for the models MIB benchmarks (`gpt2`, `qwen2.5`, `gemma2`,
/// `llama3`, as its scripts name them), recognised by family and size.
pub fn mib_model_name(cfg: &ModelConfig) -> Option<&'static str> {
    match (cfg.model_type.as_str(), cfg.n_layers, cfg.d_model) {
        ("gpt2", 12, 768) => Some("gpt2"),
        ("qwen2", 24, 896) => Some("qwen2.5"),
        ("gemma2", 26, 2304) => Some("gemma2"),
        ("llama", 32, 4096) => Some("llama3"),
        _ => None,
    }
}

/// MIB's folder for a method's scores: `<method>_<ablation>_edge/<task>_<model>/`, as its
/// `run_attribution.py` writes and `run_evaluation.py` reads (ablation `patching` for resampled
/// activations, `mean`, `zero`; underscores in the task name become hyphens).
pub fn mib_folder(method: &str, ablation: Ablation, task: &str, model: &str) -> std::path::PathBuf {
    let ablation = match ablation {
        Ablation::Resample => "patching",
        Ablation::Mean => "mean",
        Ablation::Zero => "zero",
    };
    Path::new(&format!("{method}_{ablation}_edge")).join(format!("{}_{model}", task.replace('_', "-")))
}

/// Writes `scores` (one per edge of `graph`) as MIB's score JSON (`cfg`, `nodes` with `score`
/// (see [`mib_node_scores`]) and `in_graph`, `edges` with `score` and `in_graph`; everything in the
/// graph, as MIB's evaluation expects of a score submission) to `path`.
pub fn write_mib_scores(graph: &EdgeGraph, scores: &[f64], model: &ModelConfig, path: &Path) -> Result<()> {
    if scores.len() != graph.n_edges() {
        return Err(Error::Count { what: "scores for the graph's edges".into(), found: scores.len(), expected: graph.n_edges() });
    }
    let mut nodes = Map::new();
    for (s, score) in graph.senders.iter().zip(mib_node_scores(graph, scores)) {
        nodes.insert(node_name(*s), json!({ "in_graph": true, "score": score }));
    }
    nodes.insert("logits".into(), json!({ "in_graph": true }));
    let mut edges = Map::new();
    for (e, score) in graph.edges.iter().zip(scores) {
        edges.insert(mib_edge_name(e.sender, e.receiver), json!({ "score": score, "in_graph": true }));
    }
    let cfg = json!({ "n_layers": model.n_layers, "n_heads": model.n_heads, "parallel_attn_mlp": model.parallel_attn_mlp, "d_model": model.d_model });
    let text = serde_json::to_string(&json!({ "cfg": cfg, "nodes": nodes, "edges": edges })).map_err(|e| Error::Input(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    std::fs::write(path, text).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() -> Result<()> {
        // f = 1 everywhere: CPR = 1 - 0.001, CMD = 0; f = 0: the reverse.
        assert!((cpr(&[1.0; 10])? - 0.999).abs() < 1e-12 && cmd(&[1.0; 10])?.abs() < 1e-12);
        assert!(cpr(&[0.0; 10])?.abs() < 1e-12 && (cmd(&[0.0; 10])? - 0.999).abs() < 1e-12);
        // f = p: the area under the line is (1 - 0.001^2) / 2 (the trapezoid rule is exact).
        assert!((cpr(&MIB_FRACTIONS)? - (1.0 - 1e-6) / 2.0).abs() < 1e-12);
        // Overshooting counts against CMD as much as undershooting: |1 - 2| = |1 - 0|.
        assert!((cmd(&[2.0; 10])? - cmd(&[0.0; 10])?).abs() < 1e-12);
        assert_eq!(mib_counts(32491), vec![32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]);
        assert!(cpr(&[1.0; 3]).is_err());
        Ok(())
    }
}
