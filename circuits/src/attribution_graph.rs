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
//! let transcoders = transcoders::load_transcoder_set("models/shakespeare-gpt2/transcoders", tch::Device::Cpu)?;
//! let tokens = model.tokenizer().expect("tokenizer").encode("To be, or not to be", true)?;
//! let graph = attribution_graph(&model, &transcoders, &tokens, &GraphConfig::default())?;
//! let pruned = graph.prune(0.8, 0.98)?;
//! println!("{} nodes, {} kept; completeness error {:.1e}", graph.nodes.len(), pruned.n_nodes(), graph.completeness_error()?);
//! # Ok::<(), circuits::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks, NormSite};
use serde_json::json;
use tch::{Device, Kind, Tensor};
use transcoders::{html_escape, Architecture, DictionaryKind, SparseDictionary};

use crate::error::{Error, Result};

/// Styles the fragment of [`AttributionGraph::html_view`] needs.
pub const GRAPH_CSS: &str = ".axis{font-size:13px;fill:#444} .tok{font-size:13px;font-family:monospace}";

/// Writes a self-contained HTML page around `view`, a fragment of [`AttributionGraph::html_view`].
pub fn write_graph_page(path: &Path, title: &str, view: &str) -> Result<()> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:20px}} {GRAPH_CSS}</style></head><body>\n<h2>{t}</h2>\n{view}</body></html>\n",
        t = html_escape(title),
    );
    std::fs::write(path, html).map_err(Error::io(path))
}

/// How a graph is built and pruned.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// At most this many logit targets: the most likely next tokens ...
    pub max_logits: usize,
    /// ... until their probabilities add up to this.
    pub logit_probability: f64,
    /// Targets per backward pass.
    pub batch_size: i64,
    pub progress: bool,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig { max_logits: 10, logit_probability: 0.95, batch_size: 32, progress: false }
    }
}

/// A node of an attribution graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// An active transcoder feature at (layer, position).
    Feature { layer: usize, pos: i64, feature: i64, activation: f64 },
    /// The transcoder's error at (layer, position): true MLP output minus the reconstruction.
    Error { layer: usize, pos: i64 },
    /// The token embedding at a position.
    Token { pos: i64, token: i64 },
    /// A candidate next token at the last position (its logit minus the mean logit).
    Logit { token: i64, probability: f64 },
}

/// The direct-effect graph of one prompt.
pub struct AttributionGraph {
    pub tokens: Vec<i64>,
    pub n_layers: usize,
    /// In circuit-tracer's order: features (by layer, position, feature), errors (by layer, then
    /// position), tokens, logits.
    pub nodes: Vec<Node>,
    /// [n_nodes, n_nodes] (f32): `adjacency[target, source]` is the direct effect of the source
    /// on the target. Rows of error and token nodes are zero.
    pub adjacency: Tensor,
    /// [n_nodes] (f64): each target's value (pre-activation, or demeaned logit); 0 for sources.
    pub values: Tensor,
    /// [n_nodes] (f64): each target's value with every source at zero.
    pub biases: Tensor,
}

/// The transcoder input hooks an attribution graph can read, for layer `l`.
fn input_hooks(l: usize) -> [HookPoint; 3] {
    [BlockSite::Ln2Normalized, BlockSite::MlpIn, BlockSite::ResidMid].map(|s| HookPoint::block(l, s))
}

/// Checks that `transcoders` replace the MLPs of `model`, one per layer, in order.
pub fn check_transcoders(model: &HookedTransformer, transcoders: &[SparseDictionary]) -> Result<()> {
    let c = &model.cfg;
    if c.attn_only {
        return Err(Error::Input("the model is attention-only: there are no MLPs for transcoders to replace".into()));
    }
    if c.post_norms {
        return Err(Error::UnsupportedLayout("Gemma-2's norm after attention is not frozen by the replacement model".into()));
    }
    if transcoders.len() != c.n_layers {
        return Err(Error::Input(format!("{} transcoders for a model with {} layers: one per layer is needed", transcoders.len(), c.n_layers)));
    }
    for (l, tc) in transcoders.iter().enumerate() {
        let cfg = &tc.cfg;
        let what = format!("transcoder {l} (`{}` -> `{}`)", cfg.hook_name, cfg.hook_name_out);
        if cfg.kind == DictionaryKind::Sae {
            return Err(Error::Input(format!("{what} is an SAE, not a transcoder")));
        }
        if cfg.architecture == Architecture::Gated {
            return Err(Error::Input(format!("{what}: gated dictionaries are not supported in attribution graphs")));
        }
        let reads = cfg.hook_name.parse::<HookPoint>().ok();
        let writes = cfg.hook_name_out.parse::<HookPoint>().ok();
        if writes != Some(HookPoint::block(l, BlockSite::MlpOut)) || !reads.is_some_and(|p| input_hooks(l).contains(&p)) {
            return Err(Error::Input(format!(
                "{what} does not replace the MLP of layer {l}: it must read blocks.{l}.ln2.hook_normalized (or hook_mlp_in / hook_resid_mid) and write blocks.{l}.hook_mlp_out"
            )));
        }
        if cfg.d_in != c.d_model || cfg.d_out != c.d_model {
            return Err(Error::Input(format!("{what} maps {} -> {} dimensions, the model has d_model {}", cfg.d_in, cfg.d_out, c.d_model)));
        }
    }
    Ok(())
}

