//! Writing graphs: circuit-tracer's graph JSON (the HTML view is `report::html::graph_view`).

use serde_json::json;

use super::{AttributionGraph, Node, Pruned};
use crate::error::{Error, Result};

/// circuit-tracer's feature index of (layer, feature): the Cantor pairing, which its viewer
/// unpairs to find a feature's file.
pub fn cantor(layer: usize, feature: i64) -> i64 {
    let (x, y) = (layer as i64, feature);
    (x + y) * (x + y + 1) / 2 + y
}

impl AttributionGraph {
    /// The edges `pruned` keeps: (target, source) index pairs, flattened, and their weights.
    pub fn kept_edges(&self, pruned: &Pruned) -> Result<(Vec<i64>, Vec<f64>)> {
        let edges = &pruned.edges;
        let pairs = Vec::<i64>::try_from(&edges.f_flatten(0, -1)?)?;
        let weights = Vec::<f64>::try_from(&self.adjacency.at(edges)?)?;
        Ok((pairs, weights))
    }

    /// circuit-tracer's node id of node `i` (`{layer}_{feature}_{pos}`, `E_{token}_{pos}`, ...).
    pub fn node_id(&self, i: usize) -> String {
        self.id_of(&self.nodes[i])
    }

    /// circuit-tracer's id of `node` in this graph (which need not hold it).
    pub fn id_of(&self, node: &Node) -> String {
        match *node {
            Node::Feature { layer, pos, feature, .. } => format!("{layer}_{feature}_{pos}"),
            Node::Error { layer, pos } => format!("0_{layer}_{pos}"),
            Node::Token { pos, token } => format!("E_{token}_{pos}"),
            Node::Logit { token, .. } => format!("{}_{token}_{}", self.n_layers + 1, self.tokens.len() - 1),
        }
    }

    /// The index of the node whose id is `id` among those `pruned` keeps; an id of a node pruned
    /// away, or of none, is refused by name.
    pub fn kept_node(&self, pruned: &Pruned, id: &str) -> Result<usize> {
        (0..self.nodes.len())
            .find(|&i| pruned.node_mask.get(i).copied().unwrap_or(false) && self.node_id(i) == id)
            .ok_or_else(|| Error::UnknownNode { id: id.to_string() })
    }

