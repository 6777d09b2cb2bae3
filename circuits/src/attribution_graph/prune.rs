//! Pruning by influence on the logits (circuit-tracer's `prune_graph`).

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::adjacency::{RowBlocks, Submatrix};
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

/// |A| with rows scaled to sum to one, as a linear map that is never held whole: the rows of `a`
/// are read a block at a time (about 8 MB of f32) in f64. A graph of n nodes then needs no more than
/// a block besides what it keeps, whether its rows are in memory or in a file (circuit-tracer's
/// pruning holds several [n, n] copies; its users run out of memory near 2,300 tokens, its issue
/// #92).
pub(super) struct Normalized<'a> {
    a: &'a dyn RowBlocks,
    /// Sums of |A| by row, at least 1e-10 [k] (f64).
    sums: Tensor,
}

impl<'a> Normalized<'a> {
    pub(super) fn new(a: &'a dyn RowBlocks) -> Result<Self> {
        Ok(Normalized { a, sums: row_sums(a, true)?.f_clamp_min(1e-10)? })
    }

    /// Rows `start..start + len` of the normalised matrix [len, n] (f64).
    fn block(&self, start: i64, len: i64) -> Result<Tensor> {
        Ok(self.a.read(start, len)?.f_abs()?.f_to_kind(Kind::Double)?.f_div(&self.sums.f_narrow(0, start, len)?.f_unsqueeze(1)?)?)
    }

    /// `v A_n` [n] for `v` [k] (f64).
    pub(super) fn left(&self, v: &Tensor) -> Result<Tensor> {
        left_product(self.a, &v.f_div(&self.sums)?, true)
    }

    /// `A_n v` [k] for `v` [n] (f64).
    pub(super) fn right(&self, v: &Tensor) -> Result<Tensor> {
        let parts = self.a.blocks().into_iter().map(|(start, len)| Ok(self.block(start, len)?.f_mv(v)?)).collect::<Result<Vec<_>>>()?;
        Ok(if parts.is_empty() { Tensor::f_zeros([0], (Kind::Double, Device::Cpu))? } else { Tensor::f_cat(&parts, 0)? })
    }
}

/// `v A` [n] for `v` [k] (f64), of A as it is or (with `abs`) of |A|, read by blocks.
pub(super) fn left_product(a: &dyn RowBlocks, v: &Tensor, abs: bool) -> Result<Tensor> {
    let mut total = Tensor::f_zeros([a.shape().1], (Kind::Double, Device::Cpu))?;
    for (start, len) in a.blocks() {
        let block = a.read(start, len)?;
        let block = if abs { block.f_abs()? } else { block }.f_to_kind(Kind::Double)?;
        total = total.f_add(&v.f_narrow(0, start, len)?.f_unsqueeze(0)?.f_matmul(&block)?.f_squeeze_dim(0)?)?;
    }
    Ok(total)
}

/// The sums of the rows of `a` [k, n] (of their absolute values with `abs`) in f64 [k], a block
/// of rows at a time: a sum in f64 of the whole matrix would first copy it into f64, twice its
/// size (1.55 GB for a graph of 13,905 nodes).
pub(super) fn row_sums(a: &dyn RowBlocks, abs: bool) -> Result<Tensor> {
    let mut parts = Vec::new();
    for (start, len) in a.blocks() {
        let block = a.read(start, len)?;
        let block = if abs { block.f_abs()? } else { block };
        parts.push(block.f_sum_dim_intlist(1, false, Kind::Double)?);
    }
    Ok(if parts.is_empty() { Tensor::f_zeros([0], (Kind::Double, Device::Cpu))? } else { Tensor::f_cat(&parts, 0)? })
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
    for _ in 0..=a.a.shape().1 {
        current = a.left(&current.f_index_select(0, rows)?)?;
        if current.f_count_nonzero(None::<i64>)?.f_int64_value(&[])? == 0 {
            return Ok(total);
        }
        total = total.f_add(&current)?;
    }
    Err(Error::Input("influence did not converge: the adjacency matrix has a cycle".into()))
}

/// Scores given a part at a time to the visitor, each time it is called.
type Parts<'a> = dyn Fn(&mut dyn FnMut(&[f64])) -> Result<()> + 'a;

/// The score at which the top scores (those >= 0 that `each` gives, a part at a time, each time
/// it is called) first hold `fraction` of their total: what a sort of them all gives, without
/// holding them all. A first pass sums the scores by bucket (exponent and the top 8 bits of the
/// mantissa: 1/256 of a binade), a second sorts those of the bucket where the share is reached.
fn threshold(each: &Parts, fraction: f64) -> Result<f64> {
    let bucket = |s: f64| s.to_bits() >> 44; // increasing with s >= 0
    let (mut sums, mut total) = (BTreeMap::<u64, f64>::new(), 0.0);
    each(&mut |part| {
        for &s in part.iter().filter(|s| **s >= 0.0) {
            *sums.entry(bucket(s)).or_default() += s;
            total += s;
        }
    })?;
    let Some(&lowest) = sums.keys().next() else { return Ok(f64::INFINITY) };
    // The highest bucket where the share is reached (the lowest when rounding never reaches it).
    let (mut acc, mut at) = (0.0, lowest);
    for (&b, &sum) in sums.iter().rev() {
        if (acc + sum) / total >= fraction || b == lowest {
            at = b;
            break;
        }
        acc += sum;
    }
    let mut inside: Vec<f64> = Vec::new();
    each(&mut |part| inside.extend(part.iter().filter(|s| **s >= 0.0 && bucket(**s) == at)))?;
    inside.sort_by(|a, b| b.total_cmp(a));
    for (i, s) in inside.iter().enumerate() {
        acc += s;
        if acc / total >= fraction || i + 1 == inside.len() {
            return Ok(*s);
        }
    }
    Ok(f64::INFINITY)
}