/// What the replacement model freezes or replaces, from one clean forward. Tensors have no batch axis.
struct Clean {
    ln1_scale: Vec<Tensor>,
    pattern: Vec<Tensor>,
    ln2_scale: Vec<Tensor>,
    final_scale: Tensor,
    embed: Tensor,
    acts: Vec<Tensor>,
    errors: Vec<Tensor>,
    logits: Tensor,
}

/// Sources of one linearised forward, [rows, pos, ..] each.
struct Leaves {
    embed: Tensor,
    acts: Vec<Tensor>,
    errors: Vec<Tensor>,
}

impl Leaves {
    /// The clean sources repeated `rows` times, as leaves that collect gradients.
    fn repeat(clean: &Clean, rows: i64) -> Result<Leaves> {
        let rep = |t: &Tensor| -> Result<Tensor> { Ok(t.f_unsqueeze(0)?.f_repeat([rows, 1, 1])?.f_detach()?.f_set_requires_grad(true)?) };
        Ok(Leaves {
            embed: rep(&clean.embed)?,
            acts: clean.acts.iter().map(rep).collect::<Result<_>>()?,
            errors: clean.errors.iter().map(rep).collect::<Result<_>>()?,
        })
    }

    fn zeros(clean: &Clean) -> Result<Leaves> {
        let zero = |t: &Tensor| -> Result<Tensor> { Ok(t.f_zeros_like()?.f_unsqueeze(0)?) };
        Ok(Leaves {
            embed: zero(&clean.embed)?,
            acts: clean.acts.iter().map(zero).collect::<Result<_>>()?,
            errors: clean.errors.iter().map(zero).collect::<Result<_>>()?,
        })
    }

    fn all(&self) -> Vec<&Tensor> {
        std::iter::once(&self.embed).chain(&self.acts).chain(&self.errors).collect()
    }
}

/// Readout vectors: row `b` of the batch reads `<x_in[layer][b], inject[layer][b]>` summed over
/// layers plus `<x_final[b], inject_final[b]>`, plus a constant.
struct Readout {
    inject: Vec<Tensor>,
    inject_final: Tensor,
    constant: Tensor,
}

struct Replacement<'a> {
    model: &'a HookedTransformer,
    transcoders: &'a [SparseDictionary],
    tokens: Tensor,
    clean: Clean,
}

fn expand(t: &Tensor, rows: i64) -> std::result::Result<Tensor, tch::TchError> {
    let mut shape = t.size();
    shape.insert(0, rows);
    t.f_unsqueeze(0)?.f_expand(shape.as_slice(), false)
}

