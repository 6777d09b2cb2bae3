//! InterpBench's case folders and their ground-truth circuits on our edge graph.
//!
//! A case folder holds `ll_model.pth` (a TransformerLens state dict), `ll_model_cfg.pkl` (its
//! `HookedTransformerConfig`, pickled as a dict or as the object), `edges.pkl` (the true circuit:
//! a list of `(from, to)` pairs of ACDC-granularity node names, `hook_embed`,
//! `blocks.0.hook_q_input[3]`, `blocks.1.attn.hook_result[2]`, `blocks.1.hook_mlp_in`,
//! `blocks.1.hook_resid_post`, ...) and `meta.json` (training settings). The model loads with
//! [`HookedTransformer::from_pretrained_dir`]; [`CaseTruth::read`] maps the edges onto the edge
//! graph. As InterpBench asks, q/k/v receivers are promoted to whole heads: an edge into any input
//! of a head makes the sender's edges into all three inputs of that head true. Edges inside a
//! component (`hook_q_input -> hook_q -> hook_result`, `hook_mlp_in -> hook_mlp_out`) are not
//! edges of the graph and are skipped.

use std::collections::BTreeSet;
use std::path::Path;

use interp_core::HookedTransformer;

use crate::edge_graph::{EdgeGraph, Qkv, Receiver, Sender};
use crate::error::{Error, Result};

/// A case's true circuit on the model's edge graph.
#[derive(Clone, Debug)]
pub struct CaseTruth {
    /// Per edge of `EdgeGraph::new(model)`: in the true circuit.
    pub edges: Vec<bool>,
    /// Per sender node (`embed`, `L0H1`, `MLP0`, ... in the graph's sender order, without
    /// `embed`): in the true circuit.
    pub nodes: Vec<bool>,
    /// The (from, to) pairs of `edges.pkl` that are edges of the graph (not inside a component).
    pub n_listed: usize,
}

/// What a node name of `edges.pkl` is on our graph.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Sender(Sender),
    /// A head input (`hook_{q,k,v}_input[h]`).
    HeadIn {
        layer: usize,
        head: i64,
    },
    MlpIn {
        layer: usize,
    },
    Logits,
    /// Inside a component (`attn.hook_q[h]`, ...): edges from or to it are not graph edges.
    Inner,
}

impl CaseTruth {
    /// Reads `dir/edges.pkl` for `model`'s edge graph `graph`. Names the model lacks (a layer or
    /// head out of range, an unknown hook) are errors naming the pair.
    pub fn read(dir: &Path, model: &HookedTransformer, graph: &EdgeGraph) -> Result<CaseTruth> {
        let path = dir.join("edges.pkl");
        let value = interp_core::read_pickle(&path)?;
        let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
        let pairs = value.as_array().ok_or_else(|| bad("not a list of (from, to) pairs".into()))?;
        let mut listed = Vec::with_capacity(pairs.len());
        for (i, pair) in pairs.iter().enumerate() {
            match pair.as_array().map(Vec::as_slice) {
                Some([serde_json::Value::String(from), serde_json::Value::String(to)]) => listed.push((from.clone(), to.clone())),
                _ => return Err(bad(format!("item {i} is {pair}, not a (from, to) pair of node names"))),
            }
        }
        CaseTruth::from_pairs(&listed, model, graph).map_err(|e| match e {
            Error::Input(why) => bad(why),
            other => other,
        })
    }

    /// The truth of (from, to) node-name pairs.
    pub fn from_pairs(pairs: &[(String, String)], model: &HookedTransformer, graph: &EdgeGraph) -> Result<CaseTruth> {
        let c = &model.cfg;
        let mut true_pairs: BTreeSet<(Sender, Receiver)> = BTreeSet::new();
        let mut n_listed = 0;
        for (from, to) in pairs {
            let at = |e: String| Error::Input(format!("edge ({from}, {to}): {e}"));
            let (s, r) = (node(from, model).map_err(at)?, node(to, model).map_err(at)?);
            let sender = match s {
                Node::Sender(s) => s,
                // From a head input, an MLP input or inside a component: not a graph edge.
                _ => continue,
            };
            let receivers: Vec<Receiver> = match r {
                // A head input, or (as prepared circuits write it) the head's output reached from
                // outside the head.
                Node::HeadIn { layer, head } | Node::Sender(Sender::Head { layer, head }) => {
                    // Promoted to the whole head: its query, key and value inputs (key/value heads
                    // under grouped-query attention).
                    let kv_head = head / (c.n_heads / c.n_kv_heads);
                    vec![
                        Receiver::Head { layer, head, input: Qkv::Q },
                        Receiver::Head { layer, head: kv_head, input: Qkv::K },
                        Receiver::Head { layer, head: kv_head, input: Qkv::V },
                    ]
                }
                Node::MlpIn { layer } => vec![Receiver::Mlp { layer }],
                Node::Logits => vec![Receiver::Logits],
                // `mlp_out` reached from outside the MLP: a prepared circuit's MLP.
                Node::Sender(Sender::Mlp { layer }) => vec![Receiver::Mlp { layer }],
                Node::Sender(_) | Node::Inner => continue,
            };
            n_listed += 1;
            true_pairs.extend(receivers.into_iter().map(|r| (sender, r)));
        }
        let edges: Vec<bool> = graph.edges.iter().map(|e| true_pairs.contains(&(e.sender, e.receiver))).collect();
        if let Some((s, r)) = true_pairs.iter().find(|(s, r)| !graph.edges.iter().any(|e| e.sender == *s && e.receiver == *r)) {
            return Err(Error::Input(format!("the true edge {s} -> {r} is not an edge of the model's graph (a receiver before its sender)")));
        }
        let nodes = node_truth(graph, &edges);
        Ok(CaseTruth { edges, nodes, n_listed })
    }
}