    /// The pruned graph as the JSON that circuit-tracer's graph viewer reads (`metadata`,
    /// `qParams`, `nodes`, `links`), node ids and the choice of nodes as circuit-tracer 0.5.0's
    /// `create_graph_files` writes them (kept nodes on a kept edge, plus every token and logit);
    /// `token_text` renders ids. The `node_threshold` recorded is the one `pruned` was made with;
    /// `scan` is where the viewer looks for feature files (`./graph_data/features` for the ones
    /// `write_viewer_files` writes).
    ///
    /// Every feature node's `feature_type` is `"cross layer transcoder"`, per-layer transcoders
    /// included: that string is circuit-tracer's node type for any transcoder feature (its
    /// `Node.feature_node` writes nothing else), and its viewer draws features by it.
    pub fn to_circuit_tracer_json(&self, pruned: &Pruned, slug: &str, scan: &str, token_text: &dyn Fn(i64) -> String) -> Result<serde_json::Value> {
        let last = self.tokens.len() - 1;
        let (pairs, weights) = self.kept_edges(pruned)?;
        // As circuit-tracer writes them: kept nodes that a kept edge touches, and every token
        // and logit.
        let mut linked = vec![false; self.nodes.len()];
        for p in pairs.chunks(2) {
            linked[p[0] as usize] = true;
            linked[p[1] as usize] = true;
        }
        let mut first_logit = true;
        let nodes: Vec<serde_json::Value> = (0..self.nodes.len())
            .filter(|&i| pruned.node_mask[i] && (linked[i] || matches!(self.nodes[i], Node::Token { .. } | Node::Logit { .. })))
            .map(|i| {
                let id = self.node_id(i);
                let influence = pruned.cumulative[i];
                match &self.nodes[i] {
                    Node::Feature { layer, pos, feature, activation } => json!({
                        "node_id": id, "feature": cantor(*layer, *feature),
                        "layer": layer.to_string(), "ctx_idx": pos, "feature_type": "cross layer transcoder",
                        "token_prob": 0.0, "is_target_logit": false, "run_idx": 0, "reverse_ctx_idx": 0,
                        "jsNodeId": format!("{layer}_{feature}-0"), "clerp": "", "influence": influence, "activation": activation,
                    }),
                    Node::Error { layer, pos } => json!({
                        "node_id": id, "feature": -1, "layer": layer.to_string(), "ctx_idx": pos,
                        "feature_type": "mlp reconstruction error", "token_prob": 0.0, "is_target_logit": false, "run_idx": 0,
                        "reverse_ctx_idx": 0, "jsNodeId": format!("{layer}_{pos}-0"), "clerp": "", "influence": influence, "activation": null,
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
}

/// A subgraph as circuit-tracer's viewer saves one in a graph's `qParams`: pinned node ids, and
/// supernodes (groups of nodes shown as one, each `[label, id, ...]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subgraph {
    /// Pinned node ids (`{layer}_{feature}_{pos}`, `E_{token}_{pos}`, ...).
    pub pinned: Vec<String>,
    /// Supernodes: a label and the node ids it groups.
    pub supernodes: Vec<(String, Vec<String>)>,
}

impl Subgraph {
    /// Writes the subgraph into `graph`'s `qParams` (a graph from
    /// [`AttributionGraph::to_circuit_tracer_json`]); every id must be one of its nodes.
    pub fn save_into(&self, graph: &mut serde_json::Value) -> Result<()> {
        let ids: std::collections::HashSet<&str> =
            graph["nodes"].as_array().map(|nodes| nodes.iter().filter_map(|n| n["node_id"].as_str()).collect()).unwrap_or_default();
        let grouped = self.supernodes.iter().flat_map(|(_, members)| members);
        if let Some(missing) = self.pinned.iter().chain(grouped).find(|id| !ids.contains(id.as_str())) {
            return Err(Error::UnknownNode { id: missing.clone() });
        }
        if let Some((label, _)) = self.supernodes.iter().find(|(_, members)| members.is_empty()) {
            return Err(Error::Input(format!("supernode `{label}` groups no node")));
        }
        let supernodes: Vec<Vec<&str>> =
            self.supernodes.iter().map(|(label, members)| std::iter::once(label.as_str()).chain(members.iter().map(String::as_str)).collect()).collect();
        graph["qParams"]["pinnedIds"] = json!(self.pinned);
        graph["qParams"]["supernodes"] = json!(supernodes);
        Ok(())
    }

    /// The subgraph saved in a graph's `qParams`, as circuit-tracer's viewer writes it (pinned
    /// ids as a list or as one comma-separated string).
    pub fn read(graph: &serde_json::Value) -> Result<Subgraph> {
        let q = &graph["qParams"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string).ok_or_else(|| Error::Input(format!("qParams: expected a node id, found {v}")));
        let pinned = match &q["pinnedIds"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
            serde_json::Value::Array(ids) => ids.iter().map(text).collect::<Result<_>>()?,
            other => return Err(Error::Input(format!("qParams.pinnedIds: expected a list of node ids, found {other}"))),
        };
        let mut supernodes = Vec::new();
        for group in q["supernodes"].as_array().into_iter().flatten() {
            let items = group.as_array().ok_or_else(|| Error::Input(format!("qParams.supernodes: expected [label, id, ...], found {group}")))?;
            let (label, members) = items.split_first().ok_or_else(|| Error::Input("qParams.supernodes: an empty supernode".into()))?;
            supernodes.push((text(label)?, members.iter().map(text).collect::<Result<_>>()?));
        }
        Ok(Subgraph { pinned, supernodes })
    }
}
