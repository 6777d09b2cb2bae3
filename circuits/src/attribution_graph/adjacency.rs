//! A graph's adjacency matrix, held by its rows: only the nodes that have inputs (features and
//! logits) have a row, in memory or, when the rows would not fit the memory budget, in a
//! temporary file that is read back a block of rows (about 8 MB) at a time. Everything that reads
//! the matrix (pruning, scores, exports, total effects) reads it by blocks, so a graph held in a
//! file needs memory for a block and for what it keeps, not for n_nodes^2 entries.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Entries per block of rows read at once (8 MB of f32).
const BLOCK_ENTRIES: i64 = 2_000_000;

/// What reading the rows of a graph held in a file costs in memory: a block of `rows` rows of `n`
/// entries at most, as bytes read, in f32 and in f64 while it is used (32 bytes an entry).
pub(super) fn block_bytes(rows: i64, n: i64) -> u64 {
    32 * BLOCK_ENTRIES.min(rows * n) as u64
}

/// The adjacency [n_nodes, n_nodes] (f32) of a graph, `a[target, source]`: the direct effect of
/// the source on the target. Only the rows of targets are stored; every other row is zero.
pub struct Adjacency {
    n: i64,
    /// Stored row `i` holds the inputs of node `nodes[i]`.
    nodes: Vec<i64>,
    /// Node -> stored row, -1 for a node without one.
    row_of: Vec<i64>,
    store: Store,
}

enum Store {
    /// [capacity, n] (f32), the first `nodes.len()` rows stored.
    Memory(Tensor),
    /// Rows of n f32 one after another, in an unlinked temporary file (gone when it closes),
    /// and the path it had (for messages).
    File(File, PathBuf),
}

impl Adjacency {
    /// Room for `capacity` rows of `n` nodes in memory.
    pub(super) fn in_memory(capacity: i64, n: i64) -> Result<Self> {
        Ok(Adjacency { n, nodes: Vec::new(), row_of: vec![-1; n as usize], store: Store::Memory(Tensor::f_zeros([capacity, n], (Kind::Float, Device::Cpu))?) })
    }