impl<'a> Replacement<'a> {
    fn new(model: &'a HookedTransformer, transcoders: &'a [SparseDictionary], tokens: &[i64]) -> Result<Self> {
        check_transcoders(model, transcoders)?;
        let n = model.cfg.n_layers;
        let tokens = Tensor::f_from_slice(tokens)?.f_unsqueeze(0)?.f_to_device(model.device())?;
        let mut names = vec![HookPoint::Embed, HookPoint::LnFinalScale];
        for (l, tc) in transcoders.iter().enumerate() {
            names.extend([BlockSite::Ln1Scale, BlockSite::Pattern, BlockSite::Ln2Scale].map(|s| HookPoint::block(l, s)));
            names.extend([tc.cfg.hook_name.parse::<HookPoint>()?, tc.cfg.hook_name_out.parse()?]);
        }
        let (logits, cache) = tch::no_grad(|| model.run_with_cache(&tokens, CacheSpec::names(&names)))?;
        let get = |name: &str| -> Result<Tensor> { Ok(cache.get(name)?.f_squeeze_dim(0)?) };
        let at = |point: HookPoint| -> Result<Tensor> { Ok(cache.get(point)?.f_squeeze_dim(0)?) };
        let (mut acts, mut errors) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for tc in transcoders {
            let x = get(&tc.cfg.hook_name)?;
            let (a, recon) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
                let a = tc.encode(&x)?;
                let recon = tc.decode(&a, Some(&x))?;
                Ok((a, recon))
            })?;
            let out = get(&tc.cfg.hook_name_out)?.f_to_kind(recon.kind())?;
            errors.push(out.f_sub(&recon)?.f_to_kind(model.kind())?);
            acts.push(a);
        }
        let per_layer = |site: BlockSite| -> Result<Vec<Tensor>> { (0..n).map(|l| at(HookPoint::block(l, site))).collect() };
        let clean = Clean {
            ln1_scale: per_layer(BlockSite::Ln1Scale)?,
            pattern: per_layer(BlockSite::Pattern)?,
            ln2_scale: per_layer(BlockSite::Ln2Scale)?,
            final_scale: at(HookPoint::LnFinalScale)?,
            embed: at(HookPoint::Embed)?,
            acts,
            errors,
            logits: logits.f_select(0, 0)?.f_select(0, -1)?.f_to_kind(Kind::Double)?,
        };
        Ok(Replacement { model, transcoders, tokens, clean })
    }

    /// The linearised forward of `leaves`; returns the transcoder inputs [rows, pos, d_in] per
    /// layer and the final normalised residual [rows, pos, d_model].
    fn forward(&self, leaves: &Leaves) -> Result<(Vec<Tensor>, Tensor)> {
        let rows = leaves.embed.size()[0];
        let tokens = self.tokens.f_expand([rows, -1], false)?;
        let n = self.transcoders.len();
        let inputs: RefCell<Vec<Option<Tensor>>> = RefCell::new((0..n).map(|_| None).collect());
        let core = |e: Error| interp_core::Error::Input(e.to_string());
        let mut hooks = Hooks::new().add(HookPoint::Embed, |_, _| Ok(Some(leaves.embed.shallow_clone())));
        let c = &self.clean;
        for (l, tc) in self.transcoders.iter().enumerate() {
            let frozen = [(BlockSite::Ln1Scale, &c.ln1_scale[l]), (BlockSite::Pattern, &c.pattern[l]), (BlockSite::Ln2Scale, &c.ln2_scale[l])];
            for (site, value) in frozen {
                hooks = hooks.add(HookPoint::block(l, site), move |_, _| Ok(Some(expand(value, rows)?)));
            }
            let inputs = &inputs;
            hooks = hooks.add(tc.cfg.hook_name.clone(), move |x, _| {
                inputs.borrow_mut()[l] = Some(x.shallow_clone());
                Ok(None)
            });
            let (acts, err) = (&leaves.acts[l], &leaves.errors[l]);
            hooks = hooks.add(tc.cfg.hook_name_out.clone(), move |_, _| {
                let x = inputs.borrow()[l].as_ref().map(Tensor::shallow_clone);
                let out = tc.decode(acts, x.as_ref()).map_err(|e| core(e.into()))?;
                Ok(Some(out.f_to_kind(err.kind())?.f_add(err)?))
            });
        }
        // Stop after the last block and apply the final norm with its scale frozen: the
        // unembedding is never needed, targets read the normalised residual.
        let resid = self.model.runner(&tokens).hooks(hooks).stop_at_layer(n).autograd().run()?.output;
        let scale = expand(&c.final_scale, rows)?;
        let mut x_final = self.model.cfg.norm.centre(&resid.f_to_kind(scale.kind())?, -1)?.f_div(&scale)?;
        let (gain, bias) = self.model.norm_weights(NormSite::LnFinal)?;
        if let Some(g) = gain {
            x_final = x_final.f_mul(&g)?;
        }
        if let Some(b) = bias {
            x_final = x_final.f_add(&b)?;
        }
        let inputs = inputs.into_inner().into_iter().collect::<Option<Vec<_>>>();
        let inputs = inputs.ok_or_else(|| Error::Input("a transcoder input hook did not fire".into()))?;
        Ok((inputs, x_final.f_to_kind(self.model.kind())?))
    }

    /// The readout of `targets` (feature or logit nodes), one per row.
    fn readout(&self, nodes: &[Node], targets: &[usize]) -> Result<Readout> {
        let c = &self.model.cfg;
        let rows = targets.len() as i64;
        let pos = self.tokens.size()[1];
        let dev = self.model.device();
        let inject: Vec<Tensor> = (0..c.n_layers).map(|_| Tensor::f_zeros([rows, pos, c.d_model], (Kind::Float, dev))).collect::<std::result::Result<_, _>>()?;
        let inject_final = Tensor::f_zeros([rows, pos, c.d_model], (Kind::Float, dev))?;
        let mut constant = vec![0f64; targets.len()];
        let w_u = self.model.w_u().f_to_kind(Kind::Float)?;
        let mean_u = w_u.f_mean_dim(1, false, Kind::Float)?;
        let b_u_mean = self.model.b_u().map(|b| b.f_mean(Kind::Double)?.f_double_value(&[])).transpose()?;
        for (row, &t) in targets.iter().enumerate() {
            let row = row as i64;
            match nodes[t] {
                Node::Feature { layer, pos, feature, .. } => {
                    let tc = &self.transcoders[layer];
                    let w = tc.w_enc.f_select(1, feature)?;
                    inject[layer].f_get(row)?.f_get(pos)?.f_copy_(&w)?;
                    let mut k = tc.b_enc.f_double_value(&[feature])?;
                    if tc.cfg.apply_b_dec_to_input {
                        k -= tc.b_dec.f_dot(&w)?.f_double_value(&[])?;
                    }
                    constant[row as usize] = k;
                }
                Node::Logit { token, .. } => {
                    let u = w_u.f_select(1, token)?.f_sub(&mean_u)?;
                    inject_final.f_get(row)?.f_get(pos - 1)?.f_copy_(&u)?;
                    if let (Some(b), Some(mean)) = (self.model.b_u(), b_u_mean) {
                        constant[row as usize] = b.f_double_value(&[token])? - mean;
                    }
                }
                _ => return Err(Error::Input("only features and logits are targets".into())),
            }
        }
        Ok(Readout { inject, inject_final, constant: Tensor::f_from_slice(&constant)? })
    }
}

