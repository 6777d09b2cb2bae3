//! Pruning by influence on the logits (circuit-tracer's `prune_graph`).

use tch::{Kind, Tensor};

use super::{AttributionGraph, Node};
use crate::error::{Error, Result};

/// Which nodes and edges survive pruning by influence on the logits.
pub struct Pruned {
    /// [n_nodes]
    pub node_mask: Vec<bool>,
    /// The kept edges, [n_edges, 2] (int64): (target, source) pairs in row-major order. Held as
    /// pairs, so that they take memory by the edges kept, not by n_nodes^2.
    pub edges: Tensor,
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
    pub fn n_edges(&self) -> i64 {
        self.edges.size()[0]
    }

    /// The kept edges as a mask [n_nodes, n_nodes] (bool), `mask[target, source]`: n_nodes^2
    /// bytes, for small graphs.
    pub fn edge_mask(&self) -> Result<Tensor> {
        let n = self.node_mask.len() as i64;
        let mask = Tensor::f_zeros([n, n], (Kind::Bool, self.edges.device()))?;
        let ones = Tensor::f_ones([self.n_edges()], (Kind::Bool, self.edges.device()))?;
        Ok(mask.f_index_put(&[Some(self.edges.f_select(1, 0)?), Some(self.edges.f_select(1, 1)?)], &ones, false)?)
    }
}

/// |A| with rows scaled to sum to one, as a linear map that is never held whole: `a` [k, n] (any
/// float kind) is read a block of rows at a time in f64, about 64 MB each. A graph of n nodes
/// then needs its adjacency and no more than a block besides (circuit-tracer's pruning holds
/// several [n, n] copies; its users run out of memory near 2,300 tokens, its issue #92).
pub(super) struct Normalized<'a> {
    a: &'a Tensor,
    /// Sums of |A| by row, at least 1e-10 [k] (f64).
    sums: Tensor,
}

impl<'a> Normalized<'a> {
    pub(super) fn new(a: &'a Tensor) -> Result<Self> {
        Ok(Normalized { a, sums: row_sums(a, true)?.f_clamp_min(1e-10)? })
    }

    /// (first row, rows) of each block.
    fn blocks(a: &Tensor) -> Vec<(i64, i64)> {
        let (k, n) = (a.size()[0], a.size().get(1).copied().unwrap_or(1).max(1));
        let step = (8_000_000 / n).max(1);
        (0..k).step_by(step as usize).map(|start| (start, step.min(k - start))).collect()
    }

    fn block(&self, start: i64, len: i64) -> Result<Tensor> {
        Ok(self.a.f_narrow(0, start, len)?.f_abs()?.f_to_kind(Kind::Double)?)
    }

    /// `v A_n` [n] for `v` [k] (f64).
    pub(super) fn left(&self, v: &Tensor) -> Result<Tensor> {
        let v = v.f_div(&self.sums)?;
        let mut total = Tensor::f_zeros([self.a.size()[1]], (Kind::Double, self.a.device()))?;
        for (start, len) in Self::blocks(self.a) {
            total = total.f_add(&v.f_narrow(0, start, len)?.f_unsqueeze(0)?.f_matmul(&self.block(start, len)?)?.f_squeeze_dim(0)?)?;
        }
        Ok(total)
    }

    /// `v A` [n] for `v` [k] (f64), A as it is (signed, not normalised), read by blocks.
    pub(super) fn signed_left(a: &Tensor, v: &Tensor) -> Result<Tensor> {
        let mut total = Tensor::f_zeros([a.size()[1]], (Kind::Double, a.device()))?;
        for (start, len) in Self::blocks(a) {
            let block = a.f_narrow(0, start, len)?.f_to_kind(Kind::Double)?;
            total = total.f_add(&v.f_narrow(0, start, len)?.f_unsqueeze(0)?.f_matmul(&block)?.f_squeeze_dim(0)?)?;
        }
        Ok(total)
    }

    /// `A_n v` [k] for `v` [n] (f64).
    pub(super) fn right(&self, v: &Tensor) -> Result<Tensor> {
        let parts = Self::blocks(self.a).into_iter().map(|(start, len)| Ok(self.block(start, len)?.f_mv(v)?)).collect::<Result<Vec<_>>>()?;
        let product = if parts.is_empty() { Tensor::f_zeros([0], (Kind::Double, self.a.device()))? } else { Tensor::f_cat(&parts, 0)? };
        Ok(product.f_div(&self.sums)?)
    }

    /// The whole matrix [k, n] (f64), for small ones.
    fn dense(&self) -> Result<Tensor> {
        Ok(self.a.f_abs()?.f_to_kind(Kind::Double)?.f_div(&self.sums.f_unsqueeze(1)?)?)
    }
}