    /// Rows of `n` nodes in a temporary file in `dir`; the file is unlinked at once, so it goes
    /// when the graph does, or the process.
    pub(super) fn in_file(dir: &Path, n: i64) -> Result<Self> {
        let path = dir.join(format!(
            "interp-adjacency-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(Error::io(&path))?;
        std::fs::remove_file(&path).map_err(Error::io(&path))?;
        Ok(Adjacency { n, nodes: Vec::new(), row_of: vec![-1; n as usize], store: Store::File(file, path) })
    }

    /// A dense [n, n] matrix, every row stored (small graphs, tests).
    pub fn from_dense(a: &Tensor) -> Result<Self> {
        let n = a.size()[0];
        if a.size() != [n, n] {
            return Err(Error::Input(format!("an adjacency matrix is square; got {:?}", a.size())));
        }
        let mut adjacency = Adjacency::in_memory(n, n)?;
        adjacency.push(&(0..n as usize).collect::<Vec<_>>(), &a.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)?;
        Ok(adjacency)
    }

    /// Stores the rows of `targets`, `rows` [targets, k] over the first k <= n sources (the
    /// others zero).
    pub(super) fn push(&mut self, targets: &[usize], rows: &Tensor) -> Result<()> {
        let (r, k) = (rows.size()[0], rows.size()[1]);
        let first = self.nodes.len() as i64;
        match &mut self.store {
            Store::Memory(t) => {
                if first + r > t.size()[0] {
                    return Err(Error::Input(format!("{} rows stored in room for {}", first + r, t.size()[0])));
                }
                t.f_narrow(0, first, r)?.f_narrow(1, 0, k)?.f_copy_(rows)?;
            }
            Store::File(file, path) => {
                let rows = rows.f_to_kind(Kind::Float)?.f_constant_pad_nd([0, self.n - k])?.f_contiguous()?;
                let mut bytes = vec![0u8; (r * self.n * 4) as usize];
                rows.f_copy_data_u8(&mut bytes, (r * self.n) as usize)?;
                file.write_all_at(&bytes, (first * self.n * 4) as u64).map_err(Error::io(path.as_path()))?;
            }
        }
        for (i, &t) in targets.iter().enumerate() {
            self.row_of[t] = first + i as i64;
            self.nodes.push(t as i64);
        }
        Ok(())
    }

    /// Nodes (rows and columns).
    pub fn n_nodes(&self) -> i64 {
        self.n
    }

    /// The node of each stored row.
    pub fn stored_nodes(&self) -> &[i64] {
        &self.nodes
    }

    /// Whether the rows are in a temporary file (the graph did not fit the memory budget).
    pub fn in_a_file(&self) -> bool {
        matches!(self.store, Store::File(..))
    }

    /// Stored rows `start..start + len` [len, n] (f32).
    pub fn stored(&self, start: i64, len: i64) -> Result<Tensor> {
        match &self.store {
            Store::Memory(t) => Ok(t.f_narrow(0, start, len)?),
            Store::File(file, path) => {
                let mut bytes = vec![0u8; (len * self.n * 4) as usize];
                file.read_exact_at(&mut bytes, (start * self.n * 4) as u64).map_err(Error::io(path.as_path()))?;
                Ok(Tensor::f_from_data_size(&bytes, &[len, self.n], Kind::Float)?)
            }
        }
    }

    /// Stored rows `rows` (any order) [rows, n] (f32).
    fn stored_at(&self, rows: &[i64]) -> Result<Tensor> {
        match &self.store {
            Store::Memory(t) => Ok(t.f_index_select(0, &Tensor::f_from_slice(rows)?)?),
            Store::File(..) => {
                let parts = rows.iter().map(|&r| self.stored(r, 1)).collect::<Result<Vec<_>>>()?;
                if parts.is_empty() {
                    return Ok(Tensor::f_zeros([0, self.n], (Kind::Float, Device::Cpu))?);
                }
                Ok(Tensor::f_cat(&parts, 0)?)
            }
        }
    }

    /// The inputs of `node` [n] (f32); zero for a node without a row.
    pub fn row(&self, node: usize) -> Result<Tensor> {
        match self.row_of.get(node) {
            None => Err(Error::Input(format!("node {node} is not in the graph, which has {} nodes", self.n))),
            Some(&r) if r >= 0 => Ok(self.stored(r, 1)?.f_squeeze_dim(0)?),
            Some(_) => Ok(Tensor::f_zeros([self.n], (Kind::Float, Device::Cpu))?),
        }
    }

    /// The whole matrix [n, n] (f32): n^2 entries, for small graphs.
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut dense = Tensor::f_zeros([self.n, self.n], (Kind::Float, Device::Cpu))?;
        for (start, len) in self.blocks() {
            let nodes = Tensor::f_from_slice(&self.nodes[start as usize..(start + len) as usize])?;
            let _ = dense.f_index_copy_(0, &nodes, &self.stored(start, len)?)?;
        }
        Ok(dense)
    }

    /// The entries at `pairs` [m, 2] (target, source) (f64 [m]), reading each target's row once.
    pub fn at(&self, pairs: &Tensor) -> Result<Tensor> {
        let flat = Vec::<i64>::try_from(&pairs.f_flatten(0, -1)?)?;
        let mut by_row: BTreeMap<i64, Vec<(usize, i64)>> = BTreeMap::new();
        let mut values = vec![0f64; flat.len() / 2];
        for (i, pair) in flat.chunks(2).enumerate() {
            let (target, source) = (pair[0], pair[1]);
            if target < 0 || target >= self.n || source < 0 || source >= self.n {
                return Err(Error::Input(format!("edge ({target}, {source}) is outside a graph of {} nodes", self.n)));
            }
            let r = self.row_of[target as usize];
            if r >= 0 {
                by_row.entry(r).or_default().push((i, source));
            }
        }
        let rows: Vec<i64> = by_row.keys().copied().collect();
        for chunk in rows.chunks(rows_per_block(self.n)) {
            let block = self.stored_at(chunk)?.f_to_kind(Kind::Double)?;
            for (j, r) in chunk.iter().enumerate() {
                let row = Vec::<f64>::try_from(&block.f_get(j as i64)?)?;
                for &(i, source) in &by_row[r] {
                    values[i] = row[source as usize];
                }
            }
        }
        Ok(Tensor::f_from_slice(&values)?)
    }

    /// The stored rows of the nodes `keep` (increasing), and the index in `keep` of each one's node.
    pub(super) fn rows_of(&self, keep: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let mut position = vec![-1i64; self.n as usize];
        for (j, &i) in keep.iter().enumerate() {
            position[i as usize] = j as i64;
        }
        (0..self.nodes.len() as i64).map(|r| (r, position[self.nodes[r as usize] as usize])).filter(|(_, j)| *j >= 0).unzip()
    }

    /// The submatrix of the nodes `keep` (increasing), in the same kind of store: stored rows of
    /// kept nodes, columns `keep`.
    pub(super) fn select(&self, keep: &[i64], dir: &Path) -> Result<Adjacency> {
        let k = keep.len() as i64;
        let (rows, targets) = self.rows_of(keep);
        let mut out = if self.in_a_file() { Adjacency::in_file(dir, k)? } else { Adjacency::in_memory(rows.len() as i64, k)? };
        let columns = Tensor::f_from_slice(keep)?;
        let step = rows_per_block(self.n);
        for (chunk, targets) in rows.chunks(step).zip(targets.chunks(step)) {
            let targets: Vec<usize> = targets.iter().map(|&j| j as usize).collect();
            out.push(&targets, &self.stored_at(chunk)?.f_index_select(1, &columns)?)?;
        }
        Ok(out)
    }
}

/// Rows of `width` entries in a block of about 8 MB (at least one).
fn rows_per_block(width: i64) -> usize {
    (BLOCK_ENTRIES / width.max(1)).max(1) as usize
}

/// (first row, rows) of blocks of about 8 MB over `rows` rows of `width` entries.
fn blocks(rows: i64, width: i64) -> Vec<(i64, i64)> {
    let step = rows_per_block(width);
    (0..rows).step_by(step).map(|start| (start, (step as i64).min(rows - start))).collect()
}

/// A matrix read a block of rows at a time: the stored rows of an [`Adjacency`], or its
/// submatrix of some stored rows and some columns.
pub(super) trait RowBlocks {
    /// (rows, columns).
    fn shape(&self) -> (i64, i64);
    /// (first row, rows) of each block.
    fn blocks(&self) -> Vec<(i64, i64)>;
    /// Rows `start..start + len` [len, columns] (f32).
    fn read(&self, start: i64, len: i64) -> Result<Tensor>;
}

impl RowBlocks for Adjacency {
    fn shape(&self) -> (i64, i64) {
        (self.nodes.len() as i64, self.n)
    }

