//! Pruning by influence on the logits (circuit-tracer's `prune_graph`).

use tch::{Kind, Tensor};

use super::{AttributionGraph, Node};
use crate::error::{Error, Result};

/// Which nodes and edges survive pruning by influence on the logits.
pub struct Pruned {
    /// [n_nodes]
    pub node_mask: Vec<bool>,
    /// [n_nodes, n_nodes] (bool), `edge_mask[target, source]`.
    pub edge_mask: Tensor,
    /// [n_nodes]: each node's influence on the logits (probability-weighted, through all paths).
    pub influence: Vec<f64>,
    /// [n_nodes]: the cumulative share of total influence at each node's rank (circuit-tracer's
    /// `influence` field).
    pub cumulative: Vec<f64>,
    /// The share of influence the kept nodes carry (the JSON's `node_threshold`).
    pub node_threshold: f64,
    /// The share of influence the kept edges carry.
    pub edge_threshold: f64,
}

impl Pruned {
    /// Nodes kept.
    pub fn n_nodes(&self) -> usize {
        self.node_mask.iter().filter(|k| **k).count()
    }

    /// Edges kept.
    pub fn n_edges(&self) -> Result<i64> {
        Ok(self.edge_mask.f_sum(Kind::Int64)?.f_int64_value(&[])?)
    }
}

/// |A| with rows scaled to sum to one.
pub(super) fn normalize_rows(a: &Tensor) -> Result<Tensor> {
    let a = a.f_abs()?.f_to_kind(Kind::Double)?;
    Ok(a.f_div(&a.f_sum_dim_intlist(1, true, Kind::Double)?.f_clamp_min(1e-10)?)?)
}

/// Each node's probability as a logit target, 0 for other nodes [n_nodes] (f64).
pub(super) fn logit_weights(nodes: &[Node]) -> Result<Tensor> {
    let weights: Vec<f64> = nodes.iter().map(|node| if let Node::Logit { probability, .. } = node { *probability } else { 0.0 }).collect();
    Ok(Tensor::f_from_slice(&weights)?)
}

/// `w A + w A^2 + ...` [n] for an acyclic graph whose known rows are `a` [k, n] (row `i` the
/// inputs of node `rows[i]` [k]; nodes without a row have no inputs), `w` [n].
pub(super) fn influence(a: &Tensor, rows: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let mut current = weights.shallow_clone();
    let mut total = weights.f_zeros_like()?;
    for _ in 0..=a.size()[1] {
        current = current.f_index_select(0, rows)?.f_unsqueeze(0)?.f_matmul(a)?.f_squeeze_dim(0)?;
        if current.f_count_nonzero(None::<i64>)?.f_int64_value(&[])? == 0 {
            return Ok(total);
        }
        total = total.f_add(&current)?;
    }
    Err(Error::Input("influence did not converge: the adjacency matrix has a cycle".into()))
}

/// The score above which the top scores hold `fraction` of the total.
fn threshold(scores: &[f64], fraction: f64) -> f64 {
    let mut sorted: Vec<f64> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().sum();
    let mut acc = 0.0;
    for (i, s) in sorted.iter().enumerate() {
        acc += s;
        if acc / total >= fraction || i + 1 == sorted.len() {
            return *s;
        }
    }
    f64::INFINITY
}

impl AttributionGraph {
    /// Keeps the nodes that carry `node_threshold` of the influence on the logits and then the
    /// edges that carry `edge_threshold` of it (circuit-tracer's defaults: 0.8, 0.98); tokens
    /// and logits always stay, features without a kept input or output and errors without a
    /// kept output go.
    pub fn prune(&self, node_threshold: f64, edge_threshold: f64) -> Result<Pruned> {
        for t in [node_threshold, edge_threshold] {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::Input(format!("pruning thresholds are fractions in [0, 1]; got {t}")));
            }
        }
        let n = self.nodes.len();
        let (n_logits, n_tokens, n_features) = (self.n_logits(), self.tokens.len(), self.n_features());
        let weights = logit_weights(&self.nodes)?;
        let all = Tensor::f_arange(n as i64, (Kind::Int64, tch::Device::Cpu))?;
        let node_influence = Vec::<f64>::try_from(&influence(&normalize_rows(&self.adjacency)?, &all, &weights)?)?;
        let cut = threshold(&node_influence, node_threshold);
        let always = n - n_logits - n_tokens;
        let mut node_mask: Vec<bool> = node_influence.iter().enumerate().map(|(i, s)| *s >= cut || i >= always).collect();

        let keep = Tensor::f_from_slice(&node_mask)?;
        let pruned = self.adjacency.f_mul(&keep.f_unsqueeze(1)?)?.f_mul(&keep.f_unsqueeze(0)?)?;
        let normalized = normalize_rows(&pruned)?;
        let edge_influence = influence(&normalized, &all, &weights)?.f_add(&weights)?;
        let scores = normalized.f_mul(&edge_influence.f_unsqueeze(1)?)?;
        let cut = threshold(&Vec::<f64>::try_from(&scores.f_flatten(0, -1)?)?, edge_threshold);
        let mut edge_mask = scores.f_ge(cut)?.f_logical_and(&scores.f_gt(0.0)?)?;
        loop {
            let before = node_mask.clone();
            let has_out = Vec::<bool>::try_from(&edge_mask.f_any_dim(0, false)?)?;
            let has_in = Vec::<bool>::try_from(&edge_mask.f_any_dim(1, false)?)?;
            for i in 0..always {
                node_mask[i] &= has_out[i] && (i >= n_features || has_in[i]);
            }
            let keep = Tensor::f_from_slice(&node_mask)?;
            edge_mask = edge_mask.f_logical_and(&keep.f_unsqueeze(1)?)?.f_logical_and(&keep.f_unsqueeze(0)?)?;
            if node_mask == before {
                break;
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| node_influence[*b].total_cmp(&node_influence[*a]));
        let total: f64 = node_influence.iter().sum();
        let mut cumulative = vec![0.0; n];
        let mut acc = 0.0;
        for i in order {
            acc += node_influence[i];
            cumulative[i] = if total > 0.0 { acc / total } else { 0.0 };
        }
        Ok(Pruned { node_mask, edge_mask, influence: node_influence, cumulative, node_threshold, edge_threshold })
    }
}