/// Per sender node except `embed` (heads and MLPs, in the graph's order): whether a true edge
/// starts at it or ends at one of its inputs.
pub fn node_truth(graph: &EdgeGraph, edges: &[bool]) -> Vec<bool> {
    node_scores(graph, &indicator(edges)).into_iter().map(|s| s > 0.0).collect()
}

/// Per sender node except `embed`: the largest |score| of the edges that touch it (from it, or
/// into any of its inputs). Node AUROC ranks components by these.
pub fn node_scores(graph: &EdgeGraph, scores: &[f64]) -> Vec<f64> {
    // Sender indices (0 is `embed`, which is not a node here) shifted by one.
    let mut out = vec![0.0f64; graph.senders.len() - 1];
    for (e, s) in graph.edges.iter().zip(scores) {
        let touched = std::iter::once(graph.sender_index(e.sender)).chain(graph.receiver_nodes(e.receiver));
        for n in touched.filter(|n| *n > 0) {
            out[n - 1] = out[n - 1].max(s.abs());
        }
    }
    out
}

/// The edges between components, InterpBench's granularity: (sender, receiving component) with
/// a head's q, k and v inputs merged into the head. Components are sender indices, and
/// `graph.senders.len()` stands for the logits. Sorted.
pub fn component_edges(graph: &EdgeGraph) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = graph.edges.iter().flat_map(|e| component_pairs(graph, e.sender, e.receiver)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Per edge of [`component_edges`]: the largest |score| of the graph edges it merges.
pub fn component_scores(graph: &EdgeGraph, scores: &[f64]) -> Vec<f64> {
    let pairs = component_edges(graph);
    let mut out = vec![0.0f64; pairs.len()];
    for (e, s) in graph.edges.iter().zip(scores) {
        for pair in component_pairs(graph, e.sender, e.receiver) {
            if let Ok(i) = pairs.binary_search(&pair) {
                out[i] = out[i].max(s.abs());
            }
        }
    }
    out
}

/// Per edge of [`component_edges`]: whether one of the true graph edges it merges is true.
pub fn component_truth(graph: &EdgeGraph, edges: &[bool]) -> Vec<bool> {
    component_scores(graph, &indicator(edges)).into_iter().map(|s| s > 0.0).collect()
}

fn component_pairs(graph: &EdgeGraph, sender: Sender, receiver: Receiver) -> Vec<(usize, usize)> {
    let s = graph.sender_index(sender);
    match receiver {
        Receiver::Logits => vec![(s, graph.senders.len())],
        r => graph.receiver_nodes(r).into_iter().map(|n| (s, n)).collect(),
    }
}

fn indicator(truth: &[bool]) -> Vec<f64> {
    truth.iter().map(|t| f64::from(u8::from(*t))).collect()
}

/// `name[index]` split, the index parsed.
fn split_index(name: &str) -> std::result::Result<(&str, Option<i64>), String> {
    match name.split_once('[') {
        None => Ok((name, None)),
        Some((base, rest)) => {
            let idx = rest.strip_suffix(']').and_then(|i| i.trim().parse::<i64>().ok()).ok_or_else(|| format!("`{name}` has a malformed index"))?;
            Ok((base, Some(idx)))
        }
    }
}

/// An InterpBench / ACDC node name on `model`'s graph.
fn node(name: &str, model: &HookedTransformer) -> std::result::Result<Node, String> {
    let c = &model.cfg;
    let (base, idx) = split_index(name)?;
    if matches!(base, "hook_embed" | "hook_pos_embed" | "blocks.0.hook_resid_pre") {
        return Ok(Node::Sender(Sender::Embed));
    }
    let unknown =
        || format!("`{name}` is not a node this model has ({} layers, {} heads{})", c.n_layers, c.n_heads, if c.attn_only { ", no MLPs" } else { "" });
    let rest = base.strip_prefix("blocks.").ok_or_else(unknown)?;
    let (layer, site) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    if layer >= c.n_layers {
        return Err(unknown());
    }
    let head = || match idx {
        Some(h) if (0..c.n_heads).contains(&h) => Ok(h),
        _ => Err(unknown()),
    };
    let mlp = || if c.attn_only { Err(unknown()) } else { Ok(()) };
    Ok(match site {
        "hook_q_input" | "hook_k_input" | "hook_v_input" => Node::HeadIn { layer, head: head()? },
        "attn.hook_q" | "attn.hook_k" | "attn.hook_v" => {
            head()?;
            Node::Inner
        }
        "attn.hook_result" => Node::Sender(Sender::Head { layer, head: head()? }),
        "hook_mlp_in" => {
            mlp()?;
            Node::MlpIn { layer }
        }
        "hook_mlp_out" => {
            mlp()?;
            Node::Sender(Sender::Mlp { layer })
        }
        "hook_resid_post" if layer + 1 == c.n_layers => Node::Logits,
        _ => return Err(unknown()),
    })
}