/// The sums of the rows of `a` [k, n] (of their absolute values with `abs`) in f64 [k], a block
/// of rows at a time: a sum in f64 of the whole matrix would first copy it into f64, twice its
/// size (1.55 GB for a graph of 13,905 nodes).
pub(super) fn row_sums(a: &Tensor, abs: bool) -> Result<Tensor> {
    let mut parts = Vec::new();
    for (start, len) in Normalized::blocks(a) {
        let block = a.f_narrow(0, start, len)?;
        let block = if abs { block.f_abs()? } else { block };
        parts.push(block.f_sum_dim_intlist(1, false, Kind::Double)?);
    }
    Ok(if parts.is_empty() { Tensor::f_zeros([0], (Kind::Double, a.device()))? } else { Tensor::f_cat(&parts, 0)? })
}

/// Each node's probability as a logit target, 0 for other nodes [n_nodes] (f64).
pub(super) fn logit_weights(nodes: &[Node]) -> Result<Tensor> {
    let weights: Vec<f64> = nodes.iter().map(|node| if let Node::Logit { probability, .. } = node { *probability } else { 0.0 }).collect();
    Ok(Tensor::f_from_slice(&weights)?)
}

/// `w A + w A^2 + ...` [n] for an acyclic graph whose known rows are `a` [k, n] (row `i` the
/// inputs of node `rows[i]` [k]; nodes without a row have no inputs), `w` [n].
pub(super) fn influence(a: &Normalized, rows: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let mut current = weights.shallow_clone();
    let mut total = weights.f_zeros_like()?;
    for _ in 0..=a.a.size()[1] {
        current = a.left(&current.f_index_select(0, rows)?)?;
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
                return Err(Error::setting("pruning threshold", t, "a fraction in [0, 1]"));
            }
        }
        let n = self.nodes.len();
        let (n_logits, n_tokens, n_features) = (self.n_logits(), self.tokens.len(), self.n_features());
        let weights = logit_weights(&self.nodes)?;
        let all = Tensor::f_arange(n as i64, (Kind::Int64, tch::Device::Cpu))?;
        let node_influence = Vec::<f64>::try_from(&influence(&Normalized::new(&self.adjacency)?, &all, &weights)?)?;
        let cut = threshold(&node_influence, node_threshold);
        let always = n - n_logits - n_tokens;
        let mut node_mask: Vec<bool> = node_influence.iter().enumerate().map(|(i, s)| *s >= cut || i >= always).collect();

        // Edges: only between kept nodes, so on the kept nodes' submatrix [K, K] (the pruned
        // matrix is zero elsewhere).
        let kept: Vec<i64> = (0..n as i64).filter(|&i| node_mask[i as usize]).collect();
        let kept_t = Tensor::f_from_slice(&kept)?;
        let sub = self.adjacency.f_index_select(0, &kept_t)?.f_index_select(1, &kept_t)?;
        let normalized = Normalized::new(&sub)?;
        let sub_weights = weights.f_index_select(0, &kept_t)?;
        let edge_influence =
            influence(&normalized, &Tensor::f_arange(kept.len() as i64, (Kind::Int64, tch::Device::Cpu))?, &sub_weights)?.f_add(&sub_weights)?;
        let scores = normalized.dense()?.f_mul(&edge_influence.f_unsqueeze(1)?)?;
        let positive: Vec<f64> = Vec::<f64>::try_from(&scores.f_flatten(0, -1)?)?.into_iter().filter(|s| *s > 0.0).collect();
        let cut = threshold(&positive, edge_threshold);
        let mut sub_mask = scores.f_ge(cut)?.f_logical_and(&scores.f_gt(0.0)?)?;
        loop {
            let before = node_mask.clone();
            let has_out = Vec::<bool>::try_from(&sub_mask.f_any_dim(0, false)?)?;
            let has_in = Vec::<bool>::try_from(&sub_mask.f_any_dim(1, false)?)?;
            for (j, &i) in kept.iter().enumerate() {
                let i = i as usize;
                if i < always {
                    node_mask[i] &= has_out[j] && (i >= n_features || has_in[j]);
                }
            }
            let keep = Tensor::f_from_slice(&kept.iter().map(|&i| node_mask[i as usize]).collect::<Vec<_>>())?;
            sub_mask = sub_mask.f_logical_and(&keep.f_unsqueeze(1)?)?.f_logical_and(&keep.f_unsqueeze(0)?)?;
            if node_mask == before {
                break;
            }
        }
        // [m, 2] in the submatrix, row-major; the kept indices are increasing, so the pairs in
        // the whole graph are row-major too.
        let edges = kept_t.f_index_select(0, &sub_mask.f_nonzero()?.f_flatten(0, -1)?)?.f_view([-1, 2])?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| node_influence[*b].total_cmp(&node_influence[*a]));
        let total: f64 = node_influence.iter().sum();
        let mut cumulative = vec![0.0; n];
        let mut acc = 0.0;
        for i in order {
            acc += node_influence[i];
            cumulative[i] = if total > 0.0 { acc / total } else { 0.0 };
        }
        Ok(Pruned { node_mask, edges, influence: node_influence, cumulative, node_threshold, edge_threshold })
    }
}
