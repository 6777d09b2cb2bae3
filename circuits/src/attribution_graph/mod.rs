//! Transcoder feature circuits: attribution graphs of a prompt (circuit-tracer's method) and
//! weight-based feature-to-feature connections (the transcoder paper's).
//!
//! **Replacement model.** Every MLP is replaced by its transcoder plus an error term (the
//! difference to the true MLP output at this prompt), attention patterns and norm scales are
//! frozen at their values on the prompt. What remains is linear in the *sources*: token
//! embeddings, transcoder feature activations, error terms; everything else (biases, positional
//! embeddings, decoder biases) is a constant. The direct effect of a source on a target (a feature's
//! pre-activation, or a logit minus the mean logit) is the source's activation times the gradient
//! of the target w.r.t. it, through attention and the residual stream but not through other
//! features. So for every target, the sum of its incoming edge weights plus its bias (the target's
//! value with every source at zero) is its value: [`AttributionGraph::completeness_error`].
//!
//! Gradients come from backward passes in batches: the prompt is repeated on the batch axis and
//! each row reads out a different target, so one backward gives `batch_size` rows of the
//! adjacency matrix.
//!
//! ```no_run
//! use circuits::attribution_graph::{attribution_graph, GraphConfig};
//! use interp_core::HookedTransformer;
//! let model = HookedTransformer::from_pretrained_dir("models/shakespeare-gpt2", tch::Device::Cpu, tch::Kind::Float)?;
//! // One transcoder per layer, or a cross-layer transcoder.
//! let transcoders = transcoders::load_transcoder_set("models/shakespeare-gpt2/transcoders", tch::Device::Cpu)?;
//! let tokens = model.tokenizer().expect("tokenizer").encode("To be, or not to be", true)?;
//! let graph = attribution_graph(&model, &transcoders, &tokens, &GraphConfig::default())?;
//! let pruned = graph.prune(0.8, 0.98)?;
//! println!("{} nodes, {} kept; completeness error {:.1e}", graph.nodes.len(), pruned.n_nodes(), graph.completeness_error()?);
//! # Ok::<(), circuits::Error>(())
//! ```
//!
//! Files: `replacement.rs` (the linearised replacement model and the backward passes that read
//! the adjacency), `prune.rs` (influence pruning), `export.rs` (circuit-tracer's JSON, our HTML
//! view), `connections.rs` (weight-based feature connections), `qk.rs` (why a head attends
//! where it does: a score split into pairs of sources), `intervention.rs` (the graph's predictions
//! beside interventions in the model's forward).

mod adjacency;
mod connections;
mod export;
mod intervention;
mod prune;
mod qk;
mod replacement;

use interp_core::HookedTransformer;
use tch::{Device, Kind, Tensor};
use transcoders::TranscoderSet;

use crate::budget::MemoryBudget;
use crate::error::{Error, Result};

pub use adjacency::Adjacency;
pub use connections::{de_embedding, feature_connections, residual_encoder, FeatureConnections};
pub use export::{cantor, Subgraph};
pub use intervention::{check_by_intervention, Freeze, Intervention, InterventionCheck};
pub use prune::Pruned;
pub use qk::{qk_attribution, source_name, QkAttribution, QkPair, QkSource};
pub use replacement::check_transcoders;
use replacement::{expand, read, Leaves, Replacement};