fn read(x_in: &[Tensor], x_final: &Tensor, r: &Readout) -> Result<Tensor> {
    let dot = |x: &Tensor, g: &Tensor| -> Result<Tensor> { Ok(x.f_to_kind(Kind::Double)?.f_mul(&g.f_to_kind(Kind::Double)?)?.f_sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double)?) };
    let mut total = dot(x_final, &r.inject_final)?;
    for (x, g) in x_in.iter().zip(&r.inject) {
        total = total.f_add(&dot(x, g)?)?;
    }
    Ok(total.f_to_device(Device::Cpu)?.f_add(&r.constant)?)
}

/// The attribution graph of `tokens` (one prompt, BOS included if the model expects it) for a
/// model whose MLPs `transcoders` replace (one per layer, in order).
pub fn attribution_graph(model: &HookedTransformer, transcoders: &[SparseDictionary], tokens: &[i64], cfg: &GraphConfig) -> Result<AttributionGraph> {
    if tokens.is_empty() {
        return Err(Error::Input("an attribution graph needs a non-empty prompt".into()));
    }
    if cfg.batch_size < 1 || cfg.max_logits < 1 || !(cfg.logit_probability > 0.0 && cfg.logit_probability <= 1.0) {
        return Err(Error::Input(format!("bad graph configuration: {cfg:?}")));
    }
    let rep = Replacement::new(model, transcoders, tokens)?;
    let n_layers = model.cfg.n_layers;
    let n_pos = tokens.len() as i64;

    // Nodes: active features, errors, tokens, top logits.
    let mut nodes = Vec::new();
    let mut active: Vec<(Tensor, Tensor)> = Vec::with_capacity(n_layers); // per layer: flat index [n_l], activation [n_l]
    for (layer, a) in rep.clean.acts.iter().enumerate() {
        let nz = a.f_nonzero()?.f_to_device(Device::Cpu)?; // [n_l, 2]: (pos, feature)
        let idx = Vec::<i64>::try_from(&nz.f_flatten(0, -1)?)?;
        let values = a.f_index(&[Some(nz.f_select(1, 0)?.f_to_device(a.device())?), Some(nz.f_select(1, 1)?.f_to_device(a.device())?)])?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
        let vals = Vec::<f64>::try_from(&values)?;
        let d_sae = a.size()[1];
        let flat: Vec<i64> = idx.chunks(2).map(|p| p[0] * d_sae + p[1]).collect();
        for (p, v) in idx.chunks(2).zip(&vals) {
            nodes.push(Node::Feature { layer, pos: p[0], feature: p[1], activation: *v });
        }
        active.push((Tensor::f_from_slice(&flat)?.f_to_device(a.device())?, values.f_to_kind(Kind::Float)?.f_to_device(a.device())?));
    }
    let n_features = nodes.len();
    for layer in 0..n_layers {
        nodes.extend((0..n_pos).map(|pos| Node::Error { layer, pos }));
    }
    nodes.extend(tokens.iter().enumerate().map(|(pos, &token)| Node::Token { pos: pos as i64, token }));
    let probs = rep.clean.logits.f_softmax(-1, Kind::Double)?;
    let (top_p, top_i) = probs.f_topk(cfg.max_logits.min(model.cfg.d_vocab as usize) as i64, -1, true, true)?;
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
    let targets: Vec<usize> = (0..n_features).chain(first_logit..n).collect();

    // The bias of every target: its readout with every source at zero.
    let zero_run = tch::no_grad(|| rep.forward(&Leaves::zeros(&rep.clean)?))?;
    let mut biases = vec![0f64; n];
    let mut values = vec![0f64; n];
    let adjacency = Tensor::f_zeros([n as i64, n as i64], (Kind::Float, Device::Cpu))?;
    let bar = interp_core::train::progress_bar(targets.len() as u64, "targets", cfg.progress);
    let err_start = n_features as i64;
    let tok_start = err_start + n_layers as i64 * n_pos;
    for chunk in targets.chunks(cfg.batch_size as usize) {
        let readout = rep.readout(&nodes, chunk)?;
        let zero_x: Vec<Tensor> = zero_run.0.iter().map(|x| Ok(expand(&x.f_squeeze_dim(0)?, chunk.len() as i64)?)).collect::<Result<_>>()?;
        let bias = read(&zero_x, &expand(&zero_run.1.f_squeeze_dim(0)?, chunk.len() as i64)?, &readout)?;
        let leaves = Leaves::repeat(&rep.clean, chunk.len() as i64)?;
        let (x_in, x_final) = rep.forward(&leaves)?;
        let value = read(&x_in, &x_final, &readout)?;
        let all = leaves.all();
        let grads = Tensor::f_run_backward(&[value.f_sum(Kind::Double)?], &all, false, false)?;
        let grad = |i: usize| -> Result<Tensor> {
            let g = &grads[i];
            Ok(if g.defined() { g.shallow_clone() } else { all[i].f_zeros_like()? })
        };
        let mut cols = Vec::with_capacity(2 * n_layers + 1);
        for (l, (flat, act)) in active.iter().enumerate() {
            let g = grad(1 + l)?;
            cols.push(g.f_flatten(1, 2)?.f_index_select(1, flat)?.f_to_kind(Kind::Float)?.f_mul(act)?);
        }
        for l in 0..n_layers {
            let g = grad(1 + n_layers + l)?;
            cols.push(g.f_mul(&rep.clean.errors[l])?.f_sum_dim_intlist(-1, false, Kind::Float)?);
        }
        cols.push(grad(0)?.f_mul(&rep.clean.embed)?.f_sum_dim_intlist(-1, false, Kind::Float)?);
        let block = Tensor::f_cat(&cols, 1)?.f_to_device(Device::Cpu)?; // [rows, n_sources]
        let rows = Tensor::f_from_slice(&chunk.iter().map(|&t| t as i64).collect::<Vec<_>>())?;
        let _ = adjacency.f_narrow(1, 0, tok_start + n_pos)?.f_index_copy_(0, &rows, &block)?;
        for (i, &t) in chunk.iter().enumerate() {
            biases[t] = bias.f_double_value(&[i as i64])?;
            values[t] = value.f_double_value(&[i as i64])?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(AttributionGraph { tokens: tokens.to_vec(), n_layers, nodes, adjacency, values: Tensor::f_from_slice(&values)?, biases: Tensor::f_from_slice(&biases)? })
}

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
    pub fn n_nodes(&self) -> usize {
        self.node_mask.iter().filter(|k| **k).count()
    }

    pub fn n_edges(&self) -> Result<i64> {
        Ok(self.edge_mask.f_sum(Kind::Int64)?.f_int64_value(&[])?)
    }
}

/// |A| with rows scaled to sum to one.
fn normalize_rows(a: &Tensor) -> Result<Tensor> {
    let a = a.f_abs()?.f_to_kind(Kind::Double)?;
    Ok(a.f_div(&a.f_sum_dim_intlist(1, true, Kind::Double)?.f_clamp_min(1e-10)?)?)
}

/// `w A + w A^2 + ...` for a nilpotent (acyclic) `a`.
fn influence(a: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let mut current = weights.f_unsqueeze(0)?.f_matmul(a)?;
    let mut total = current.shallow_clone();
    for _ in 0..a.size()[0] {
        if current.f_count_nonzero(None::<i64>)?.f_int64_value(&[])? == 0 {
            return Ok(total.f_squeeze_dim(0)?);
        }
        current = current.f_matmul(a)?;
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
    pub fn n_features(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Feature { .. })).count()
    }

    pub fn n_logits(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Logit { .. })).count()
    }

    /// Largest |sum of incoming edges + bias - value| over all targets (0 up to rounding when the
    /// linearisation is exact).
    pub fn completeness_error(&self) -> Result<f64> {
        let sums = self.adjacency.f_to_kind(Kind::Double)?.f_sum_dim_intlist(1, false, Kind::Double)?;
        Ok(sums.f_add(&self.biases)?.f_sub(&self.values)?.f_abs()?.f_max()?.f_double_value(&[])?)
    }

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
        let weights: Vec<f64> = self.nodes.iter().map(|node| if let Node::Logit { probability, .. } = node { *probability } else { 0.0 }).collect();
        let weights = Tensor::f_from_slice(&weights)?;
        let node_influence = Vec::<f64>::try_from(&influence(&normalize_rows(&self.adjacency)?, &weights)?)?;
        let cut = threshold(&node_influence, node_threshold);
        let always = n - n_logits - n_tokens;
        let mut node_mask: Vec<bool> = node_influence.iter().enumerate().map(|(i, s)| *s >= cut || i >= always).collect();

        let keep = Tensor::f_from_slice(&node_mask)?;
        let pruned = self.adjacency.f_mul(&keep.f_unsqueeze(1)?)?.f_mul(&keep.f_unsqueeze(0)?)?;
        let normalized = normalize_rows(&pruned)?;
        let edge_influence = influence(&normalized, &weights)?.f_add(&weights)?;
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

    /// circuit-tracer's node id of node `i` (`{layer}_{feature}_{pos}`, `E_{token}_{pos}`, ...).
    fn node_id(&self, i: usize) -> String {
        match self.nodes[i] {
            Node::Feature { layer, pos, feature, .. } => format!("{layer}_{feature}_{pos}"),
            Node::Error { layer, pos } => format!("{layer}_-1_{pos}"),
            Node::Token { pos, token } => format!("E_{token}_{pos}"),
            Node::Logit { token, .. } => format!("{}_{token}_{}", self.n_layers + 1, self.tokens.len() - 1),
        }
    }

    /// The pruned graph as the JSON that circuit-tracer's graph viewer reads (`metadata`,
    /// `qParams`, `nodes`, `links`); `token_text` [n_tokens of the vocabulary] renders ids. The
    /// `node_threshold` recorded is the one `pruned` was made with.
    ///
    /// Every feature node's `feature_type` is `"cross layer transcoder"`, per-layer transcoders
    /// included: that string is circuit-tracer's node type for any transcoder feature (its
    /// `Node.feature_node` writes nothing else), and its viewer draws features by it.
    pub fn to_circuit_tracer_json(&self, pruned: &Pruned, slug: &str, scan: &str, token_text: &dyn Fn(i64) -> String) -> Result<serde_json::Value> {
        let last = self.tokens.len() - 1;
        let mut first_logit = true;
        let nodes: Vec<serde_json::Value> = (0..self.nodes.len())
            .filter(|&i| pruned.node_mask[i])
            .map(|i| {
                let id = self.node_id(i);
                let influence = pruned.cumulative[i];
                match &self.nodes[i] {
                    Node::Feature { layer, pos, feature, activation } => json!({
                        "node_id": id, "feature": (layer + *feature as usize) * (layer + *feature as usize + 1) / 2 + *feature as usize,
                        "layer": layer.to_string(), "ctx_idx": pos, "feature_type": "cross layer transcoder",
                        "token_prob": 0.0, "is_target_logit": false, "run_idx": 0, "reverse_ctx_idx": 0,
                        "jsNodeId": format!("{layer}_{feature}-0"), "clerp": "", "influence": influence, "activation": activation,
                    }),
                    Node::Error { layer, pos } => json!({
                        "node_id": id, "feature": -1, "layer": layer.to_string(), "ctx_idx": pos,
                        "feature_type": "mlp reconstruction error", "token_prob": 0.0, "is_target_logit": false, "run_idx": 0,
                        "reverse_ctx_idx": 0, "jsNodeId": format!("{layer}_-1-{pos}"), "clerp": "", "influence": influence, "activation": null,
                    }),
                    Node::Token { pos, token } => json!({
                        "node_id": id, "feature": pos, "layer": "E", "ctx_idx": pos, "feature_type": "embedding",
                        "token_prob": 0.0, "is_target_logit": false, "run_idx": 0, "reverse_ctx_idx": 0,
                        "jsNodeId": format!("E_{token}-{pos}"), "clerp": "", "influence": influence, "activation": null,
                    }),
                    Node::Logit { token, probability } => {
                        let target = std::mem::replace(&mut first_logit, false);
                        json!({
                            "node_id": id, "feature": token, "layer": (self.n_layers + 1).to_string(), "ctx_idx": last,
                            "feature_type": "logit", "token_prob": probability, "is_target_logit": target, "run_idx": 0,
                            "reverse_ctx_idx": 0, "jsNodeId": format!("L_{token}-{last}"),
                            "clerp": format!("Output \"{}\" (p={probability:.3})", token_text(*token)), "influence": null, "activation": null,
                        })
                    }
                }
            })
            .collect();
        let mask = pruned.edge_mask.f_nonzero()?;
        let pairs = Vec::<i64>::try_from(&mask.f_flatten(0, -1)?)?;
        let weights = Vec::<f64>::try_from(&self.adjacency.f_index(&[Some(mask.f_select(1, 0)?), Some(mask.f_select(1, 1)?)])?.f_to_kind(Kind::Double)?)?;
        let links: Vec<serde_json::Value> = pairs
            .chunks(2)
            .zip(weights)
            .map(|(p, w)| json!({ "source": self.node_id(p[1] as usize), "target": self.node_id(p[0] as usize), "weight": w }))
            .collect();
        let prompt_tokens: Vec<String> = self.tokens.iter().map(|&t| token_text(t)).collect();
        Ok(json!({
            "metadata": {
                "slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": prompt_tokens,
                "prompt": prompt_tokens.concat(), "node_threshold": pruned.node_threshold, "schema_version": 1,
            },
            "qParams": { "pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": "" },
            "nodes": nodes,
            "links": links,
        }))
    }

    /// A self-contained HTML page of [`AttributionGraph::html_view`].
    pub fn write_html(&self, pruned: &Pruned, path: &Path, title: &str, token_text: &dyn Fn(i64) -> String) -> Result<()> {
        write_graph_page(path, title, &self.html_view(pruned, token_text)?)
    }

    /// The pruned graph as an HTML fragment (a caption and an inline SVG; styles in [`GRAPH_CSS`]):
    /// one column per position, one row per layer (embeddings at the bottom, logits at the top),
    /// node area by influence, edges blue (excitatory) or red (inhibitory) with opacity by
    /// |weight|; hover for details.
    pub fn html_view(&self, pruned: &Pruned, token_text: &dyn Fn(i64) -> String) -> Result<String> {
        let n_pos = self.tokens.len();
        let (col_w, row_h, left, top) = (110.0, 90.0, 60.0, 40.0);
        let rows = self.n_layers + 2; // E, layers, logits
        let (width, height) = (left + col_w * n_pos as f64 + 40.0, top + row_h * rows as f64 + 60.0);
        let row_of = |node: &Node| -> usize {
            match node {
                Node::Token { .. } => 0,
                Node::Feature { layer, .. } | Node::Error { layer, .. } => layer + 1,
                Node::Logit { .. } => self.n_layers + 1,
            }
        };
        let pos_of = |node: &Node| -> i64 {
            match node {
                Node::Token { pos, .. } | Node::Feature { pos, .. } | Node::Error { pos, .. } => *pos,
                Node::Logit { .. } => n_pos as i64 - 1,
            }
        };
        // Spread the kept nodes of each (row, position) cell horizontally.
        let kept: Vec<usize> = (0..self.nodes.len()).filter(|&i| pruned.node_mask[i]).collect();
        let mut cells: HashMap<(usize, i64), Vec<usize>> = HashMap::new();
        for &i in &kept {
            cells.entry((row_of(&self.nodes[i]), pos_of(&self.nodes[i]))).or_default().push(i);
        }
        let mut xy: HashMap<usize, (f64, f64)> = HashMap::new();
        for ((row, pos), members) in &cells {
            let step = (col_w - 20.0) / members.len() as f64;
            for (k, &i) in members.iter().enumerate() {
                let x = left + col_w * *pos as f64 + 10.0 + step * (k as f64 + 0.5);
                let y = top + row_h * (rows - 1 - row) as f64 + row_h / 2.0;
                xy.insert(i, (x, y));
            }
        }
        let mask = pruned.edge_mask.f_nonzero()?;
        let pairs = Vec::<i64>::try_from(&mask.f_flatten(0, -1)?)?;
        let weights = Vec::<f64>::try_from(&self.adjacency.f_index(&[Some(mask.f_select(1, 0)?), Some(mask.f_select(1, 1)?)])?.f_to_kind(Kind::Double)?)?;
        let max_w = weights.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-12);
        let mut svg = String::new();
        for r in 0..rows {
            let y = top + row_h * (rows - 1 - r) as f64 + row_h / 2.0;
            let label = match r {
                0 => "Emb".to_string(),
                r if r == rows - 1 => "Logit".to_string(),
                r => format!("L{}", r - 1),
            };
            svg += &format!("<text x=\"8\" y=\"{y:.1}\" class=\"axis\">{label}</text>\n");
        }
        for (p, &t) in self.tokens.iter().enumerate() {
            let x = left + col_w * p as f64 + col_w / 2.0;
            svg += &format!("<text x=\"{x:.1}\" y=\"{:.1}\" class=\"tok\" text-anchor=\"middle\">{}</text>\n", height - 25.0, html_escape(&token_text(t)));
        }
        for (p, w) in pairs.chunks(2).zip(&weights) {
            let (Some(a), Some(b)) = (xy.get(&(p[1] as usize)), xy.get(&(p[0] as usize))) else { continue };
            let colour = if *w >= 0.0 { "#2166ac" } else { "#b2182b" };
            let opacity = 0.1 + 0.9 * (w.abs() / max_w);
            svg += &format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-opacity=\"{opacity:.3}\" stroke-width=\"{:.2}\"><title>{} → {}: {w:.4}</title></line>\n",
                a.0, a.1, b.0, b.1, 0.5 + 2.5 * w.abs() / max_w, self.node_id(p[1] as usize), self.node_id(p[0] as usize)
            );
        }
        for &i in &kept {
            let (x, y) = xy[&i];
            let (fill, detail) = match &self.nodes[i] {
                Node::Feature { activation, .. } => ("#f4a582", format!("activation {activation:.3}")),
                Node::Error { .. } => ("#bababa", "transcoder error".to_string()),
                Node::Token { token, .. } => ("#92c5de", format!("token {}", html_escape(&token_text(*token)))),
                Node::Logit { token, probability } => ("#a6d96a", format!("\"{}\" p={probability:.3}", html_escape(&token_text(*token)))),
            };
            let r = 3.0 + 9.0 * pruned.influence[i].max(0.0).sqrt().min(1.0);
            svg += &format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" fill=\"{fill}\" stroke=\"#333\"><title>{} — {detail}; influence {:.4}</title></circle>\n",
                self.node_id(i),
                pruned.influence[i]
            );
        }
        Ok(format!(
            "<p>{nodes} of {all} nodes and {edges} edges kept by influence on the logits. Node area: influence; blue edges excite, red inhibit; hover for values. Completeness error (max |sum of inputs + bias − value|): {err:.2e}.</p>\n<svg width=\"{width:.0}\" height=\"{height:.0}\" xmlns=\"http://www.w3.org/2000/svg\">\n{svg}</svg>\n",
            nodes = pruned.n_nodes(),
            all = self.nodes.len(),
            edges = pruned.n_edges()?,
            err = self.completeness_error()?,
        ))
    }
}

