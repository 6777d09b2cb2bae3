//! ACDC: greedy edge pruning in reverse topological order.
//!
//! For each receiver, from the logits backwards, each incoming edge is removed in turn and stays
//! removed if the loss (KL, or the negated task metric) grows by less than `tau`. The decisions
//! are sequential, but candidate removals are evaluated speculatively in batches: variant `j`
//! removes the next `j + 1` candidates together, so one forward decides every candidate up to the
//! first one that is kept, with exactly the decisions of the one-edge-per-forward loop. Each
//! forward restarts at the receiver's block from the cached clean residual.

use interp_core::HookedTransformer;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::edge_graph::{EdgeActivations, EdgeGraph};
use crate::metric::Metric;

/// ACDC settings.
#[derive(Clone, Debug)]
pub struct AcdcConfig {
    /// Keep an edge when removing it raises the loss by `tau` or more.
    pub tau: f64,
    /// Most candidate removals stacked in one forward (1 = one edge per forward).
    pub max_variants: usize,
    /// Restart each forward at the receiver's block (false: every forward runs the whole model).
    pub restart: bool,
    /// Show a progress bar (edges decided / total, ETA).
    pub progress: bool,
}

impl Default for AcdcConfig {
    fn default() -> Self {
        AcdcConfig { tau: 0.01, max_variants: 16, restart: true, progress: false }
    }
}

/// What ACDC found.
#[derive(Clone, Debug)]
pub struct AcdcResult {
    /// [E] whether each edge is in the circuit.
    pub kept: Vec<bool>,
    /// [E] the loss increase measured when the edge was tested (0 for edges of receivers that
    /// no longer reach the output, which are removed untested). A score for ROC curves.
    pub effect: Vec<f64>,
    /// Loss of the full model and of the circuit (KL: 0 for the full model).
    pub full_loss: f64,
    /// Loss of the circuit: every removed edge ablated.
    pub circuit_loss: f64,
    /// Forward passes run and edge sets evaluated.
    pub n_forwards: usize,
    /// Edge sets evaluated (each candidate removal is one).
    pub n_variants: usize,
}

impl AcdcResult {
    /// Edges kept in the circuit.
    pub fn n_kept(&self) -> usize {
        self.kept.iter().filter(|k| **k).count()
    }
}

/// Runs ACDC on `graph` with the ablated values in `acts`.
pub fn acdc(model: &HookedTransformer, graph: &EdgeGraph, acts: &EdgeActivations, metric: &Metric, cfg: &AcdcConfig) -> Result<AcdcResult> {
    if cfg.tau.is_nan() || cfg.tau < 0.0 {
        return Err(Error::Input(format!("tau must be zero or positive, found {}", cfg.tau)));
    }
    if cfg.max_variants == 0 {
        return Err(Error::Input("max_variants must be at least 1".into()));
    }
    let n = graph.n_edges();
    let mut kept = vec![true; n];
    // Kept outgoing edges of each sender: a component with none no longer reaches the output.
    let mut out_kept = vec![0usize; graph.senders.len()];
    for e in &graph.edges {
        out_kept[graph.sender_index(e.sender)] += 1;
    }
    let remove = |e: usize, kept: &mut [bool], out_kept: &mut [usize]| {
        kept[e] = false;
        out_kept[graph.sender_index(graph.edges[e].sender)] -= 1;
    };
    let mut effect = vec![0.0; n];
    let (mut n_forwards, mut n_variants) = (0, 0);
    let mut eval = |kept_sets: &[Vec<bool>], start: usize| -> Result<Vec<f64>> {
        let rows: Vec<Tensor> = kept_sets.iter().map(|k| graph.mask_of(k)).collect::<Result<_>>()?;
        let logits = graph.run_masked(model, acts, &Tensor::f_stack(&rows, 0)?, start)?;
        n_forwards += 1;
        n_variants += kept_sets.len();
        let v = Vec::<f64>::try_from(&metric.per_variant(&logits)?.f_to_kind(Kind::Double)?)?;
        Ok(v.into_iter().map(|x| metric.as_loss(x)).collect())
    };
    let last = graph.n_layers - 1;
    let full_loss = eval(&[kept.clone()], if cfg.restart { last } else { 0 })?[0];
    let mut cur = full_loss;
    let bar = interp_core::train::progress_bar(n as u64, "edges", cfg.progress);
    let mut width = cfg.max_variants;
    for gi in (0..graph.groups.len()).rev() {
        let group = graph.group_edges(gi);
        let g = &graph.groups[gi];
        let start = if cfg.restart { g.layer } else { 0 };
        for r in (0..g.n_receivers as usize).rev() {
            let first = group.start + r * g.n_senders;
            let incoming: Vec<usize> = (first..first + g.n_senders).rev().collect();
            let receiver = graph.receivers[g.first_receiver + r];
            let nodes = graph.receiver_nodes(receiver);
            if !nodes.is_empty() && nodes.iter().all(|&s| out_kept[s] == 0) {
                for &e in &incoming {
                    remove(e, &mut kept, &mut out_kept);
                }
                bar.inc(incoming.len() as u64);
                continue;
            }
            let mut i = 0;
            while i < incoming.len() {
                let k = width.min(incoming.len() - i);
                let mut sets = Vec::with_capacity(k);
                let mut trial = kept.clone();
                for &e in &incoming[i..i + k] {
                    trial[e] = false;
                    sets.push(trial.clone());
                }
                let losses = eval(&sets, start)?;
                let mut decided = 0;
                for (j, loss) in losses.iter().enumerate() {
                    let e = incoming[i + j];
                    effect[e] = loss - cur;
                    decided += 1;
                    if loss - cur < cfg.tau {
                        remove(e, &mut kept, &mut out_kept);
                        cur = *loss;
                    } else {
                        break;
                    }
                }
                // Widen the speculation while removals run on; narrow it when an edge is kept early.
                width = if decided == k { (2 * k).min(cfg.max_variants).max(width) } else { (decided + 1).min(cfg.max_variants) };
                bar.inc(decided as u64);
                i += decided;
            }
        }
    }
    bar.finish_and_clear();
    Ok(AcdcResult { kept, effect, full_loss, circuit_loss: cur, n_forwards, n_variants })
}

/// The nodes (senders and receivers) an edge set touches, by name.
pub fn circuit_nodes(graph: &EdgeGraph, kept: &[bool]) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for (e, k) in graph.edges.iter().zip(kept) {
        if *k {
            for name in [e.sender.to_string(), e.receiver.to_string()] {
                if !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
    }
    nodes
}

/// Area under the ROC curve of `scores` against the true edge set (ties count half).
pub fn roc_auc(scores: &[f64], truth: &[bool]) -> Result<f64> {
    if scores.len() != truth.len() {
        return Err(Error::Input(format!("{} scores for {} edges", scores.len(), truth.len())));
    }
    let pos: Vec<f64> = scores.iter().zip(truth).filter(|(_, t)| **t).map(|(s, _)| *s).collect();
    let neg: Vec<f64> = scores.iter().zip(truth).filter(|(_, t)| !**t).map(|(s, _)| *s).collect();
    if pos.is_empty() || neg.is_empty() {
        return Err(Error::Input("ROC AUC needs both circuit and non-circuit edges".into()));
    }
    let mut wins = 0.0;
    for p in &pos {
        for q in &neg {
            wins += if p > q { 1.0 } else if p == q { 0.5 } else { 0.0 };
        }
    }
    Ok(wins / (pos.len() * neg.len()) as f64)
}