    fn blocks(&self) -> Vec<(i64, i64)> {
        blocks(self.nodes.len() as i64, self.n)
    }

    fn read(&self, start: i64, len: i64) -> Result<Tensor> {
        self.stored(start, len)
    }
}

/// The stored rows `rows` of an adjacency at the columns `columns` (a pruned graph's nodes).
pub(super) struct Submatrix<'a> {
    pub(super) adjacency: &'a Adjacency,
    pub(super) rows: Vec<i64>,
    pub(super) columns: Tensor,
}

impl RowBlocks for Submatrix<'_> {
    fn shape(&self) -> (i64, i64) {
        (self.rows.len() as i64, self.columns.size()[0])
    }

    fn blocks(&self) -> Vec<(i64, i64)> {
        blocks(self.rows.len() as i64, self.adjacency.n)
    }

    fn read(&self, start: i64, len: i64) -> Result<Tensor> {
        Ok(self.adjacency.stored_at(&self.rows[start as usize..(start + len) as usize])?.f_index_select(1, &self.columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution_graph::{AttributionGraph, Node};

    /// A graph of 2 layers x 5 positions: 4 features per (layer, position) after position 0,
    /// errors, tokens and 3 logits, with deterministic edges from earlier nodes, every row of a
    /// feature or logit stored in `store`.
    fn graph(in_file: bool) -> Result<AttributionGraph> {
        let mut nodes = Vec::new();
        for layer in 0..2 {
            for pos in 1..5 {
                nodes.extend((0..4).map(|feature| Node::Feature { layer, pos, feature, activation: 1.0 }));
            }
        }
        let n_features = nodes.len();
        nodes.extend((0..2).flat_map(|layer| (0..5).map(move |pos| Node::Error { layer, pos })));
        nodes.extend((0..5).map(|pos| Node::Token { pos, token: pos + 7 }));
        nodes.extend([0.5, 0.3, 0.2].map(|probability| Node::Logit { token: 1, probability }));
        let n = nodes.len();
        let first_logit = n - 3;
        let targets: Vec<usize> = (first_logit..n).chain(0..n_features).collect();
        let mut adjacency = if in_file { Adjacency::in_file(&std::env::temp_dir(), n as i64)? } else { Adjacency::in_memory(targets.len() as i64, n as i64)? };
        for chunk in targets.chunks(5) {
            let rows: Vec<f32> = chunk
                .iter()
                .flat_map(|&t| {
                    (0..first_logit).map(move |s| {
                        let from_earlier = s >= n_features || s < t.min(first_logit) && (s / 16) < (t / 16);
                        let v = ((t * 37 + s * 11) % 17) as f32 - 8.0;
                        if from_earlier && (t + s) % 3 != 0 {
                            v / 4.0
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            adjacency.push(chunk, &Tensor::from_slice(&rows).view([chunk.len() as i64, first_logit as i64]))?;
        }
        let (values, biases) = (Tensor::zeros([n as i64], (Kind::Double, Device::Cpu)), Tensor::zeros([n as i64], (Kind::Double, Device::Cpu)));
        Ok(AttributionGraph { tokens: vec![7, 8, 9, 10, 11], n_layers: 2, nodes, adjacency, values, biases, features_left_out: 0 })
    }

    #[test]
    fn rows_in_a_file_read_back_as_rows_in_memory() -> Result<()> {
        let (memory, file) = (graph(false)?, graph(true)?);
        assert!(file.adjacency.in_a_file() && !memory.adjacency.in_a_file());
        let dense = memory.adjacency.to_dense()?;
        assert!(dense.abs().sum(Kind::Double).double_value(&[]) > 100.0);
        assert!(file.adjacency.to_dense()?.equal(&dense));
        // Rows by node, zero for nodes without one; entries at pairs; a submatrix.
        for node in [0, 20, 40, file.nodes.len() - 1] {
            assert!(file.adjacency.row(node)?.equal(&dense.get(node as i64)));
        }
        let pairs = Tensor::from_slice(&[48i64, 3, 20, 1, 49, 40]).view([3, 2]);
        let want = dense.index(&[Some(pairs.select(1, 0)), Some(pairs.select(1, 1))]).to_kind(Kind::Double);
        assert!(file.adjacency.at(&pairs)?.equal(&want));
        assert!(file.adjacency.at(&Tensor::from_slice(&[0i64, 999]).view([1, 2])).is_err());
        let keep: Vec<i64> = (0..file.nodes.len() as i64).filter(|i| i % 3 != 1).collect();
        let index = Tensor::from_slice(&keep);
        let sub = file.adjacency.select(&keep, &std::env::temp_dir())?;
        assert!(sub.in_a_file());
        assert!(sub.to_dense()?.equal(&dense.index_select(0, &index).index_select(1, &index)));
        // The same pruning, scores and total effects.
        let (a, b) = (memory.prune(0.8, 0.98)?, file.prune(0.8, 0.98)?);
        assert_eq!(a.node_mask, b.node_mask);
        assert!(a.edges.equal(&b.edges) && a.n_edges() > 20, "{}", a.n_edges());
        assert_eq!(a.influence, b.influence);
        assert_eq!(memory.replacement_and_completeness()?, file.replacement_and_completeness()?);
        assert_eq!(memory.total_effects(file.nodes.len() - 1)?, file.total_effects(file.nodes.len() - 1)?);
        Ok(())
    }
}