/// How a graph is built and pruned.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// At most this many logit targets: the most likely next tokens ...
    pub max_logits: usize,
    /// ... until their probabilities add up to this.
    pub logit_probability: f64,
    /// Targets per backward pass.
    pub batch_size: i64,
    /// Show a progress bar over the backward passes.
    pub progress: bool,
    /// Memory the graph may hold on top of the model's weights: the transcoders, the adjacency's
    /// rows and the backward passes (rows per pass are cut to fit). Rows that would leave no room
    /// for a full batch of targets go to a temporary file in the system's temporary directory
    /// (`TMPDIR`, n_nodes^2 x 4 bytes), read back a block at a time; a prompt whose graph cannot
    /// fit even so is an error stating the budget it needs.
    pub budget: MemoryBudget,
    /// Keep features and errors at position 0 as nodes. By default, as circuit-tracer does, they
    /// are left out: position 0 (BOS, an attention sink) has outsized activations that explain
    /// nothing about the prompt, and its MLP output becomes part of every target's bias.
    pub keep_position_0: bool,
    /// At most this many feature nodes (circuit-tracer's `max_feature_nodes`): after the logits'
    /// rows, the features of highest influence on the logits through the rows computed so far
    /// are attributed next, until this many are; the others are no nodes and their edges are
    /// dropped (so completeness holds only up to them). Bounds the time and the rows held,
    /// [max + logits, all nodes], for long prompts. `None`: every active feature.
    pub max_feature_nodes: Option<usize>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            max_logits: 10,
            logit_probability: 0.95,
            batch_size: 32,
            progress: false,
            budget: MemoryBudget::DEFAULT,
            keep_position_0: false,
            max_feature_nodes: None,
        }
    }
}

/// A node of an attribution graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// An active transcoder feature at (layer, position).
    Feature {
        /// The transcoder's layer.
        layer: usize,
        /// Position in the prompt.
        pos: i64,
        /// Index of the feature in its transcoder.
        feature: i64,
        /// Its activation on the prompt.
        activation: f64,
    },
    /// The transcoder's error at (layer, position): true MLP output minus the reconstruction.
    Error {
        /// The transcoder's layer.
        layer: usize,
        /// Position in the prompt.
        pos: i64,
    },
    /// The token embedding at a position.
    Token {
        /// Position in the prompt.
        pos: i64,
        /// Token id.
        token: i64,
    },
    /// A candidate next token at the last position (its logit minus the mean logit).
    Logit {
        /// Token id.
        token: i64,
        /// Its probability as the next token.
        probability: f64,
    },
}

/// The direct-effect graph of one prompt.
pub struct AttributionGraph {
    /// The prompt's token ids.
    pub tokens: Vec<i64>,
    /// Layers of the model.
    pub n_layers: usize,
    /// In circuit-tracer's order: features (by layer, position, feature), errors (by layer, then
    /// position), tokens, logits.
    pub nodes: Vec<Node>,
    /// [n_nodes, n_nodes] (f32): `adjacency[target, source]` is the direct effect of the source
    /// on the target. Only the rows of features and logits are stored (those of errors and
    /// tokens are zero), in memory or in a temporary file.
    pub adjacency: Adjacency,
    /// [n_nodes] (f64): each target's value (pre-activation, or demeaned logit); 0 for sources.
    pub values: Tensor,
    /// [n_nodes] (f64): each target's value with every source at zero.
    pub biases: Tensor,
    /// Active features that are no nodes because of [`GraphConfig::max_feature_nodes`]; their
    /// edges are dropped, so a target's edges plus bias fall short of its value by theirs.
    pub features_left_out: usize,
}