impl AttributionGraph {
    /// Keeps the nodes that carry `node_threshold` of the influence on the logits and then the
    /// edges that carry `edge_threshold` of it (circuit-tracer's defaults: 0.8, 0.98); tokens
    /// and logits always stay, features without a kept input or output and errors without a
    /// kept output go. The adjacency is read by blocks: pruning holds the kept nodes' vectors
    /// and the kept edges, not n_nodes^2 scores.
    pub fn prune(&self, node_threshold: f64, edge_threshold: f64) -> Result<Pruned> {
        for t in [node_threshold, edge_threshold] {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::setting("pruning threshold", t, "a fraction in [0, 1]"));
            }
        }
        let n = self.nodes.len();
        let (n_logits, n_tokens, n_features) = (self.n_logits(), self.tokens.len(), self.n_features());
        let weights = logit_weights(&self.nodes)?;
        let adjacency = &self.adjacency;
        let stored = Tensor::f_from_slice(adjacency.stored_nodes())?;
        let node_influence = Vec::<f64>::try_from(&influence(&Normalized::new(adjacency)?, &stored, &weights)?)?;
        let cut = threshold(
            &|f| {
                f(&node_influence);
                Ok(())
            },
            node_threshold,
        )?;
        let always = n - n_logits - n_tokens;
        let mut node_mask: Vec<bool> = node_influence.iter().enumerate().map(|(i, s)| *s >= cut || i >= always).collect();

        // Edges: only between kept nodes, so on the kept nodes' submatrix [K, K] (the pruned
        // matrix is zero elsewhere), read by blocks of its rows (those of kept targets).
        let kept: Vec<i64> = (0..n as i64).filter(|&i| node_mask[i as usize]).collect();
        let kept_t = Tensor::f_from_slice(&kept)?;
        let (rows, targets) = adjacency.rows_of(&kept);
        let sub = Submatrix { adjacency, rows, columns: kept_t.shallow_clone() };
        let normalized = Normalized::new(&sub)?;
        let targets_t = Tensor::f_from_slice(&targets)?;
        let sub_weights = weights.f_index_select(0, &kept_t)?;
        let edge_influence = influence(&normalized, &targets_t, &sub_weights)?.f_add(&sub_weights)?.f_index_select(0, &targets_t)?;
        // Each edge's score: its normalised weight times its target's influence, a block at a time.
        let scores =
            |start: i64, len: i64| -> Result<Tensor> { Ok(normalized.block(start, len)?.f_mul(&edge_influence.f_narrow(0, start, len)?.f_unsqueeze(1)?)?) };
        let cut = threshold(
            &|f| {
                for (start, len) in sub.blocks() {
                    let positive: Vec<f64> = Vec::<f64>::try_from(&scores(start, len)?.f_flatten(0, -1)?)?.into_iter().filter(|s| *s > 0.0).collect();
                    f(&positive);
                }
                Ok(())
            },
            edge_threshold,
        )?;
        // The kept edges as (target, source) pairs in the submatrix.
        let mut parts = Vec::new();
        for (start, len) in sub.blocks() {
            let s = scores(start, len)?;
            let at = s.f_ge(cut)?.f_logical_and(&s.f_gt(0.0)?)?.f_nonzero()?; // [m, 2]: (row in block, column)
            let target = targets_t.f_index_select(0, &at.f_select(1, 0)?.f_add_scalar(start)?)?;
            parts.push(Tensor::f_stack(&[target, at.f_select(1, 1)?], 1)?);
        }
        let mut pairs = if parts.is_empty() { Tensor::f_zeros([0, 2], (Kind::Int64, Device::Cpu))? } else { Tensor::f_cat(&parts, 0)? };
        loop {
            let before = node_mask.clone();
            let k = kept.len() as i64;
            let marked = |column: i64| -> Result<Vec<bool>> {
                Ok(Vec::<bool>::try_from(&Tensor::f_zeros([k], (Kind::Bool, Device::Cpu))?.f_index_fill(0, &pairs.f_select(1, column)?, 1)?)?)
            };
            let (has_in, has_out) = (marked(0)?, marked(1)?);
            for (j, &i) in kept.iter().enumerate() {
                let i = i as usize;
                if i < always {
                    node_mask[i] &= has_out[j] && (i >= n_features || has_in[j]);
                }
            }
            let keep = Tensor::f_from_slice(&kept.iter().map(|&i| node_mask[i as usize]).collect::<Vec<_>>())?;
            let both = keep.f_index_select(0, &pairs.f_select(1, 0)?)?.f_logical_and(&keep.f_index_select(0, &pairs.f_select(1, 1)?)?)?;
            pairs = pairs.f_index(&[Some(both)])?;
            if node_mask == before {
                break;
            }
        }
        // In the whole graph, row-major: kept indices increase with node indices.
        let order = pairs.f_select(1, 0)?.f_mul_scalar(kept.len() as i64)?.f_add(&pairs.f_select(1, 1)?)?.f_argsort(0, false)?;
        let edges = kept_t.f_index_select(0, &pairs.f_index_select(0, &order)?.f_flatten(0, -1)?)?.f_view([-1, 2])?;
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
