//! The attribution graph of one prompt, pruned, as circuit-tracer's JSON, an HTML view and a
//! node table.

use std::path::{Path, PathBuf};

use interp_core::HookedTransformer;
use transcoders::SparseDictionary;

use crate::attribution_graph::{attribution_graph, AttributionGraph, GraphConfig, Node, Pruned};
use crate::report::write_graph_page;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::{Table, Value};

/// How [`graph_analysis`] builds and prunes the graph.
#[derive(Clone, Debug)]
pub struct GraphAnalysisConfig {
    /// How the graph is built (logit targets, batch size, progress).
    pub graph: GraphConfig,
    /// Keep the nodes carrying this fraction of the influence on the logits (circuit-tracer: 0.8).
    pub node_threshold: f64,
    /// Then keep the edges carrying this fraction (circuit-tracer: 0.98).
    pub edge_threshold: f64,
}

impl Default for GraphAnalysisConfig {
    fn default() -> Self {
        GraphAnalysisConfig { graph: GraphConfig { progress: true, ..GraphConfig::default() }, node_threshold: 0.8, edge_threshold: 0.98 }
    }
}

/// A prompt's attribution graph and its pruning.
pub struct GraphAnalysis {
    /// The prompt as given.
    pub prompt: String,
    /// Its token ids, BOS first.
    pub tokens: Vec<i64>,
    /// Token text of every id in the graph, by id.
    pub token_text: std::collections::HashMap<i64, String>,
    /// circuit-tracer's slug and scan: the model folder's name.
    pub slug: String,
    /// Where the transcoders came from (shown in the report).
    pub transcoders: PathBuf,
    /// The full graph.
    pub graph: AttributionGraph,
    /// What survives pruning.
    pub pruned: Pruned,
    /// Layers of the model.
    pub n_layers: usize,
    /// Time to build the graph.
    pub seconds: f64,
}

/// Builds and prunes the attribution graph of `prompt` (tokenized with the model's tokenizer, BOS
/// prepended) through `transcoders` (loaded from `transcoders_dir`); `slug` names it.
pub fn graph_analysis(
    model: &HookedTransformer,
    transcoders: &[SparseDictionary],
    transcoders_dir: &Path,
    prompt: &str,
    slug: &str,
    cfg: &GraphAnalysisConfig,
) -> Result<GraphAnalysis> {
    let tok = model.tokenizer().ok_or_else(|| Error::Input("the model has no tokenizer.json to encode the prompt".into()))?;
    let tokens = tok.encode(prompt, true)?;
    let start = std::time::Instant::now();
    let graph = attribution_graph(model, transcoders, &tokens, &cfg.graph)?;
    let seconds = start.elapsed().as_secs_f64();
    let pruned = graph.prune(cfg.node_threshold, cfg.edge_threshold)?;
    let mut ids: Vec<i64> = tokens.clone();
    ids.extend(graph.nodes.iter().filter_map(|n| if let Node::Logit { token, .. } = n { Some(*token) } else { None }));
    let token_text = ids.into_iter().map(|t| (t, tok.decode(&[t]).unwrap_or_default())).collect();
    Ok(GraphAnalysis {
        prompt: prompt.to_string(),
        tokens,
        token_text,
        slug: slug.to_string(),
        transcoders: transcoders_dir.to_path_buf(),
        graph,
        pruned,
        n_layers: model.cfg.n_layers,
        seconds,
    })
}

impl GraphAnalysis {
    fn text(&self, t: i64) -> String {
        self.token_text.get(&t).cloned().unwrap_or_default()
    }

    /// A report section with the graph's view; `graph.json` (circuit-tracer's layout),
    /// `graph.html` (a page of its own) and `nodes` (every node by influence).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        let (graph, pruned) = (&self.graph, &self.pruned);
        let text = |t: i64| self.text(t);
        let json = graph.to_circuit_tracer_json(pruned, &self.slug, &self.slug, &text)?;
        out.report.section("Transcoder attribution graph");
        out.report.paragraph(&format!(
            "Prompt {:?} through the transcoders in {}: direct effects between active features, transcoder errors, token embeddings and the top \
             logits in the replacement model with attention patterns and norm scales frozen; pruned to {} of the influence on the logits (nodes) and {} (edges).",
            self.prompt,
            self.transcoders.display(),
            pruned.node_threshold,
            pruned.edge_threshold
        ));
        let view = graph.html_view(pruned, &text)?;
        out.report.html(&view);
        out.json("graph.json", "the graph in circuit-tracer's layout", &json)?;
        write_graph_page(&out.dir.join("graph.html"), &format!("Attribution graph: {}", self.prompt), &view)?;
        let mut table = Table::new(&["node", "kind", "layer", "pos", "feature", "activation", "influence", "kept"]);
        for (i, node) in graph.nodes.iter().enumerate() {
            let (kind, layer, pos, feature, act) = match *node {
                Node::Feature { layer, pos, feature, activation } => ("feature", layer as i64, pos, feature, activation),
                Node::Error { layer, pos } => ("error", layer as i64, pos, -1, f64::NAN),
                Node::Token { pos, token } => ("token", -1, pos, token, f64::NAN),
                Node::Logit { token, probability } => ("logit", self.n_layers as i64, self.tokens.len() as i64 - 1, token, probability),
            };
            table.push(vec![
                Value::Int(i as i64),
                Value::Text(kind.into()),
                Value::Int(layer),
                Value::Int(pos),
                Value::Int(feature),
                Value::Float(act),
                Value::Float(pruned.influence[i]),
                Value::Int(pruned.node_mask[i] as i64),
            ]);
        }
        table.rows.sort_by(|x, y| match (&x[6], &y[6]) {
            (Value::Float(a), Value::Float(b)) => b.total_cmp(a),
            _ => std::cmp::Ordering::Equal,
        });
        out.table("nodes", "nodes by influence on the logits", &table)
    }

    /// The logit targets as `"token" probability`.
    pub fn logit_targets(&self) -> Vec<String> {
        let text = |t: i64| self.text(t);
        self.graph
            .nodes
            .iter()
            .filter_map(|n| if let Node::Logit { token, probability } = n { Some(format!("{:?} {probability:.3}", text(*token))) } else { None })
            .collect()
    }
}