/// Encoder directions of `tc` as seen from the residual stream [d_model, d_sae]. A transcoder on
/// `ln2.hook_normalized` (before the norm's gain) sees the residual centred (LayerNorm) and divided
/// by the norm's scale, which depends on the input and is left out; one on the residual itself
/// sees it as is.
pub fn residual_encoder(model: &HookedTransformer, tc: &SparseDictionary) -> Result<Tensor> {
    let w = tc.w_enc.f_to_kind(Kind::Double)?;
    if tc.cfg.hook_name.ends_with("ln2.hook_normalized") {
        Ok(model.cfg.norm.centre(&w, 0)?)
    } else {
        Ok(w)
    }
}

/// Input-invariant connections from features `src_features` of transcoder `src` (layer
/// `src_layer`) to features `tgt_features` of `tgt` (a later layer `tgt_layer`).
pub struct FeatureConnections {
    /// [n_src, n_tgt]: `d_s . e_t` through the residual stream.
    pub residual: Tensor,
    /// [n_between, n_heads, n_src, n_tgt]: `d_s W_OV^h e_t` through each head of each attention
    /// layer `src_layer + 1 ..= tgt_layer` (single-head paths; `d_s` passed through that layer's
    /// `ln1` gain and centring).
    pub heads: Tensor,
}