/// The attribution graph of `tokens` (one prompt, BOS included if the model expects it) for a
/// model whose MLPs `transcoders` replace (one per layer, in order, or a cross-layer transcoder:
/// then each active latent is one node, its edges out reaching every layer it writes to).
pub fn attribution_graph(model: &HookedTransformer, transcoders: &TranscoderSet, tokens: &[i64], cfg: &GraphConfig) -> Result<AttributionGraph> {
    if tokens.is_empty() {
        return Err(Error::Input("an attribution graph needs a non-empty prompt".into()));
    }
    if tokens.len() as i64 > model.cfg.n_ctx {
        return Err(Error::Input(format!("the prompt has {} tokens, longer than the model's context of {}", tokens.len(), model.cfg.n_ctx)));
    }
    if cfg.batch_size < 1 {
        return Err(Error::setting("batch_size", cfg.batch_size, "at least 1 target per backward pass"));
    }
    if cfg.max_logits < 1 {
        return Err(Error::setting("max_logits", cfg.max_logits, "at least 1 logit target"));
    }
    if !(cfg.logit_probability > 0.0 && cfg.logit_probability <= 1.0) {
        return Err(Error::setting("logit_probability", cfg.logit_probability, "in (0, 1]"));
    }
    let rep = Replacement::new(model, transcoders, tokens, !cfg.keep_position_0)?;
    let n_layers = model.cfg.n_layers;
    let n_pos = tokens.len() as i64;

    // Nodes: active features, errors, tokens, top logits.
    let mut nodes = Vec::new();
    for (layer, a) in rep.clean.active.iter().enumerate() {
        let cpu = |t: &Tensor| t.f_to_device(Device::Cpu);
        let (pos, feature) = (Vec::<i64>::try_from(&cpu(&a.pos)?)?, Vec::<i64>::try_from(&cpu(&a.feature)?)?);
        let values = Vec::<f64>::try_from(&cpu(&a.values)?.f_to_kind(Kind::Double)?)?;
        for ((pos, feature), activation) in pos.into_iter().zip(feature).zip(values) {
            nodes.push(Node::Feature { layer, pos, feature, activation });
        }
    }
    let n_features = nodes.len();
    for layer in 0..n_layers {
        nodes.extend((0..n_pos).map(|pos| Node::Error { layer, pos }));
    }
    nodes.extend(tokens.iter().enumerate().map(|(pos, &token)| Node::Token { pos: pos as i64, token }));
    let probs = rep.clean.logits.f_softmax(-1, Kind::Double)?;
    let (top_p, top_i) = probs.f_topk(cfg.max_logits.min(model.cfg.d_vocab_out as usize) as i64, -1, true, true)?;
    let (top_p, top_i) = (Vec::<f64>::try_from(&top_p.f_to_device(Device::Cpu)?)?, Vec::<i64>::try_from(&top_i.f_to_device(Device::Cpu)?)?);
    let mut covered = 0.0;
    for (p, t) in top_p.into_iter().zip(top_i) {
        nodes.push(Node::Logit { token: t, probability: p });
        covered += p;
        if covered >= cfg.logit_probability {
            break;
        }
    }
    let n = nodes.len();
    let first_logit = n_features + (n_layers + 1) * n_pos as usize;
    let n_logits = n - first_logit;
    let n_kept = cfg.max_feature_nodes.map_or(n_features, |m| m.min(n_features));
    // Memory: the transcoders stay, and the rows computed, [n_kept + n_logits, n] (f32), or a
    // block of them when they are in a file. Each row of a backward pass holds at most (a pass
    // over every block and position) the leaves (features of every layer, errors, embeddings),
    // their gradients, what the features decode to at each position of each layer they write,
    // and the forward's activations for the backward.
    let d_model = model.cfg.d_model as u64;
    let written: u64 = rep.clean.active.iter().map(|a| a.decoders.len() as u64).sum();
    let per_row = (4 * n_features as u64 + n_pos as u64 * d_model * (2 * written + 3 * (n_layers as u64 + 1) + 12 * n_layers as u64)) * 4;
    let rows_held = (n_kept + n_logits) as u64;
    let what = format!(
        "an attribution graph of {n} nodes ({n_pos} tokens{})",
        if n_kept < n_features { format!(", {n_kept} of {n_features} features") } else { String::new() }
    );
    // The rows in memory if a full batch of targets still fits beside them (or no more would
    // with them in a file), else in a file, read back a block at a time.
    let fits = |held: u64| cfg.budget.rows(transcoders.n_bytes() + held, per_row, &what);
    let (memory_bytes, file_bytes) = (rows_held * n as u64 * 4, adjacency::block_bytes(rows_held as i64, n as i64));
    let memory_rows = fits(memory_bytes).unwrap_or(0);
    let in_memory = memory_rows > 0 && (memory_rows >= cfg.batch_size || memory_rows >= fits(file_bytes).unwrap_or(0));
    let rows = fits(if in_memory { memory_bytes } else { file_bytes })?;
    let batch_size = cfg.batch_size.min(rows) as usize;
    let adjacency = if in_memory {
        Adjacency::in_memory(rows_held as i64, n as i64)?
    } else {
        let dir = std::env::temp_dir();
        let (needed, free) = (rows_held * n as u64 * 4, interp_core::free_disk_bytes(&dir).unwrap_or(u64::MAX));
        if needed > free {
            let what =
                format!("{what}, its rows in a file (they do not fit the memory budget; set TMPDIR to a larger disk, raise the budget or limit the features)");
            return Err(Error::DiskSpace { dir, needed, free, what });
        }
        Adjacency::in_file(&dir, n as i64)?
    };
    let mut rows = Rows::new(&rep, &nodes, adjacency)?;
    let bar = interp_core::train::progress_bar((n_kept + n_logits) as u64, "targets", cfg.progress);
    let logits: Vec<usize> = (first_logit..n).collect();
    for chunk in logits.chunks(batch_size) {
        rows.compute(chunk)?;
        bar.inc(chunk.len() as u64);
    }
    // Features in node order (layer, position), a pass never across two layers: each pass then
    // runs the replacement model only up to its layer and its last position.
    let layer = |f: usize| if let Node::Feature { layer, .. } = nodes[f] { layer } else { usize::MAX };
    let mut visited = vec![false; n_features];
    let mut n_visited = 0;
    while n_visited < n_kept {
        // All features, in order; or (circuit-tracer's feature limit) the unvisited ones of
        // highest influence on the logits through the rows computed so far, four passes' worth.
        let pending: Vec<usize> = if n_kept == n_features {
            (0..n_features).collect()
        } else {
            let influence = rows.partial_influence()?;
            let mut order: Vec<usize> = (0..n_features).filter(|&f| !visited[f]).collect();
            order.sort_by(|&a, &b| influence[b].total_cmp(&influence[a]));
            order.truncate((4 * batch_size).min(n_kept - n_visited));
            order.sort_unstable();
            order
        };
        for chunk in pending.chunk_by(|&a, &b| layer(a) == layer(b)).flat_map(|same| same.chunks(batch_size)) {
            rows.compute(chunk)?;
            for &f in chunk {
                visited[f] = true;
            }
            n_visited += chunk.len();
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    rows.into_graph(tokens, n_layers, &visited)
}

/// The rows of the adjacency computed so far: one per target (feature or logit), over every
/// source of the full graph, with their values and biases.
struct Rows<'r, 'a> {
    rep: &'r Replacement<'a>,
    nodes: &'r [Node],
    adjacency: Adjacency,
    values: Vec<f64>,
    biases: Vec<f64>,
    /// The readout of every target with every source at zero (their biases' forward).
    zero_run: (Vec<Tensor>, Option<Tensor>),
}

impl<'r, 'a> Rows<'r, 'a> {
    fn new(rep: &'r Replacement<'a>, nodes: &'r [Node], adjacency: Adjacency) -> Result<Self> {
        let zero_run = tch::no_grad(|| rep.forward(&Leaves::zeros(&rep.clean)?, rep.full_span()))?;
        Ok(Rows { rep, nodes, adjacency, values: Vec::new(), biases: Vec::new(), zero_run })
    }

    /// Computes the rows of `chunk` (node indices of features or logits) in one backward pass,
    /// through the part of the replacement model they read (their [`Span`]).
    fn compute(&mut self, chunk: &[usize]) -> Result<()> {
        let rep = self.rep;
        let span = rep.span(self.nodes, chunk);
        let rows = chunk.len() as i64;
        let readout = rep.readout(self.nodes, chunk, span)?;
        let (zero_in, zero_final) = &self.zero_run;
        let zero = |x: &Tensor| expand(&x.f_squeeze_dim(0)?.f_narrow(0, 0, span.pos)?, rows);
        let zero_x: Vec<Tensor> = zero_in.iter().take(span.blocks).map(zero).collect::<std::result::Result<_, _>>()?;
        let zero_final = zero_final.as_ref().filter(|_| span.logits).map(zero).transpose()?;
        let bias = read(&zero_x, zero_final.as_ref(), &readout)?;
        let leaves = Leaves::repeat(&rep.clean, rows, span.pos)?;
        let (x_in, x_final) = rep.forward(&leaves, span)?;
        let value = read(&x_in, x_final.as_ref(), &readout)?;
        let all = leaves.all();
        let grads = Tensor::f_run_backward(&[value.f_sum(Kind::Double)?], &all, false, false)?;
        // Gradients over the span, zero past it: [rows, n] per kind of source, as the graph's columns.
        let grad = |i: usize| -> Result<Tensor> {
            let g = &grads[i];
            Ok(if g.defined() { g.shallow_clone() } else { all[i].f_zeros_like()? })
        };
        let pad = |t: Tensor, n: i64| -> Result<Tensor> { Ok(t.f_constant_pad_nd([0, n - t.size()[1]])?) };
        let n_pos = rep.clean.embed.size()[0];
        let mut cols = Vec::with_capacity(2 * rep.clean.active.len() + 1);
        for (l, a) in rep.clean.active.iter().enumerate() {
            // Edge = the source's activation times the gradient of the target w.r.t. it.
            let values = a.values.f_narrow(0, 0, leaves.acts[l].size()[1])?.f_to_kind(Kind::Float)?;
            cols.push(pad(grad(1 + l)?.f_to_kind(Kind::Float)?.f_mul(&values)?, a.values.size()[0])?);
        }
        for (l, error) in rep.clean.errors.iter().enumerate() {
            let g = grad(1 + rep.clean.active.len() + l)?;
            cols.push(pad(g.f_mul(&error.f_narrow(0, 0, span.pos)?)?.f_sum_dim_intlist(-1, false, Kind::Float)?, n_pos)?);
        }
        cols.push(pad(grad(0)?.f_mul(&rep.clean.embed.f_narrow(0, 0, span.pos)?)?.f_sum_dim_intlist(-1, false, Kind::Float)?, n_pos)?);
        let block = Tensor::f_cat(&cols, 1)?.f_to_device(Device::Cpu)?; // [rows, sources]: every node before the logits
        self.adjacency.push(chunk, &block)?;
        for i in 0..chunk.len() as i64 {
            self.biases.push(bias.f_double_value(&[i])?);
            self.values.push(value.f_double_value(&[i])?);
        }
        Ok(())
    }

    /// Every node's influence on the logits (weighted by their probabilities) through the rows
    /// computed so far (circuit-tracer's `compute_partial_influences`).
    fn partial_influence(&self) -> Result<Vec<f64>> {
        let rows = Tensor::f_from_slice(self.adjacency.stored_nodes())?;
        Ok(Vec::<f64>::try_from(&prune::influence(&prune::Normalized::new(&self.adjacency)?, &rows, &prune::logit_weights(self.nodes)?)?)?)
    }

    /// The graph of the features visited (all, or those the feature limit chose), errors,
    /// tokens and logits, with the rows computed.
    fn into_graph(self, tokens: &[i64], n_layers: usize, visited: &[bool]) -> Result<AttributionGraph> {
        let nodes = self.nodes;
        // Nodes kept: the visited features, then every error, token and logit node.
        let keep: Vec<i64> = (0..nodes.len()).filter(|&i| i >= visited.len() || visited[i]).map(|i| i as i64).collect();
        let (mut values, mut biases) = (vec![0f64; keep.len()], vec![0f64; keep.len()]);
        let (rows, at) = self.adjacency.rows_of(&keep);
        for (r, j) in rows.into_iter().zip(at) {
            values[j as usize] = self.values[r as usize];
            biases[j as usize] = self.biases[r as usize];
        }
        let adjacency = if keep.len() == nodes.len() { self.adjacency } else { self.adjacency.select(&keep, &std::env::temp_dir())? };
        let nodes: Vec<Node> = keep.iter().map(|&i| nodes[i as usize].clone()).collect();
        let features_left_out = visited.iter().filter(|v| !**v).count();
        Ok(AttributionGraph {
            tokens: tokens.to_vec(),
            n_layers,
            nodes,
            adjacency,
            values: Tensor::f_from_slice(&values)?,
            biases: Tensor::f_from_slice(&biases)?,
            features_left_out,
        })
    }
}

impl AttributionGraph {
    /// Feature nodes.
    pub fn n_features(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Feature { .. })).count()
    }

    /// Logit nodes.
    pub fn n_logits(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Logit { .. })).count()
    }

    /// circuit-tracer's `compute_graph_scores`, on the same normalised adjacency and influence as
    /// pruning: the **replacement score**, the share of the tokens' and errors' influence on the
    /// logits that the tokens carry (1: the logits are explained through features alone), and the
    /// **completeness score**, each node's share of non-error inputs weighted by its influence
    /// (plus its logit probability) on the output.
    pub fn replacement_and_completeness(&self) -> Result<(f64, f64)> {
        let a = prune::Normalized::new(&self.adjacency)?;
        let weights = prune::logit_weights(&self.nodes)?;
        let rows = Tensor::f_from_slice(self.adjacency.stored_nodes())?;
        let influence = Vec::<f64>::try_from(&prune::influence(&a, &rows, &weights)?)?;
        let is_error: Vec<bool> = self.nodes.iter().map(|n| matches!(n, Node::Error { .. })).collect();
        let share = |kind: fn(&Node) -> bool| self.nodes.iter().zip(&influence).filter(|(n, _)| kind(n)).map(|(_, v)| v).sum::<f64>();
        let (tokens, errors) = (share(|n| matches!(n, Node::Token { .. })), share(|n| matches!(n, Node::Error { .. })));
        let replacement = if tokens + errors > 0.0 { tokens / (tokens + errors) } else { 0.0 };
        let mask = Tensor::f_from_slice(&is_error.iter().map(|&e| f64::from(u8::from(e))).collect::<Vec<_>>())?;
        // A node without a row has no inputs, none of them errors.
        let error_share = Tensor::f_zeros([self.nodes.len() as i64], (Kind::Double, Device::Cpu))?.f_index_copy(0, &rows, &a.right(&mask)?)?;
        let non_error = Vec::<f64>::try_from(&error_share.f_neg()?.f_add_scalar(1.0)?)?;
        let output: Vec<f64> = influence.iter().zip(Vec::<f64>::try_from(&weights)?).map(|(i, w)| i + w).collect();
        let total: f64 = output.iter().sum();
        let completeness = if total > 0.0 { non_error.iter().zip(&output).map(|(f, o)| f * o).sum::<f64>() / total } else { 0.0 };
        Ok((replacement, completeness))
    }

    /// Largest |sum of incoming edges + bias - value| over all targets (0 up to rounding when the
    /// linearisation is exact).
    pub fn completeness_error(&self) -> Result<f64> {
        let rows = Tensor::f_from_slice(self.adjacency.stored_nodes())?;
        let sums =
            Tensor::f_zeros([self.nodes.len() as i64], (Kind::Double, Device::Cpu))?.f_index_copy(0, &rows, &prune::row_sums(&self.adjacency, false)?)?;
        Ok(sums.f_add(&self.biases)?.f_sub(&self.values)?.f_abs()?.f_max()?.f_double_value(&[])?)
    }
}