/// The transcoder paper's input-invariant feature-to-feature connections. With activations and
/// frozen norm scales and attention weights they give the input-dependent attribution: feature s
/// at position p' to feature t at position p is `a_s / sigma_t(p) * (residual[s, t] [p = p'] +
/// sum_h A_h[p, p'] / sigma_1(p') heads[h, s, t])` (exact for adjacent layers).
pub fn feature_connections(model: &HookedTransformer, src_layer: usize, src: &SparseDictionary, src_features: &[i64], tgt_layer: usize, tgt: &SparseDictionary, tgt_features: &[i64]) -> Result<FeatureConnections> {
    if src_layer >= tgt_layer || tgt_layer >= model.cfg.n_layers {
        return Err(Error::Input(format!("connections run from an earlier layer to a later one inside the model; got {src_layer} -> {tgt_layer}")));
    }
    let pick = |t: &Tensor, dim: i64, idx: &[i64]| -> Result<Tensor> { Ok(t.f_index_select(dim, &Tensor::f_from_slice(idx)?.f_to_device(t.device())?)?) };
    let d_src = pick(&src.w_dec.f_to_kind(Kind::Double)?, 0, src_features)?; // [n_src, d_model]
    let e_tgt = pick(&residual_encoder(model, tgt)?, 1, tgt_features)?; // [d_model, n_tgt]
    let residual = d_src.f_matmul(&e_tgt)?;
    let c = &model.cfg;
    let group = c.n_heads / c.n_kv_heads;
    let centred = c.norm.centre(&d_src, 1)?;
    let mut layers = Vec::new();
    for l in src_layer + 1..=tgt_layer {
        let mut d = centred.shallow_clone();
        if let Some(g) = model.norm_weights(NormSite::Ln1(l))?.0 {
            d = d.f_mul(&g.f_to_kind(Kind::Double)?)?;
        }
        let (w_v, w_o) = (model.w_v(l)?.f_to_kind(Kind::Double)?, model.w_o(l)?.f_to_kind(Kind::Double)?);
        let heads = (0..c.n_heads)
            .map(|h| Ok(d.f_matmul(&w_v.f_get(h / group)?)?.f_matmul(&w_o.f_get(h)?)?.f_matmul(&e_tgt)?))
            .collect::<Result<Vec<_>>>()?;
        layers.push(Tensor::f_stack(&heads, 0)?);
    }
    Ok(FeatureConnections { residual, heads: Tensor::f_stack(&layers, 0)? })
}

/// De-embedding of features `features` of transcoder `tc`: `W_E e_t` [n, d_vocab], the tokens
/// whose embeddings drive each feature directly (norm scale left out).
pub fn de_embedding(model: &HookedTransformer, tc: &SparseDictionary, features: &[i64]) -> Result<Tensor> {
    let e = residual_encoder(model, tc)?.f_index_select(1, &Tensor::f_from_slice(features)?.f_to_device(tc.device())?)?;
    Ok(model.w_e().f_to_kind(Kind::Double)?.f_matmul(&e)?.f_tr()?)
}
